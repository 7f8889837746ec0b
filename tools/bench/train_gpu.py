"""Trainer throughput on one GPU: tokens/s and MFU of the paper's 125M and 1.3B runs (xLSTM[1:0], [7:1]).

The real training path (``python -m xlstm_pretrain.train`` under torchrun, DeepSpeed ZeRO-1, bf16
autocast, the Triton kernels) on a stdlib corpus tokenized here (the vocabulary size of the model stays
the paper's 50304: only the embedding rows that are used get gradients, the FLOPs are the same). Each run
takes ``--steps`` steps of ``--global-batch`` x 2048 tokens; the table reports the median tokens/s and
MFU of the steps after the first ``--skip`` (compilation and autotuning happen in those).

    python tools/bench/train_gpu.py [--out runs/bench_gpu] [--runs xlstm_7_1_125m_15b ...] [--backend triton]
    python tools/bench/train_gpu.py --smoke      # CPU check of this script: tiny models, 3 steps, gloo

MFU is the trainer's own (tools/flops.py's FLOPs / the device's dense bf16 peak; absent for unknown
devices). Record the table in tools/bench/RESULTS.md with the date and the device.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PY = sys.executable
TORCHRUN = [PY, "-m", "torch.distributed.run"]  # torchrun, without relying on its script being on PATH
RUNS = ["xlstm_1_0_125m_15b", "xlstm_7_1_125m_15b", "xlstm_1_0_1_3b_15b", "xlstm_7_1_1_3b_15b"]
SMOKE = ["model.embedding_dim=64", "model.num_blocks=2", "model.slstm_at=[]", "model.num_heads=4",
         "data.seq_len=128", "model.context_length=128", "train.precision=fp32", "train.device=cpu"]


def run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=REPO, text=True, capture_output=True, **kw)
    if proc.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return proc


def prepare_data(out: Path, mb: int) -> Path:
    data = out / "data"
    if (data / "tokens" / "manifest.json").is_file() or (data / "done").is_file():
        return data
    run([PY, "tools/stdlib_corpus.py", "--output", str(data / "corpus"), "--max-mb", str(mb)])
    run([PY, "-m", "data_prep.train_tokenizer", "--input", str(data / "corpus" / "train"), "--vocab-size", "4096",
         "--output", str(data / "tokenizer.json")])
    run([PY, "-m", "data_prep.tokenize", "--tokenizer", str(data / "tokenizer.json"), "--input",
         str(data / "corpus" / "train"), "--validation-input", str(data / "corpus" / "validation"),
         "--output-dir", str(data / "tokens"), "--workers", str(min(8, os.cpu_count() or 1))])
    (data / "done").write_text("ok\n")
    return data


def measure(name: str, data: Path, out: Path, args) -> dict:
    run_dir = out / name
    overrides = [
        f"data.train=[{{path: {data / 'tokens'}}}]", "data.validation=[]", "data.num_workers=2",
        f"train.tokenizer={data / 'tokenizer.json'}", f"train.run_dir={run_dir}", f"train.steps={args.steps}",
        f"train.global_batch_size={args.global_batch}", f"train.micro_batch_size={args.micro_batch}",
        "train.zero_stage=1", f"model.backend={args.backend}", "optim.warmup_steps=1", "optim.decay_steps=1",
        "logging.interval=1", "logging.wandb=disabled", "eval.interval=0", "eval.flop_milestones_per_decade=0",
        "eval.at_end=false", "checkpoint.interval=0", "checkpoint.save_final=false",
    ] + (SMOKE if args.smoke else []) + args.overrides
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run([*TORCHRUN, "--standalone", "--nproc_per_node", "1", "-m", "xlstm_pretrain.train", "--config",
         str(REPO / "configs" / "runs" / f"{name}.yaml"), "--resume", "none", *overrides], env=env)
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if r.get("kind") == "train" and r["step"] > args.skip]
    if not rows:
        sys.exit(f"{name}: no train rows after step {args.skip}")
    mfu = [r["mfu"] for r in rows if "mfu" in r]
    return {"run": name, "tokens_per_s": statistics.median(r["tokens_per_s"] for r in rows),
            "step_time_s": statistics.median(r["step_time_s"] for r in rows),
            "mfu": statistics.median(mfu) if mfu else None, "mem_gib": max(r["mem_gib"] for r in rows),
            "steps": len(rows)}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(REPO / "runs" / "bench_gpu"))
    ap.add_argument("--runs", nargs="+", default=RUNS)
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--skip", type=int, default=4, help="steps left out of the medians (compile, autotune)")
    ap.add_argument("--global-batch", type=int, default=32)
    ap.add_argument("--micro-batch", type=int, default=8)
    ap.add_argument("--corpus-mb", type=int, default=40)
    ap.add_argument("--smoke", action="store_true", help="tiny CPU models (checks the script, not the speed)")
    ap.add_argument("overrides", nargs="*", help="extra trainer overrides (key=value) for every run")
    args = ap.parse_args(argv)
    if args.smoke:
        args.backend, args.steps, args.skip, args.global_batch, args.micro_batch = "torch", 3, 1, 2, 1
        args.corpus_mb, args.runs = 1, args.runs[:2]
    out = Path(args.out)
    data = prepare_data(out, args.corpus_mb)
    results = [measure(name, data, out, args) for name in args.runs]
    device = "cpu (smoke)" if args.smoke else _device_name()
    print(f"trainer throughput, 1 process, {device}, backend {args.backend}, ZeRO-1, global batch "
          f"{args.global_batch} (micro {args.micro_batch}), medians of steps {args.skip + 1}..{args.steps}")
    print(f"{'run':24s} {'tokens/s':>10s} {'step s':>8s} {'MFU':>6s} {'mem GiB':>8s}")
    for r in results:
        mfu = f"{r['mfu']:.3f}" if r["mfu"] is not None else "-"
        print(f"{r['run']:24s} {r['tokens_per_s']:10.0f} {r['step_time_s']:8.3f} {mfu:>6s} {r['mem_gib']:8.2f}")
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")


def _device_name() -> str:
    import torch

    return torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"


if __name__ == "__main__":
    main()
