r"""The memory model against the real trainer on a GPU: torch.cuda.max_memory_allocated (the trainer's
``mem_gib``, metrics.jsonl) beside the prediction of xlstm_pretrain/memory/ for the same run, one process.

    python tools/bench/memory_gpu.py [--runs xlstm_1_0_125m_15b ...] [--backend auto] [key=value ...]
    python tools/bench/memory_gpu.py --dry-run     # the predictions only (any machine)

The allocator peak excludes the CUDA context and the caching allocator's slack, so it is compared with the
prediction less the "allocator overhead + CUDA context" part. One process: DP = 1 (ZeRO partitions nothing);
the runs' own micro-batch, activation checkpointing and precision. Not yet measured (no GPU was lent when
this was written): record the table in tools/bench/RESULTS.md with the date and the device.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from train_gpu import REPO, TORCHRUN, prepare_data, run  # noqa: E402

RUNS = ["xlstm_1_0_125m_15b", "xlstm_7_1_125m_15b", "xlstm_1_0_350m_15b"]


def overrides_for(data: Path, run_dir: Path, steps: int, backend: str) -> list[str]:
    return [f"data.train=[{{path: {data / 'tokens'}}}]", "data.validation=[]",
            f"train.tokenizer={data / 'tokenizer.json'}",
            f"train.run_dir={run_dir}", f"train.steps={steps}", "optim.warmup_steps=1", "optim.decay_steps=1",
            f"model.backend={backend}", "logging.interval=1", "logging.wandb=disabled", "eval.interval=0",
            "eval.flop_milestones_per_decade=0", "eval.at_end=false", "checkpoint.interval=0",
            "checkpoint.save_final=false"]


def predicted_allocated(name: str, overrides: list[str], global_batch: int) -> tuple[float, str]:
    """Predicted allocator peak (GiB) on 1 GPU and the backend it assumes."""
    from xlstm_pretrain.memory import GPUS, Layout, estimate
    from xlstm_pretrain.train.setup import load_run_config

    cfg = load_run_config([REPO / "configs" / "runs" / f"{name}.yaml"], overrides)
    cfg.train.global_batch_size = global_batch
    est = estimate(cfg, Layout.from_config(cfg, 1), GPUS["h200-141gb"])
    return (est.total - est.parts["allocator overhead + CUDA context"]) / 2**30, est.backend


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(REPO / "runs" / "bench_memory"))
    ap.add_argument("--runs", nargs="+", default=RUNS)
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--corpus-mb", type=int, default=20)
    ap.add_argument("--dry-run", action="store_true", help="print the predictions, run nothing")
    ap.add_argument("overrides", nargs="*", help="extra trainer overrides (key=value) for every run")
    args = ap.parse_args(argv)
    out = Path(args.out)
    data = out / "data" if args.dry_run else prepare_data(out, args.corpus_mb)
    print(f"{'run':24s} {'backend':8s} {'predicted GiB':>14s} {'measured GiB':>13s} {'ratio':>6s}")
    for name in args.runs:
        run_dir = out / name
        ov = overrides_for(data, run_dir, args.steps, args.backend) + args.overrides
        from xlstm_pretrain.train.setup import load_run_config

        micro = load_run_config([REPO / "configs" / "runs" / f"{name}.yaml"], ov).train.micro_batch_size
        ov.append(f"train.global_batch_size={micro}")  # one micro-batch per step on one GPU
        pred, backend = predicted_allocated(name, ov, micro)
        if args.dry_run:
            print(f"{name:24s} {backend:8s} {pred:14.2f} {'-':>13s}")
            continue
        run([*TORCHRUN, "--standalone", "--nproc_per_node", "1", "-m", "xlstm_pretrain.train", "--config",
             str(REPO / "configs" / "runs" / f"{name}.yaml"), "--resume", "none", *ov])
        rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        measured = max(r["mem_gib"] for r in rows if r.get("kind") == "train")
        print(f"{name:24s} {backend:8s} {pred:14.2f} {measured:13.2f} {pred / measured:6.3f}")


if __name__ == "__main__":
    main()
