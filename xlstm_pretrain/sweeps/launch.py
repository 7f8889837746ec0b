"""Running a generated sweep: locally, one run after another (or a few side by side), or as a SLURM job array.

A run counts as done when its run dir has the trainer's ``summary.json`` at the planned step; anything
else is (re)started with ``--resume auto``, so an interrupted sweep continues where each run stopped.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from .grid import SweepPoint

TRAIN_MODULE = "xlstm_pretrain.train"


def is_done(point: SweepPoint) -> bool:
    summary = Path(point.run_dir) / "summary.json"
    if not summary.is_file():
        return False
    try:
        return json.loads(summary.read_text()).get("step") == point.steps
    except json.JSONDecodeError:
        return False


def train_command(point: SweepPoint, nproc: int = 1, extra_configs: list[str] = (), overrides: list[str] = (),
                  python: str = sys.executable) -> list[str]:
    """``python -m xlstm_pretrain.train`` for one process, ``torchrun --standalone`` for several."""
    configs = [arg for c in (point.config, *extra_configs) for arg in ("--config", c)]
    if nproc == 1:
        launcher = [python, "-m", TRAIN_MODULE]
    else:
        torchrun = str(Path(python).with_name("torchrun"))
        launcher = [torchrun, "--standalone", "--nproc_per_node", str(nproc), "-m", TRAIN_MODULE]
    return [*launcher, *configs, "--resume", "auto", *overrides]


@dataclass
class RunResult:
    name: str
    returncode: int | None  # None: skipped (already done) or dry run
    seconds: float
    log: str


def run_local(points: list[SweepPoint], log_dir: Path, jobs: int = 1, nproc: int = 1, extra_configs: list[str] = (),
              overrides: list[str] = (), force: bool = False, dry_run: bool = False, echo=print) -> list[RunResult]:
    """Run the points that are not done, ``jobs`` at a time; each run's output goes to LOG_DIR/NAME.log.

    With several jobs and no OMP_NUM_THREADS set, the cores are split between them (torch would otherwise
    start one thread per core in every process and they would fight over the cores).
    """
    log_dir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    if jobs > 1 and "OMP_NUM_THREADS" not in env:
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // (jobs * nproc)))
    todo, results = [], []
    for p in points:
        if is_done(p) and not force:
            results.append(RunResult(p.name, None, 0.0, ""))
            echo(f"done already: {p.name}")
        else:
            todo.append(p)
    if dry_run:
        for p in todo:
            echo(shlex.join(train_command(p, nproc, extra_configs, overrides)))
            results.append(RunResult(p.name, None, 0.0, ""))
        return results

    running: list[tuple[SweepPoint, subprocess.Popen, float, object]] = []
    try:
        _run_queue(todo, running, results, log_dir, jobs, nproc, extra_configs, overrides, env, echo)
    finally:  # interrupted (Ctrl-C, SIGTERM via the CLI): do not leave orphaned trainers behind
        for _, proc, _, log in running:
            proc.terminate()
        for _, proc, _, log in running:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
            log.close()
    return results


def _run_queue(todo, running, results, log_dir, jobs, nproc, extra_configs, overrides, env, echo) -> None:
    while todo or running:
        while todo and len(running) < jobs:
            p = todo.pop(0)
            cmd = train_command(p, nproc, extra_configs, overrides)
            log = open(log_dir / f"{p.name}.log", "w")
            log.write(shlex.join(cmd) + "\n")
            log.flush()
            echo(f"start: {p.name} ({p.steps:,} steps, {p.flops:.3e} FLOPs) -> {log.name}")
            running.append((p, subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env),
                            time.perf_counter(), log))
        time.sleep(0.2)
        for entry in list(running):
            p, proc, t0, log = entry
            if proc.poll() is None:
                continue
            running.remove(entry)
            log.close()
            seconds = time.perf_counter() - t0
            echo(f"{'finished' if proc.returncode == 0 else f'FAILED (exit {proc.returncode})'}: {p.name} "
                 f"in {seconds:.0f} s")
            results.append(RunResult(p.name, proc.returncode, seconds, log.name))


@dataclass
class SlurmOptions:
    nodes: int = 1
    gpus_per_node: int = 8
    cpus_per_task: int = 64
    time: str = "24:00:00"
    partition: str | None = None
    account: str | None = None
    max_parallel: int | None = None  # %N: at most N array tasks at once
    setup: str = ""  # shell lines run before torchrun (module load ..., source .venv/bin/activate)
    extra_sbatch: tuple[str, ...] = ()  # more "#SBATCH" options, e.g. "--qos=high"


def slurm_script(points: list[SweepPoint], sweep_name: str, repo: Path, list_file: Path, log_dir: Path,
                 opts: SlurmOptions, extra_configs: list[str] = (), overrides: list[str] = ()) -> str:
    """An sbatch script for a job array: task i runs the i-th config of LIST_FILE on ``nodes`` nodes.

    One ``srun`` task per node starts ``torchrun``, which starts one process per GPU; the nodes meet at a
    c10d rendezvous on the first node of the allocation (a port derived from the job id, so that array
    tasks sharing a node do not collide).
    """
    n = len(points)
    throttle = f"%{opts.max_parallel}" if opts.max_parallel else ""
    lines = ["#!/bin/bash",
             f"#SBATCH --job-name=sweep-{sweep_name}",
             f"#SBATCH --array=0-{n - 1}{throttle}",
             f"#SBATCH --nodes={opts.nodes}",
             "#SBATCH --ntasks-per-node=1",
             f"#SBATCH --gpus-per-node={opts.gpus_per_node}",
             f"#SBATCH --cpus-per-task={opts.cpus_per_task}",
             f"#SBATCH --time={opts.time}",
             f"#SBATCH --output={log_dir}/%x-%A_%a.out"]
    lines += [f"#SBATCH --partition={opts.partition}"] * bool(opts.partition)
    lines += [f"#SBATCH --account={opts.account}"] * bool(opts.account)
    lines += [f"#SBATCH {o}" for o in opts.extra_sbatch]
    extra = "".join(f" --config {shlex.quote(c)}" for c in extra_configs)
    after = "".join(f" {shlex.quote(o)}" for o in overrides)
    lines += [
        "set -euo pipefail",
        f"cd {shlex.quote(str(repo))}",
        *([opts.setup] if opts.setup else []),
        f'CONFIG=$(sed -n "$((SLURM_ARRAY_TASK_ID + 1))p" {shlex.quote(str(list_file))})',
        'HEAD_NODE=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)',
        "PORT=$((20000 + SLURM_JOB_ID % 20000))",
        'echo "array task $SLURM_ARRAY_TASK_ID: $CONFIG on $SLURM_NNODES node(s), rendezvous $HEAD_NODE:$PORT"',
        "export OMP_NUM_THREADS=${OMP_NUM_THREADS:-8}",
        "export TORCH_NCCL_ASYNC_ERROR_HANDLING=${TORCH_NCCL_ASYNC_ERROR_HANDLING:-1}  # a dead peer fails fast",
        "# a failed rank restarts the run from its last checkpoint (--resume auto), up to MAX_RESTARTS times",
        "srun --kill-on-bad-exit=1 torchrun \\",
        '    --nnodes "$SLURM_NNODES" --nproc_per_node ' + str(opts.gpus_per_node) + ' --max-restarts "${MAX_RESTARTS:-3}" \\',
        '    --rdzv_id "$SLURM_JOB_ID" --rdzv_backend c10d --rdzv_endpoint "$HEAD_NODE:$PORT" \\',
        f'    -m {TRAIN_MODULE} --config "$CONFIG"{extra} --resume auto{after}',
    ]
    return "\n".join(lines) + "\n"


def write_slurm(points: list[SweepPoint], sweep_name: str, sweep_dir: Path, opts: SlurmOptions,
                extra_configs: list[str] = (), overrides: list[str] = (), repo: Path | None = None) -> Path:
    """SWEEP/slurm/configs.txt (one config per array task) and SWEEP/slurm/sweep.sbatch; returns the script."""
    slurm_dir = sweep_dir / "slurm"
    (slurm_dir / "logs").mkdir(parents=True, exist_ok=True)
    repo = (repo or Path.cwd()).resolve()
    list_file = (slurm_dir / "configs.txt").resolve()
    list_file.write_text("".join(str(Path(p.config).resolve()) + "\n" for p in points))
    script = slurm_dir / "sweep.sbatch"
    script.write_text(slurm_script(points, sweep_name, repo, list_file, (slurm_dir / "logs").resolve(), opts,
                                   extra_configs, overrides))
    script.chmod(0o755)
    return script
