"""CLI: train a byte-level BPE ``tokenizer.json`` on local text (tests, demos, offline machines).

    python -m data_prep.train_tokenizer --input data/sample --vocab-size 8192 --output tok/tokenizer.json

Byte-level like GPT-2: any UTF-8 text is encodable (no unknown token). The first special token
(default ``<|endoftext|>``) gets id 0 and serves as the end-of-document token in data_prep.tokenize.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Iterable, Iterator

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

from data_prep.readers import InputError, InputFile, InputLog, find_input_files, format_example, iter_file_documents
from data_prep.tokenizer_info import DEFAULT_EOD_TOKEN

TEXT_SUFFIXES = (".jsonl", ".jsonl.zst", ".txt")


def iter_texts(files: Iterable[InputFile], log: InputLog, max_documents: int | None = None) -> Iterator[str]:
    """Documents of jsonl/jsonl.zst files (the "text" field) and .txt files (the whole file)."""
    n = 0
    for input_file in files:
        if input_file.path.endswith(".txt"):
            texts = [Path(input_file.path).read_text(encoding="utf-8", errors="replace")]
        else:
            texts = (doc.text for doc in iter_file_documents(input_file, log))
        for text in texts:
            if max_documents is not None and n >= max_documents:
                return
            n += 1
            yield text


def train_bpe(
    texts: Iterable[str], vocab_size: int, special_tokens: list[str], min_frequency: int = 2
) -> Tokenizer:
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=special_tokens,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # all 256 bytes: nothing is unencodable
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer)
    return tokenizer


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m data_prep.train_tokenizer",
        description="Train a byte-level BPE tokenizer.json on local *.jsonl / *.jsonl.zst / *.txt files or folders.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--input", nargs="+", required=True, metavar="PATH", help="files or folders of text")
    p.add_argument("--output", required=True, metavar="FILE", help="where to write tokenizer.json")
    p.add_argument("--vocab-size", type=int, default=8192, help="total vocabulary including special tokens")
    p.add_argument("--min-frequency", type=int, default=2, help="minimum pair count for a merge")
    p.add_argument("--special-tokens", nargs="+", default=[DEFAULT_EOD_TOKEN], metavar="TOKEN",
                   help="special tokens, ids 0.. in this order (the first is the EOD token)")
    p.add_argument("--max-documents", type=int, metavar="N", help="train on the first N documents only")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.vocab_size <= 256 + len(args.special_tokens):
        print(f"error: --vocab-size must exceed 256 bytes + {len(args.special_tokens)} special tokens", file=sys.stderr)
        return 2
    try:
        files = find_input_files(args.input, TEXT_SUFFIXES)
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    log = InputLog()
    texts = iter_texts(files, log, args.max_documents)
    tokenizer = train_bpe(texts, args.vocab_size, args.special_tokens, args.min_frequency)
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    tokenizer.save(args.output)
    skipped = sum(log.counts.values())
    print(f"wrote {args.output}: vocab size {tokenizer.get_vocab_size()}, skipped {skipped} bad input line(s)")
    for example in log.examples:
        print(f"  {format_example(example)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
