"""Helpers for the trainer tests: one tiny tokenized dataset per session, launching runs, reading metrics."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
TORCHRUN = str(Path(sys.executable).with_name("torchrun"))


def prepare_data(base: Path) -> dict:
    """stdlib corpus (~0.4 MB) -> BPE tokenizer (512 ids) -> data_prep shards with a manifest. Cached in ``base``."""
    done = base / "done.json"
    if done.is_file():
        return json.loads(done.read_text())
    base.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def run(*args):
        subprocess.run([PYTHON, *args], cwd=REPO, env=env, check=True, capture_output=True, text=True)

    run("tools/stdlib_corpus.py", "--output", str(base / "corpus"), "--max-mb", "0.4", "--validation-fraction", "0.1")
    tok = base / "tokenizer.json"
    run("-m", "data_prep.train_tokenizer", "--input", str(base / "corpus" / "train"), "--vocab-size", "512",
        "--output", str(tok))
    run("-m", "data_prep.tokenize", "--tokenizer", str(tok), "--input", str(base / "corpus" / "train"),
        "--validation-input", str(base / "corpus" / "validation"), "--output-dir", str(base / "tokens"), "--workers", "1")
    # a second tokenizer (other vocabulary) for the mismatch test
    run("-m", "data_prep.train_tokenizer", "--input", str(base / "corpus" / "validation"), "--vocab-size", "300",
        "--output", str(base / "other_tokenizer.json"))
    info = {"tokens": str(base / "tokens"), "tokenizer": str(tok), "other_tokenizer": str(base / "other_tokenizer.json")}
    done.write_text(json.dumps(info))
    return info


def tiny_overrides(data: dict, run_dir: Path, family: str = "paper", **extra) -> list[str]:
    """A tiny model on the session dataset; ``extra`` are more dotted overrides (key=value)."""
    model = {"paper": ["model.family=paper", "model.slstm_at=[1]", "model.num_blocks=3"],
             "large": ["model.family=large", "model.num_blocks=2"]}[family]
    base = [*model, "model.vocab_size=512", "model.embedding_dim=32", "model.num_heads=4", "model.chunk_size=16",
            "model.context_length=32",
            f"data.train=[{{path: {data['tokens']}}}]", f"data.validation=[{{path: {data['tokens']}, split: val}}]",
            "data.seq_len=32", "data.num_workers=0", "data.pin_memory=false",
            f"train.tokenizer={data['tokenizer']}", f"train.run_dir={run_dir}", "train.precision=fp32",
            "train.global_batch_size=8", "train.micro_batch_size=2", "train.steps=6",
            "optim.lr=3e-3", "optim.warmup_steps=2", "logging.interval=1", "logging.wandb=disabled",
            "eval.interval=0", "eval.flop_milestones_per_decade=0", "eval.samples=16",
            "checkpoint.interval=0", "checkpoint.keep_last=100"]
    return base + [f"{k}={v}" for k, v in extra.items()]


def torchrun(nproc: int, args: list[str], timeout: int = 300, max_restarts: int = 0, module: str = "xlstm_pretrain.train",
             config: str | None = None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``env``: more environment variables, e.g. ``fault_hooks.fault_env(...)``."""
    cmd = [TORCHRUN, "--standalone", "--nproc_per_node", str(nproc), f"--max-restarts={max_restarts}",
           "--monitor-interval=0.5", "-m", module]
    if config:
        cmd += ["--config", config]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run(cmd + args, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def uninterrupted_run(data: dict, run: Path, nproc: int, overrides: dict) -> Path:
    """The reference of a fault test: the same job on one node, started fresh and never interrupted."""
    proc = torchrun(nproc, ["--resume", "none"] + tiny_overrides(data, run, **overrides))
    assert proc.returncode == 0, output(proc)
    return run


def python_module(module: str, args: list[str], timeout: int = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([PYTHON, "-m", module, *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=timeout)


def metrics(run_dir: Path, kind: str | None = None) -> list[dict]:
    rows = [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [r for r in rows if kind is None or r["kind"] == kind]


def train_losses(run_dir: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in metrics(run_dir, "train")}


def output(proc: subprocess.CompletedProcess) -> str:
    return f"rc={proc.returncode}\n--- stdout ---\n{proc.stdout[-6000:]}\n--- stderr ---\n{proc.stderr[-6000:]}"
