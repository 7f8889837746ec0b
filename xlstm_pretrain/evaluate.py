"""Evaluate a checkpoint on held-out shards: validation loss and perplexity (and the unigram baseline).

    python -m xlstm_pretrain.evaluate --checkpoint runs/quickstart [key=value ...]
    torchrun --nproc_per_node 2 -m xlstm_pretrain.evaluate --checkpoint CKPT parallel.tensor_parallel=2

``--checkpoint``: a run dir (its latest checkpoint), a training checkpoint dir (``step_N``), or a plain
checkpoint dir (``config.yaml`` + ``model.safetensors``, e.g. a checkpoint's ``consolidated/``). The
weights are the consolidated, TP-independent state dict, so any tensor-parallel degree can evaluate
them. The config comes from the checkpoint; overrides change e.g. ``data.validation`` or ``eval.samples``
(0 = the whole validation set). Prints one JSON line: val_loss, val_ppl, tokens[, unigram_loss].
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


def resolve_checkpoint(path: str | Path) -> Path:
    """The plain (consolidated) checkpoint dir behind a run dir, a training checkpoint or a plain dir."""
    from xlstm_pretrain.train.checkpoint import latest_checkpoint

    p = Path(path)
    if (p / "checkpoints").is_dir():
        found = latest_checkpoint(p)
        if found is None:
            raise ConfigError(f"{p} has no complete checkpoint (no checkpoints/latest)")
        p = found
    if (p / "consolidated" / "model.safetensors").is_file():
        p = p / "consolidated"
    if not (p / "model.safetensors").is_file() or not (p / "config.yaml").is_file():
        raise ConfigError(f"{path}: not a run dir, a training checkpoint with consolidated/, or a plain checkpoint "
                          "(config.yaml + model.safetensors)")
    return p


def evaluate_checkpoint(checkpoint: str | Path, overrides=(), unigram: bool = False) -> dict:
    from safetensors.torch import load_file

    from xlstm_pretrain.data import build_train_dataset, build_validation_dataset
    from xlstm_pretrain.model import build_model
    from xlstm_pretrain.parallel import (apply_context_parallel, check_layout, init_parallel_state,
                                         load_full_state_dict, parallelize_model)
    from xlstm_pretrain.train import setup
    from xlstm_pretrain.train.evaluate import (evaluate, token_counts, unigram_cross_entropy, validation_slice,
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


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m xlstm_pretrain.evaluate", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--unigram-baseline", action="store_true",
                    help="also report the loss of the training set's unigram distribution on the same tokens")
    ap.add_argument("--output", type=Path, help="also write the JSON result here")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args(argv)
    try:
        result = evaluate_checkpoint(args.checkpoint, args.overrides, args.unigram_baseline)
        if not dist.is_initialized() or dist.get_rank() == 0:
            print(json.dumps(result))
            if args.output:
                args.output.write_text(json.dumps(result, indent=2) + "\n")
        return 0
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
