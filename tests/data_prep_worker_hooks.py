"""Stand-ins for ``data_prep.pipeline._run_job_in_worker`` used by tests/test_data_prep_workers.py.

The test's child process replaces the pipeline's worker function with one of these; spawned worker
processes import this module (the parent's sys.path travels with spawn) and run it for every job.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from data_prep import pipeline

KILLED_JOB = "train_00001"


def die_after_first_job_finished(job):
    """Job train_00001 waits until train_00000 has its progress record, then SIGKILLs its own worker
    (what the out-of-memory killer does) where tokenizing would start; every other job runs normally."""
    if job.name == KILLED_JOB:
        pipeline.run_job = _wait_for_first_job_then_die  # in this worker process only
    return pipeline._run_job_in_worker(job)


def _wait_for_first_job_then_die(job, settings, report=None):
    record = Path(settings.output_dir) / "progress" / "train_00000.json"
    deadline = time.monotonic() + 60
    while not record.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    os.kill(os.getpid(), signal.SIGKILL)


def block_after_writing_pid(job):
    """Leave the worker's pid in $DATA_PREP_TEST_PID_DIR and stay busy (bounded) as a long job would."""
    pid_dir = Path(os.environ["DATA_PREP_TEST_PID_DIR"])
    (pid_dir / f"{os.getpid()}.tmp").write_text(job.name)
    os.replace(pid_dir / f"{os.getpid()}.tmp", pid_dir / str(os.getpid()))
    time.sleep(60)
    return pipeline._run_job_in_worker(job)


def raise_in_second_job(job):
    """Job train_00001 fails with an ordinary exception; the others run normally (but slowly)."""
    if job.name == KILLED_JOB:
        raise RuntimeError(f"simulated failure in {job.name}")
    time.sleep(60)
    return pipeline._run_job_in_worker(job)
