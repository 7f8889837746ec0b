"""Fault tolerance under `torchrun --max-restarts=1` (slow tier).

- kill -9 of one rank from outside, at an arbitrary moment mid-run: torchrun restarts the job, it resumes
  from the last complete checkpoint and ends with exactly the losses of an uninterrupted run;
- a rank killed while a checkpoint is being written: the previous checkpoint is the one resumed, and the
  run again ends exactly as the uninterrupted one.
"""

import json
import os
import signal
import subprocess
import time

import psutil
import pytest

from fault_hooks import fault_env
from train_utils import REPO, TORCHRUN, metrics, output, prepare_data, tiny_overrides, torchrun, uninterrupted_run

pytestmark = pytest.mark.slow

RUN = {"parallel.tensor_parallel": 2, "train.zero_stage": 2, "train.steps": 24, "checkpoint.interval": 6,
       "checkpoint.keep_last": 2, "eval.interval": 12}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return prepare_data(tmp_path_factory.getbasetemp() / "train_data")


@pytest.fixture(scope="module")
def uninterrupted(data, tmp_path_factory):
    return uninterrupted_run(data, tmp_path_factory.mktemp("uninterrupted"), 2, RUN)


def rank_process(torchrun_pid: int, rank: int):
    for child in psutil.Process(torchrun_pid).children(recursive=True):
        try:
            if child.environ().get("RANK") == str(rank) and "xlstm_pretrain.train" in " ".join(child.cmdline()):
                return child
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return None


def test_kill_one_rank_from_outside_then_elastic_restart(data, uninterrupted, tmp_path):
    run = tmp_path / "killed"
    cmd = [TORCHRUN, "--standalone", "--nproc_per_node", "2", "--max-restarts=1", "--monitor-interval=0.5",
           "-m", "xlstm_pretrain.train", "--resume", "auto"] + tiny_overrides(data, run, **RUN)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    killed_at = None
    deadline = time.time() + 240
    while time.time() < deadline and killed_at is None:  # wait until the run is past its second checkpoint
        time.sleep(0.2)
        rows = metrics(run, "train") if (run / "metrics.jsonl").is_file() else []
        if rows and rows[-1]["step"] >= 14:
            victim = rank_process(proc.pid, rank=1)
            if victim is not None:
                victim.send_signal(signal.SIGKILL)
                killed_at = rows[-1]["step"]
    stdout, stderr = proc.communicate(timeout=300)
    assert killed_at is not None, stdout + stderr
    assert proc.returncode == 0, f"{stdout[-4000:]}\n{stderr[-4000:]}"
    import re

    resumed_at = int(re.search(r"resumed from \S+ at step (\d+)", stdout).group(1))
    assert resumed_at % 6 == 0 and 12 <= resumed_at <= killed_at  # the last checkpoint before the kill
    a, b = metrics(uninterrupted, "train"), metrics(run, "train")
    assert [r["step"] for r in b] == list(range(1, 25))
    assert [r["loss"] for r in b] == [r["loss"] for r in a]
    assert b[-1]["loss"] == a[-1]["loss"]
    assert json.loads((run / "summary.json").read_text())["step"] == 24


def test_kill_during_checkpoint_write_keeps_the_previous_one(data, uninterrupted, tmp_path):
    run = tmp_path / "killed_in_checkpoint"
    # rank 0 dies after the DeepSpeed files of step 18 are written, before the checkpoint is committed
    proc = torchrun(2, ["--resume", "auto"] + tiny_overrides(data, run, **RUN), max_restarts=1, timeout=400,
                    env=fault_env(kill_during_checkpoint_at_step=18, kill_rank=0))
    assert proc.returncode == 0, output(proc)
    assert "SIGKILL after step 18 (checkpoint)" in proc.stdout
    assert "resumed from" in proc.stdout and "step_00000012 at step 12" in proc.stdout
    a, b = metrics(uninterrupted, "train"), metrics(run, "train")
    assert [r["loss"] for r in b] == [r["loss"] for r in a]
    root = run / "checkpoints"
    assert sorted(p.name for p in root.iterdir() if p.name.startswith(("step_", ".tmp"))) == \
        ["step_00000018", "step_00000024"]  # keep_last=2, no leftovers of the interrupted write
