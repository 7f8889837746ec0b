"""Fault injection for the fault-tolerance tests, as trainer hooks (xlstm_pretrain/train/hooks.py).

A test passes ``env=fault_env(kill_at_step=13, kill_rank=1)`` to the process it starts; every rank then
installs ``install`` through ``XLSTM_TRAIN_HOOKS`` and reads the faults from ``XLSTM_TEST_FAULTS`` (JSON):

    nonfinite_at_steps   [steps]  the loss of every micro-batch of these steps is NaN (all ranks)
    kill_at_step         step     SIGKILL rank ``kill_rank`` right after this step ...
    kill_during_checkpoint_at_step  step  ... or once its files of this step's checkpoint are written,
                                  before the checkpoint is committed
    kill_rank            rank     (default 0)
    only_first_attempt   bool     kill only when TORCHELASTIC_RESTART_COUNT is 0, so that a restart
                                  completes (default true)
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

FAULTS_ENV = "XLSTM_TEST_FAULTS"
KNOWN = {"nonfinite_at_steps", "kill_at_step", "kill_during_checkpoint_at_step", "kill_rank", "only_first_attempt"}


def fault_env(**faults) -> dict[str, str]:
    """Environment variables that make a trainer process (and all its ranks) inject ``faults``."""
    unknown = set(faults) - KNOWN
    if unknown:
        raise ValueError(f"unknown faults {sorted(unknown)}; known: {sorted(KNOWN)}")
    return {"XLSTM_TRAIN_HOOKS": f"{Path(__file__).resolve()}:install", FAULTS_ENV: json.dumps(faults)}


def install(hooks) -> None:
    faults = json.loads(os.environ.get(FAULTS_ENV, "{}"))
    rank = int(os.environ.get("RANK", 0))
    nonfinite = set(faults.get("nonfinite_at_steps", []))
    if nonfinite:
        hooks.micro_batch_loss.append(lambda step, loss: loss * float("nan") if step in nonfinite else loss)
    for where, key, point in (("step", "kill_at_step", hooks.after_step),
                              ("checkpoint", "kill_during_checkpoint_at_step", hooks.checkpoint_written)):
        at = faults.get(key)
        if at is not None and rank == faults.get("kill_rank", 0):
            point.append(_killer(at, where, rank, faults.get("only_first_attempt", True)))


def _killer(at: int, where: str, rank: int, only_first_attempt: bool):
    def kill(step: int, *_) -> None:
        if step != at or (only_first_attempt and os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") != "0"):
            return
        print(f"[fault] rank {rank}: SIGKILL after step {step} ({where})", flush=True)
        sys.stderr.flush()
        os.kill(os.getpid(), signal.SIGKILL)

    return kill
