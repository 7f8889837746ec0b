"""CLI: tokenize SlimPajama-layout text into Megatron-compatible shards.

    python -m data_prep.tokenize --tokenizer gpt2/tokenizer.json --input SlimPajama-627B/train \\
        --validation-input SlimPajama-627B/validation --output-dir data/slimpajama_gpt2

Run as a module (``-m``): this file is named like the standard library's ``tokenize``.
See data_prep/README.md for the output layout, resuming and the validation split.
"""

from __future__ import annotations

import argparse
import os
import sys

from data_prep.pipeline import PrepOptions, WorkerDied, prepare
from data_prep.readers import InputError
from data_prep.shard_jobs import OutputConflict
from data_prep.tokenizer_info import DEFAULT_EOD_TOKEN, TokenizerError


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m data_prep.tokenize",
        description=(
            "Tokenize SlimPajama-layout documents ({'text': ..., 'meta': {'redpajama_set_name': ...}}) into "
            "Megatron indexed shards (.bin + .idx) plus manifest.json. Rerunning resumes: finished shards "
            "are skipped, partial ones redone."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    src = p.add_argument_group("input")
    src.add_argument("--input", nargs="+", default=[], metavar="PATH",
                     help="train *.jsonl / *.jsonl.zst files or folders (searched recursively, sorted)")
    src.add_argument("--validation-input", nargs="+", default=[], metavar="PATH",
                     help="validation files/folders (e.g. SlimPajama's validation/), written to val_* shards")
    src.add_argument("--hf-dataset", metavar="NAME",
                     help="Hugging Face datasets source streamed instead of/besides local files "
                          "(e.g. cerebras/SlimPajama-627B; needs hub access)")
    src.add_argument("--hf-config", metavar="NAME", help="dataset config name")
    src.add_argument("--hf-split", default="train", help="split streamed into train shards")
    src.add_argument("--hf-validation-split", metavar="SPLIT", help="split streamed into val shards (e.g. validation)")
    src.add_argument("--hf-data-files", nargs="+", metavar="FILE", help="data_files for the datasets builder")
    src.add_argument("--hf-max-records", type=int, metavar="N", help="stop each hub stream after N records")
    src.add_argument("--set-name", nargs="+", dest="set_names", metavar="NAME",
                     help="keep only documents whose meta.redpajama_set_name is one of these (e.g. RedPajamaGithub)")

    tok = p.add_argument_group("tokenizer")
    tok.add_argument("--tokenizer", required=True, metavar="FILE",
                     help="tokenizer.json (GPT-2 for the paper's runs, GPT-NeoX-20B for 7B-style runs, or one "
                          "from data_prep.train_tokenizer)")
    tok.add_argument("--eod-token", default=DEFAULT_EOD_TOKEN, help="token appended after every document")

    out = p.add_argument_group("output")
    out.add_argument("--output-dir", required=True, metavar="DIR")
    out.add_argument("--validation-fraction", type=float, default=0.0, metavar="F",
                     help="hold out this share of the train documents into val_* shards (chosen by a hash of "
                          "file and line, so independent of workers and sharding)")
    out.add_argument("--split-seed", type=int, default=1234, help="seed of the held-out document choice")
    out.add_argument("--files-per-shard", type=int, default=16,
                     help="consecutive input files per output shard (SlimPajama: ~10M GPT-2 tokens per file, "
                          "so ~170M tokens per shard)")
    out.add_argument("--records-per-shard", type=int, default=100_000, help="hub records per output shard")
    out.add_argument("--overwrite", action="store_true", help="discard earlier output in --output-dir and redo all")
    out.add_argument("--redo-changed", action="store_true",
                     help="re-tokenize the finished shards whose input files changed since (e.g. re-downloaded); "
                          "without it such shards stop the run with an error that names them")

    run = p.add_argument_group("run")
    run.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="worker processes (one shard each)")
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    options = PrepOptions(
        output_dir=args.output_dir,
        tokenizer=args.tokenizer,
        eod_token=args.eod_token,
        inputs=args.input,
        validation_inputs=args.validation_input,
        hf_dataset=args.hf_dataset,
        hf_config=args.hf_config,
        hf_split=args.hf_split,
        hf_validation_split=args.hf_validation_split,
        hf_data_files=args.hf_data_files,
        hf_max_records=args.hf_max_records,
        set_names=args.set_names,
        validation_fraction=args.validation_fraction,
        split_seed=args.split_seed,
        files_per_shard=args.files_per_shard,
        records_per_shard=args.records_per_shard,
        workers=args.workers,
        overwrite=args.overwrite,
        redo_changed=args.redo_changed,
        progress=not args.no_progress,
    )
    try:
        result = prepare(options)
    except (InputError, TokenizerError, OutputConflict) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except WorkerDied as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(result.summary())
    print(f"manifest: {os.path.join(args.output_dir, 'manifest.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
