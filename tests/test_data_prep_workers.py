"""data_prep worker processes: a killed worker fails the run promptly (and the run resumes), and workers
never outlive a killed parent.

Each case runs data_prep.tokenize in a child process, with its worker function replaced by a hook from
tests/data_prep_worker_hooks.py, under a timeout: without the fixes these runs hang (a dead worker's job
never completes) or leave orphaned workers behind.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from data_prep.pipeline import PrepOptions, prepare

from test_data_prep import all_bytes, corpus, tokenizer_path  # noqa: F401  (fixtures)

REPO = Path(__file__).resolve().parent.parent
TESTS = Path(__file__).resolve().parent


def cli_with_hook(hook: str, args: list[str], env: dict | None = None) -> subprocess.Popen:
    """``python -m data_prep.tokenize args`` with pipeline._run_job_in_worker replaced by ``hook``."""
    code = (
        "import sys; import data_prep_worker_hooks as hooks; from data_prep import pipeline, tokenize; "
        f"pipeline._run_job_in_worker = hooks.{hook}; sys.exit(tokenize.main(sys.argv[1:]))"
    )
    return subprocess.Popen(
        [sys.executable, "-c", code, *args], cwd=REPO,
        env={**os.environ, "PYTHONPATH": f"{TESTS}:{REPO}", **(env or {})}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def prep_args(tokenizer_path, inputs, out) -> list[str]:
    return ["--tokenizer", str(tokenizer_path), "--input", str(inputs), "--output-dir", str(out),
            "--files-per-shard", "2", "--workers", "2", "--no-progress"]


def test_killed_worker_fails_the_run_promptly_and_the_rerun_resumes(corpus, tokenizer_path, tmp_path):  # noqa: F811
    root, _ = corpus
    out = tmp_path / "killed"
    proc = cli_with_hook("die_after_first_job_finished", prep_args(tokenizer_path, root / "train", out))
    try:
        _, stderr = proc.communicate(timeout=120)  # the old pool waited forever here
    finally:
        proc.kill()
    assert proc.returncode == 1, stderr
    assert "worker process died" in stderr and "train_00001" in stderr and "train/chunk1" in stderr, stderr
    assert "Traceback" not in stderr
    finished = sorted(p.name for p in (out / "progress").glob("*.json"))
    assert "train_00000.json" in finished and "train_00001.json" not in finished

    # The rerun keeps the finished job and gives the same bytes as a clean run.
    options = dict(tokenizer=str(tokenizer_path), inputs=[str(root / "train")], files_per_shard=2, workers=1,
                   progress=False)
    resumed = prepare(PrepOptions(output_dir=str(out), **options))
    assert (resumed.jobs_skipped, resumed.jobs_run) == (len(finished), 3 - len(finished))
    prepare(PrepOptions(output_dir=str(tmp_path / "clean"), **options))
    assert all_bytes(out) == all_bytes(tmp_path / "clean")


def _alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie, waiting for whoever adopted it to reap it, counts as ended)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state not in ("Z", "X")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_workers_end_when_the_parent_is_killed(corpus, tokenizer_path, tmp_path):  # noqa: F811
    root, _ = corpus
    pid_dir = tmp_path / "pids"
    pid_dir.mkdir()
    proc = cli_with_hook("block_after_writing_pid", prep_args(tokenizer_path, root / "train", tmp_path / "out"),
                         env={"DATA_PREP_TEST_PID_DIR": str(pid_dir)})
    worker_pids: list[int] = []
    try:
        deadline = time.monotonic() + 90
        while len(worker_pids) < 2 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.1)
            worker_pids = [int(p.name) for p in pid_dir.iterdir() if p.name.isdigit()]
        assert len(worker_pids) == 2, proc.stderr.read() if proc.poll() is not None else "workers did not start"
        os.kill(proc.pid, signal.SIGKILL)  # the parent alone, as `kill -9 <pid>` or the OOM killer would
        proc.wait(timeout=30)
        deadline = time.monotonic() + 15
        while any(map(_alive, worker_pids)) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(map(_alive, worker_pids)), "workers outlived their parent"
    finally:
        proc.kill()
        for pid in worker_pids:  # the workers this test started, if the check failed
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_a_failing_job_stops_the_other_workers_at_once(corpus, tokenizer_path, tmp_path):  # noqa: F811
    root, _ = corpus
    started = time.monotonic()
    proc = cli_with_hook("raise_in_second_job", prep_args(tokenizer_path, root / "train", tmp_path / "out"))
    try:
        _, stderr = proc.communicate(timeout=50)  # not after the 60 s the other job takes
    finally:
        proc.kill()
    assert proc.returncode != 0 and "simulated failure in train_00001" in stderr
    assert time.monotonic() - started < 50
