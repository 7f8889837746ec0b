"""Evaluate a checkpoint: validation loss and perplexity on held-out shards (and the unigram baseline),
or zero-shot downstream tasks through lm-evaluation-harness (``--tasks``; the optional extra ``eval``).

    python -m xlstm_pretrain.evaluate --checkpoint runs/quickstart [key=value ...]
    torchrun --nproc_per_node 2 -m xlstm_pretrain.evaluate --checkpoint CKPT parallel.tensor_parallel=2
    python -m xlstm_pretrain.evaluate --checkpoint CKPT --tasks lambada_openai,hellaswag,piqa,arc_easy
    python -m xlstm_pretrain.evaluate --checkpoint CKPT --tasks local_cloze --include-path runs/x/tasks

``--checkpoint``: a run dir (its latest checkpoint), a training checkpoint dir (``step_N``), or a plain
checkpoint dir (``config.yaml`` + ``model.safetensors``, e.g. a checkpoint's ``consolidated/``). The
weights are the consolidated, TP-independent state dict, so any tensor-parallel degree can evaluate
them. The config comes from the checkpoint; overrides change e.g. ``data.validation`` or ``eval.samples``
(0 = the whole validation set). Prints one JSON line: val_loss, val_ppl, tokens[, unigram_loss].

With ``--tasks`` (lm-eval task names, or tasks of ``--include-path`` folders of lm-eval YAML files) it
prints a table of the task metrics and one JSON line {"checkpoint", "tasks": {task: {metric: value}}}.
Log-likelihoods reuse the recurrent state of each context (``xlstm_pretrain.downstream.scoring``).
Every process runs every request; under torchrun the TP ranks share the work of each forward.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from xlstm_pretrain.config import ConfigError
from xlstm_pretrain.downstream.checkpoint import resolve_checkpoint


def evaluate_checkpoint(checkpoint: str | Path, overrides=(), unigram: bool = False) -> dict:
    from safetensors.torch import load_file

    from xlstm_pretrain.data import build_train_dataset, build_validation_dataset
    from xlstm_pretrain.model import build_model
    from xlstm_pretrain.parallel import (apply_context_parallel, check_layout, init_parallel_state,
                                         load_full_state_dict, parallelize_model)
    from xlstm_pretrain.train import setup
    from xlstm_pretrain.train.validation import (evaluate, token_counts, unigram_cross_entropy, validation_slice,
                                                 validation_targets, validation_windows)

    plain = resolve_checkpoint(checkpoint)
    # the training layout does not carry over: one process unless the overrides say otherwise
    layout = ["parallel.tensor_parallel=1", "parallel.context_parallel=1", "parallel.sequence_parallel=false"]
    cfg = setup.load_run_config([plain / "config.yaml"], [*layout, *overrides])
    validation = build_validation_dataset(cfg.data)
    if validation is None:
        raise ConfigError("data.validation is empty: give validation shards "
                          "(e.g. data.validation=[{path: DIR, split: val}])")
    rt = setup.init_distributed(cfg.train.device)
    check_layout(cfg.model, cfg.parallel, rt.world_size, cfg.data.seq_len)
    state = init_parallel_state(cfg.parallel, rt.device.type)
    with torch.device(rt.device):
        model = build_model(cfg.model)
    full = load_file(str(plain / "model.safetensors"))
    if cfg.model.tie_embeddings:
        full["lm_head.weight"] = full["embedding.weight"]
    model = apply_context_parallel(parallelize_model(model, state), state)
    load_full_state_dict(model, {k: v.to(rt.device, torch.float32) for k, v in full.items()})
    micro = cfg.eval.micro_batch_size or cfg.train.micro_batch_size
    indices = validation_slice(len(validation), cfg.eval.samples, micro, state.dp, state.dp_rank)
    loss, tokens = evaluate(model, validation, indices, micro, rt.device, setup.autocast(cfg, rt.device), state)
    out = {"checkpoint": str(plain), "val_loss": loss, "val_ppl": math.exp(min(loss, 700.0)), "tokens": tokens}
    if unigram:
        counts = sum(token_counts(s.stream, cfg.model.vocab_size) for s in build_train_dataset(cfg.data).sets)
        windows = validation_windows(len(validation), cfg.eval.samples)  # the windows `evaluate` used
        out["unigram_loss"] = unigram_cross_entropy(counts, validation_targets(validation, windows))
    return out


def evaluate_tasks(checkpoint: str | Path, tasks, overrides=(), *, include_path=None, limit=None, num_fewshot=None,
                   batch_size: int = 16, dtype: str = "auto", max_length: int | None = None,
                   log_samples: bool = False) -> dict:
    """Downstream tasks on a checkpoint: {"checkpoint", "tasks": {task: {metric: value}}[, "samples"]}."""
    from xlstm_pretrain.downstream.tasks import check_tasks, require_lm_eval, run_tasks, summarize

    require_lm_eval()
    from xlstm_pretrain.downstream.lm_eval_adapter import XLSTMEvalLM

    manager = check_tasks(tasks, include_path)  # before the model is loaded
    lm = XLSTMEvalLM.from_checkpoint(checkpoint, overrides, dtype=dtype, batch_size=batch_size,
                                     max_length=max_length)
    results = run_tasks(lm, tasks, manager=manager, limit=limit, num_fewshot=num_fewshot, log_samples=log_samples)
    out = {"checkpoint": str(resolve_checkpoint(checkpoint)), "tasks": summarize(results)}
    if log_samples:
        out["samples"] = results["samples"]
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m xlstm_pretrain.evaluate", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--unigram-baseline", action="store_true",
                    help="also report the loss of the training set's unigram distribution on the same tokens")
    ap.add_argument("--output", type=Path, help="also write the JSON result here")
    down = ap.add_argument_group("downstream tasks (lm-evaluation-harness)")
    down.add_argument("--tasks", help="comma-separated lm-eval task names (instead of the validation loss)")
    down.add_argument("--include-path", action="append", help="a folder of lm-eval task YAML files (repeatable)")
    down.add_argument("--limit", type=float, help="documents per task (testing only; < 1: a fraction)")
    down.add_argument("--num-fewshot", type=int, help="few-shot examples (default: zero-shot)")
    down.add_argument("--batch-size", type=int, default=16, help="contexts (and continuations) per forward")
    down.add_argument("--dtype", default="auto", choices=["auto", "float32", "float64", "bfloat16"],
                      help="auto: the run's training precision (bf16 autocast for precision=bf16)")
    down.add_argument("--max-length", type=int,
                      help="left-truncate context + continuation to this many tokens (default: model.context_length, "
                           "what lm_eval's hf model uses for the exported folder)")
    down.add_argument("--log-samples", action="store_true", help="with --output: also write every request's result")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args(argv)
    try:
        if args.tasks:
            limit = None if args.limit is None else (int(args.limit) if args.limit >= 1 else args.limit)
            result = evaluate_tasks(args.checkpoint, args.tasks, args.overrides, include_path=args.include_path,
                                    limit=limit, num_fewshot=args.num_fewshot, batch_size=args.batch_size,
                                    dtype=args.dtype, max_length=args.max_length, log_samples=args.log_samples)
        else:
            result = evaluate_checkpoint(args.checkpoint, args.overrides, args.unigram_baseline)
        if not dist.is_initialized() or dist.get_rank() == 0:
            if args.tasks:
                from xlstm_pretrain.downstream.table import format_task_table

                print(format_task_table(result["tasks"]))
            print(json.dumps({k: v for k, v in result.items() if k != "samples"}))
            if args.output:
                args.output.write_text(json.dumps(result, indent=2, default=str) + "\n")
        return 0
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
