r"""FLOP calculator: parameters, FLOPs per token by component, training FLOPs and GPU time.

    python tools/flops.py --config configs/model/xlstm_1_0_125m.yaml [model.chunk_size=128 ...] \
        --tokens 300e9 --mfu 0.4 --device H100 --gpus 128
    python tools/flops.py --table            # every paper config at its published token budget, and the 7B
    add --json for machine-readable output (sweeps)

Training FLOPs = 3 x forward (xlstm_pretrain/flops.py documents what is counted). Wall-clock assumes
the given MFU of the device's dense BF16 peak; 6*N*D is shown only for comparison (it ignores the
mLSTM cell and counts the LM head through N).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

from xlstm_pretrain.config import ConfigError, load
from xlstm_pretrain.flops import TRAINING_FLOPS_FACTOR, device_peak, flop_breakdown, format_report
from xlstm_pretrain.model import ModelConfig, build_model, count_params
from xlstm_pretrain.train.batch_schedule import BatchSchedule

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs" / "model"


@dataclass(frozen=True)
class Run:
    label: str
    config: str  # file in configs/model
    tokens: float
    seq_len: int
    recipe: str


def _tokens(batch: int, steps: int, ctx: int, rampup: tuple[tuple[int, int], ...] = ()) -> float:
    """Tokens of ``steps`` steps of ``batch`` x ``ctx``, after a ramp-up of (batch, steps) stages."""
    return float(BatchSchedule(rampup, batch).consumed_samples(steps) * ctx)


# NeurIPS paper App. B.3: 300B-token runs (125M-760M: batch 256 x 600k steps; 1.3B: 512 x 300k), ctx 2048;
# the 2.7B was trained only in the 15B-token setting. 7B paper: 550k steps x ctx 8192 of batch 512 after the
# ramp-up 128 (2000 steps) -> 256 (2000 steps) (2.296T tokens; configs/recipes/large_7b.yaml).
PAPER_RUNS = [
    *(Run(f"xLSTM[{kind}] {size}", f"xlstm_{kind.replace(':', '_')}_{size.lower().replace('.', '_')}.yaml",
          _tokens(256, 600_000, 2048), 2048, "256 x 600k x 2048")
      for size in ("125M", "350M", "760M") for kind in ("1:0", "7:1")),
    *(Run(f"xLSTM[{kind}] 1.3B", f"xlstm_{kind.replace(':', '_')}_1_3b.yaml", _tokens(512, 300_000, 2048), 2048,
          "512 x 300k x 2048") for kind in ("1:0", "7:1")),
    Run("xLSTM[1:0] 2.7B", "xlstm_1_0_2_7b.yaml", 15e9, 2048, "15B tokens"),
    Run("xLSTM 7B", "xlstm_large_7b.yaml", _tokens(512, 550_000, 8192, ((128, 2000), (256, 2000))), 8192,
        "128->256->512 x 550k x 8192"),
]


def parse_count(text: str) -> float:
    """'300e9', '300B', '2.3T', '15e9' -> float."""
    suffixes = {"K": 1e3, "M": 1e6, "B": 1e9, "G": 1e9, "T": 1e12}
    text = text.strip()
    if text and text[-1].upper() in suffixes:
        return float(text[:-1]) * suffixes[text[-1].upper()]
    return float(text)


def estimate(cfg: ModelConfig, seq_len: int, tokens: float | None, mfu: float, device: str, gpus: int) -> dict:
    """Everything the CLI prints for one model, as a dict (the --json output)."""
    bd = flop_breakdown(cfg, seq_len)
    model = build_model(cfg, device="meta")  # shapes only, no memory
    params, params_non_emb = count_params(model), count_params(model, exclude_embedding=True)
    out = {
        "family": cfg.family, "num_blocks": cfg.num_blocks, "embedding_dim": cfg.embedding_dim,
        "seq_len": seq_len, "chunk_size": cfg.chunk_size,
        "params": params, "params_non_embedding": params_non_emb,
        "forward_flops_per_token": bd.total, "forward_matmul_flops_per_token": bd.matmul,
        "training_flops_per_token": TRAINING_FLOPS_FACTOR * bd.total,
        "forward_flops_per_token_by_component": {k: c.total for k, c in bd.components().items()},
    }
    if tokens is None:
        return out
    total = TRAINING_FLOPS_FACTOR * bd.total * tokens
    out.update(tokens=tokens, training_flops=total, six_n_d=6 * params_non_emb * tokens)
    found = device_peak(device)
    if found is not None and mfu > 0 and gpus > 0:
        name, peak = found
        gpu_seconds = total / (mfu * peak)
        out.update(device=name, peak_flops=peak, mfu=mfu, gpus=gpus,
                   gpu_hours=gpu_seconds / 3600, wall_clock_days=gpu_seconds / gpus / 86400)
    return out


def print_one(label: str, est: dict, cfg: ModelConfig) -> None:
    print(f"{label}: family {est['family']}, {est['num_blocks']} blocks, d={est['embedding_dim']}, "
          f"seq_len {est['seq_len']}, chunk {est['chunk_size']}")
    print(f"parameters: {est['params'] / 1e6:.1f}M total, {est['params_non_embedding'] / 1e6:.1f}M non-embedding")
    print("forward FLOPs per token:")
    print(format_report(cfg, est["seq_len"]))
    if "tokens" in est:
        print(f"training FLOPs for {est['tokens']:.4g} tokens: {est['training_flops']:.4e} "
              f"(6*N*D with non-embedding N: {est['six_n_d']:.4e}, ratio {est['training_flops'] / est['six_n_d']:.3f})")
    if "gpu_hours" in est:
        print(f"at MFU {est['mfu']:.2f} on {est['device']} ({est['peak_flops'] / 1e12:.0f} TFLOP/s dense bf16) "
              f"x {est['gpus']} GPUs: {est['wall_clock_days']:.2f} days wall-clock, {est['gpu_hours']:,.0f} GPU-hours")


def print_table(rows: list[tuple[Run, dict]], mfu: float, device: str, gpus: int) -> None:
    found = device_peak(device)
    where = f"MFU {mfu:.2f} on {found[0]} x {gpus}" if found else "unknown device: no time estimate"
    print(f"Paper recipes; training = {TRAINING_FLOPS_FACTOR} x forward; time at {where}")
    head = (f"{'model':<17} {'params':>8} {'non-emb':>8} {'ctx':>5} {'tokens':>9} {'fwd FLOP/tok':>12} "
            f"{'train FLOPs':>11} {'/6ND':>5} {'GPU-hours':>10} {'days':>7}  recipe")
    print(head)
    print("-" * len(head))
    for run, est in rows:
        hours = f"{est['gpu_hours']:>10,.0f}" if "gpu_hours" in est else f"{'-':>10}"
        days = f"{est['wall_clock_days']:>7.2f}" if "wall_clock_days" in est else f"{'-':>7}"
        print(f"{run.label:<17} {est['params'] / 1e6:>7.1f}M {est['params_non_embedding'] / 1e6:>7.1f}M "
              f"{run.seq_len:>5} {run.tokens:>9.3g} {est['forward_flops_per_token']:>12.4e} "
              f"{est['training_flops']:>11.3e} {est['training_flops'] / est['six_n_d']:>5.2f} {hours} {days}  "
              f"{run.recipe}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="model YAML (e.g. configs/model/xlstm_1_0_125m.yaml)")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. model.num_blocks=12")
    p.add_argument("--seq-len", type=int, help="sequence length (default: model.context_length)")
    p.add_argument("--tokens", type=parse_count, help="training token budget, e.g. 300e9 or 2.3T")
    p.add_argument("--mfu", type=float, default=0.4, help="assumed model FLOPs utilisation (default 0.4)")
    p.add_argument("--device", default="H100", help="GPU name (H100, H100 PCIe, H200, A100, L40S, B200)")
    p.add_argument("--gpus", type=int, default=128, help="number of GPUs for the wall-clock estimate")
    p.add_argument("--table", action="store_true", help="all paper configs at their published token budgets")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    args = p.parse_args(argv)
    if device_peak(args.device) is None:
        print(f"note: no peak for device {args.device!r}; no time estimate", file=sys.stderr)

    if args.table:
        rows = []
        for run in PAPER_RUNS:
            cfg = load(CONFIG_DIR / run.config).model
            rows.append((run, estimate(cfg, run.seq_len, run.tokens, args.mfu, args.device, args.gpus)))
        if args.json:
            print(json.dumps([{"label": r.label, "recipe": r.recipe, **est} for r, est in rows], indent=1))
        else:
            print_table(rows, args.mfu, args.device, args.gpus)
        return 0

    if not args.config:
        p.error("give --config (or --table)")
    try:
        cfg = load(args.config, args.overrides).model
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    seq_len = args.seq_len or cfg.context_length
    est = estimate(cfg, seq_len, args.tokens, args.mfu, args.device, args.gpus)
    if args.json:
        print(json.dumps(est, indent=1))
    else:
        print_one(args.config, est, cfg)
    return 0


if __name__ == "__main__":
    sys.exit(main())
