"""Plan the shard jobs of a run, run them on worker processes with a progress bar, write the manifest.

Plan: train inputs in the order given (folders expanded and sorted) are cut into jobs of
``files_per_shard`` consecutive files; hub streams into jobs of ``records_per_shard`` consecutive
records. Job k of a split writes ``<split>_<k:05d>``; with a validation fraction, its held-out
documents go to ``val_<k:05d>``. Jobs are independent, so any number of workers produces the same bytes.

Workers are processes: a worker that dies (e.g. SIGKILL from the out-of-memory killer) fails the run at
once with ``WorkerDied`` naming its job(s); finished jobs are kept, so a rerun resumes. Workers die with
the parent process (Linux: PR_SET_PDEATHSIG; elsewhere a parent-pid watchdog thread), so a killed run
leaves no worker writing files that the rerun deletes.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import multiprocessing
import os
import shutil
import signal
import sys
import threading
import time
from collections import deque
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Iterable, Iterator

from tqdm import tqdm

from data_prep.manifest import MANIFEST_NAME, build_manifest, format_summary, write_manifest
from data_prep.readers import InputError, find_input_files, hub_reader, hub_source_name, iter_hub_records
from data_prep.shard_jobs import (
    PROGRESS_DIR,
    InputsChanged,
    OutputConflict,
    PrepSettings,
    ShardJob,
    read_finished,
    run_job,
)
from data_prep.tokenizer_info import DEFAULT_EOD_TOKEN, describe_tokenizer


@dataclass
class PrepOptions:
    output_dir: str
    tokenizer: str  # path of a tokenizer.json
    eod_token: str = DEFAULT_EOD_TOKEN
    inputs: list[str] = field(default_factory=list)  # local train files/folders
    validation_inputs: list[str] = field(default_factory=list)  # local validation files/folders
    hf_dataset: str | None = None  # hub train source: name (or a builder such as "json") ...
    hf_config: str | None = None
    hf_split: str = "train"
    hf_validation_split: str | None = None  # ... and optionally its validation split
    hf_data_files: list[str] | None = None
    hf_max_records: int | None = None  # stop each hub stream after this many records
    set_names: list[str] | None = None  # keep only these meta.redpajama_set_name values
    validation_fraction: float = 0.0
    split_seed: int = 1234
    files_per_shard: int = 16
    records_per_shard: int = 100_000
    workers: int = field(default_factory=lambda: os.cpu_count() or 1)
    overwrite: bool = False
    redo_changed: bool = False  # redo finished jobs whose input files changed since (else an error)
    progress: bool = True


@dataclass
class PrepResult:
    manifest: dict
    jobs_run: int
    jobs_skipped: int

    def summary(self) -> str:
        return format_summary(self.manifest, self.jobs_run, self.jobs_skipped)


def check_options(o: PrepOptions) -> None:
    if not o.inputs and not o.hf_dataset:
        raise InputError("no input: give --input files/folders and/or --hf-dataset")
    if not 0.0 <= o.validation_fraction < 1.0:
        raise InputError(f"--validation-fraction must be in [0, 1), got {o.validation_fraction}")
    if o.validation_fraction > 0 and (o.validation_inputs or o.hf_validation_split):
        raise InputError(
            "choose one validation split: --validation-fraction (held-out documents) or "
            "--validation-input / --hf-validation-split (separate validation data)"
        )
    if o.hf_validation_split and not o.hf_dataset:
        raise InputError("--hf-validation-split needs --hf-dataset")
    for name in ("files_per_shard", "records_per_shard", "workers"):
        if getattr(o, name) < 1:
            raise InputError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(o, name)}")


# --------------------------------------------------------------------------------------------------
# Planning
# --------------------------------------------------------------------------------------------------


class WorkerDied(RuntimeError):
    """A worker process ended without finishing its job (killed by a signal, e.g. the OOM killer)."""


def plan_file_jobs(paths: list[str], split: str, files_per_shard: int, hold_out: bool) -> list[ShardJob]:
    files = find_input_files(paths, refuse_heldout_folders=split == "train")
    jobs = []
    for k, start in enumerate(range(0, len(files), files_per_shard)):
        jobs.append(
            ShardJob(
                name=f"{split}_{k:05d}",
                split=split,
                files=files[start : start + files_per_shard],
                heldout_name=f"val_{k:05d}" if hold_out else None,
            )
        )
    return jobs


def plan_hub_jobs(o: PrepOptions, settings: PrepSettings, split: str, hub_split: str, first_index: int) -> Iterator[ShardJob]:
    """Jobs over consecutive record ranges of a hub stream. A finished job's records are read past, not
    kept (the stream has to be read in order either way)."""
    source = hub_source_name(o.hf_dataset, hub_split, o.hf_config)
    records = iter_hub_records(o.hf_dataset, hub_split, o.hf_config, o.hf_data_files)
    if o.hf_max_records is not None:
        records = islice(records, o.hf_max_records)
    k = 0
    while True:
        index = first_index + k
        job = ShardJob(
            name=f"{split}_{index:05d}",
            split=split,
            hub_source=source,
            first_record=k * o.records_per_shard,
            records_per_job=o.records_per_shard,
            hub_reader=hub_reader(o.hf_dataset, hub_split, o.hf_data_files),
            heldout_name=f"val_{index:05d}" if split == "train" and o.validation_fraction > 0 else None,
        )
        chunk = islice(records, o.records_per_shard)
        if read_finished(job, settings) is not None:
            if sum(1 for _ in chunk) == 0:
                return
        else:
            job.records = list(chunk)
            if not job.records:
                return
        yield job
        k += 1


# --------------------------------------------------------------------------------------------------
# Running
# --------------------------------------------------------------------------------------------------

_worker_settings: PrepSettings | None = None
_worker_queue = None


def _init_worker(settings: PrepSettings, messages, parent_pid: int) -> None:
    global _worker_settings, _worker_queue
    _die_with_parent(parent_pid)
    # Each worker process tokenizes one document batch at a time; the Rust tokenizer's own thread pool
    # would oversubscribe the cores that the other workers already use.
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    _worker_settings, _worker_queue = settings, messages


def _die_with_parent(parent_pid: int) -> None:
    """End this worker when the run's main process ends, however it ends (SIGKILL included): an
    orphaned worker would go on writing .tmp files that a rerun deletes, then commit its shard."""
    PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) == 0:
            if os.getppid() != parent_pid:  # the parent died before the signal was armed
                os._exit(1)
            return
    threading.Thread(target=_exit_when_orphaned, args=(parent_pid,), daemon=True, name="parent-watchdog").start()


def _exit_when_orphaned(parent_pid: int, poll_s: float = 1.0) -> None:
    while os.getppid() == parent_pid:
        time.sleep(poll_s)
    os._exit(1)


def _run_job_in_worker(job: ShardJob) -> dict:
    _worker_queue.put(("started", job.name))
    return run_job(job, _worker_settings, report=lambda docs, tokens: _worker_queue.put(("progress", docs, tokens)))


class _Progress:
    """tqdm bar over documents with tokens/s and shard counts."""

    def __init__(self, enabled: bool, total_jobs: int | None):
        self.bar = tqdm(unit=" docs", unit_scale=True, disable=not enabled, dynamic_ncols=True, desc="tokenizing")
        self.total_jobs, self.done, self.tokens, self.start = total_jobs, 0, 0, time.perf_counter()

    def add(self, docs: int, tokens: int) -> None:
        self.tokens += tokens
        self.bar.update(docs)
        self._postfix()

    def job_done(self) -> None:
        self.done += 1
        self._postfix()

    def _postfix(self) -> None:
        rate = self.tokens / max(time.perf_counter() - self.start, 1e-9)
        self.bar.set_postfix_str(f"{rate:,.0f} tokens/s, shards {self.done}/{self.total_jobs or '?'}", refresh=False)

    def close(self) -> None:
        self.bar.close()


def _run_jobs(
    jobs: Iterable[ShardJob], settings: PrepSettings, workers: int, progress: _Progress, known: dict[str, dict | None]
) -> tuple[list[dict], int]:
    """Run the jobs that are not finished yet; returns (the record of every job in plan order, #run).
    ``known``: jobs already checked for a finished record (name -> record or None)."""
    records: dict[str, dict] = {}
    order: list[str] = []
    todo: Iterator[ShardJob] = _unfinished(jobs, settings, records, order, progress, known)
    ran = 0
    if workers == 1:  # in-process: simplest to debug, and the Rust tokenizer may use every core itself
        for job in todo:
            records[job.name] = run_job(job, settings, report=progress.add)
            progress.job_done()
            ran += 1
    else:
        ran = _run_in_worker_processes(todo, settings, workers, progress, records)
    return [records[name] for name in order], ran


def _unfinished(jobs, settings, records, order, progress, known) -> Iterator[ShardJob]:
    for job in jobs:
        order.append(job.name)
        finished = known[job.name] if job.name in known else read_finished(job, settings)
        if finished is not None:
            records[job.name] = finished
            progress.job_done()
        else:
            yield job


def _run_in_worker_processes(
    todo: Iterator[ShardJob], settings: PrepSettings, workers: int, progress: _Progress, records: dict
) -> int:
    ctx = multiprocessing.get_context("spawn")  # no fork: safe with the tokenizer's threads
    # A SimpleQueue's put() writes to the pipe before it returns (a Queue's feeder thread may not get to
    # it before a kill), so the parent always knows which jobs a dead worker had started.
    messages = ctx.SimpleQueue()
    started: set[str] = set()
    pending: deque[tuple[ShardJob, Future]] = deque()
    executor: ProcessPoolExecutor | None = None
    ran = 0
    try:
        for job in todo:
            if executor is None:  # started on the first unfinished job: a fully resumed run starts no process
                executor = ProcessPoolExecutor(
                    workers, mp_context=ctx, initializer=_init_worker, initargs=(settings, messages, os.getpid())
                )
            pending.append((job, executor.submit(_run_job_in_worker, job)))
            while len(pending) >= 2 * workers:  # bounded: hub jobs carry their records
                ran += _collect_first(pending, records, messages, progress, started)
        while pending:
            ran += _collect_first(pending, records, messages, progress, started)
        _drain(messages, progress, started)
    except BaseException:
        if executor is not None:
            _stop_workers(executor)
        raise
    if executor is not None:
        executor.shutdown(wait=True)
    return ran


def _collect_first(pending: deque, records: dict, messages, progress: _Progress, started: set[str]) -> int:
    """Wait for the oldest pending job and take its record; a failure of any pending job ends the wait
    (the records are kept in plan order, but an error must not wait for a long job before it)."""
    job, future = pending[0]
    while not future.done():
        got_messages = _drain(messages, progress, started)
        for other_job, other in pending:
            if other.done() and other.exception() is not None:
                _result(other_job, other, pending, started)  # raises
        if not got_messages:
            time.sleep(0.05)
    _drain(messages, progress, started)  # the "started" messages of a worker that died meanwhile
    records[job.name] = _result(job, future, pending, started)
    pending.popleft()
    progress.job_done()
    return 1


def _result(job: ShardJob, future: Future, pending: deque, started: set[str]) -> dict:
    try:
        return future.result()  # re-raises a worker's exception here
    except BrokenProcessPool:
        raise WorkerDied(_worker_death_message([j for j, _ in pending], started)) from None


def _worker_death_message(unfinished: list[ShardJob], started: set[str]) -> str:
    running = [j for j in unfinished if j.name in started] or unfinished
    described = "; ".join(f"{j.name} ({_describe_inputs(j)})" for j in running)
    return (
        f"a worker process died while running job(s) {described}. It was killed by a signal: usually SIGKILL "
        "from the out-of-memory killer (see `dmesg`). Shards finished so far are kept: rerun the same command "
        "to resume (with fewer --workers if memory ran out)"
    )


def _describe_inputs(job: ShardJob) -> str:
    if job.hub_source is not None:
        return f"{job.hub_source} records {job.first_record + 1}-{job.first_record + job.records_per_job}"
    shown = ", ".join(f.key for f in job.files[:3])
    return f"input files {shown}" + (f" and {len(job.files) - 3} more" if len(job.files) > 3 else "")


def _stop_workers(executor: ProcessPoolExecutor) -> None:
    """Stop running jobs now (after an error or Ctrl-C): their .tmp files are deleted by the rerun."""
    terminate = getattr(executor, "terminate_workers", None)  # Python >= 3.14
    if terminate is not None:
        terminate()
        return
    # Before 3.14 the executor cannot stop running jobs; shutdown() would wait for them to finish.
    processes = list((getattr(executor, "_processes", None) or {}).values())
    for process in processes:
        process.terminate()
    executor.shutdown(wait=False, cancel_futures=True)
    for process in processes:
        process.join(timeout=10)


def _drain(messages, progress: _Progress, started: set[str]) -> bool:
    """Take the workers' messages that have arrived; True if there were any."""
    got = False
    while not messages.empty():
        message = messages.get()
        got = True
        if message[0] == "started":
            started.add(message[1])
        else:
            progress.add(message[1], message[2])
    return got


def _finished_local_jobs(jobs: list[ShardJob], settings: PrepSettings, redo_changed: bool) -> dict[str, dict | None]:
    """The finished record (or None) of every local job, checked before any work starts, so that all jobs
    with changed input files are named in one ``InputsChanged`` error."""
    known: dict[str, dict | None] = {}
    changes: dict[str, list[str]] = {}
    for job in jobs:
        try:
            known[job.name] = read_finished(job, settings, redo_changed)
        except InputsChanged as e:
            changes.update(e.changes)
    if changes:
        raise InputsChanged(settings.output_dir, changes)
    return known


# --------------------------------------------------------------------------------------------------
# The whole run
# --------------------------------------------------------------------------------------------------


LOCK_NAME = ".data_prep.lock"


@contextlib.contextmanager
def _output_lock(output_dir: Path) -> Iterator[None]:
    """One run per output folder at a time: a second run would delete the first one's .tmp files and
    redo its jobs under it. The lock goes with the process (flock), so a killed run leaves none behind."""
    lock_file = open(output_dir / LOCK_NAME, "a+")
    try:
        try:
            fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock_file.seek(0)
            holder = lock_file.read().strip() or "?"
            raise OutputConflict(
                f"{output_dir} is in use by another data_prep run (pid {holder}); wait for it to end or stop it"
            ) from None
        lock_file.truncate(0)
        lock_file.write(f"{os.getpid()}\n")
        lock_file.flush()
        try:
            yield
        finally:
            lock_file.truncate(0)  # still locked here; an empty file keeps the folder's bytes run-independent
    finally:
        lock_file.close()


def _clear_output(output_dir: Path) -> None:
    """--overwrite: remove what an earlier run wrote here (only our own file names)."""
    shutil.rmtree(output_dir / PROGRESS_DIR, ignore_errors=True)
    for pattern in ("train_*.bin", "train_*.idx", "val_*.bin", "val_*.idx", "*.tmp", MANIFEST_NAME):
        for path in output_dir.glob(pattern):
            path.unlink()


def prepare(o: PrepOptions) -> PrepResult:
    """Tokenize the inputs of ``o`` into Megatron shards + manifest under ``o.output_dir``."""
    check_options(o)
    info = describe_tokenizer(o.tokenizer, o.eod_token)
    output_dir = Path(o.output_dir)
    settings = PrepSettings(
        output_dir=str(output_dir),
        tokenizer=info,
        validation_fraction=o.validation_fraction,
        split_seed=o.split_seed,
        set_names=frozenset(o.set_names) if o.set_names else None,
    )
    # Plan the local jobs first: a missing input path must fail before any work.
    hold_out = o.validation_fraction > 0
    train_jobs = plan_file_jobs(o.inputs, "train", o.files_per_shard, hold_out) if o.inputs else []
    val_jobs = plan_file_jobs(o.validation_inputs, "val", o.files_per_shard, False) if o.validation_inputs else []

    output_dir.mkdir(parents=True, exist_ok=True)
    with _output_lock(output_dir):
        return _prepare_in(output_dir, o, settings, train_jobs, val_jobs)


def _prepare_in(
    output_dir: Path, o: PrepOptions, settings: PrepSettings, train_jobs: list[ShardJob], val_jobs: list[ShardJob]
) -> PrepResult:
    """``prepare`` once the jobs are planned and the output folder is ours."""
    if o.overwrite:
        _clear_output(output_dir)
    known = _finished_local_jobs(train_jobs + val_jobs, settings, o.redo_changed)
    for stale in output_dir.glob("*.tmp"):  # a crashed run's partial files; their jobs will be redone
        stale.unlink()

    def all_jobs() -> Iterator[ShardJob]:
        yield from train_jobs
        yield from val_jobs
        if o.hf_dataset:
            yield from plan_hub_jobs(o, settings, "train", o.hf_split, len(train_jobs))
            if o.hf_validation_split:
                yield from plan_hub_jobs(o, settings, "val", o.hf_validation_split, len(val_jobs))

    known_total = None if o.hf_dataset else len(train_jobs) + len(val_jobs)
    workers = min(o.workers, known_total) if known_total else o.workers
    progress = _Progress(o.progress, known_total)
    try:
        records, ran = _run_jobs(all_jobs(), settings, max(workers, 1), progress, known)
    finally:
        progress.close()

    if o.validation_fraction > 0:
        validation = {"mode": "heldout_fraction", "fraction": o.validation_fraction, "seed": o.split_seed}
    elif o.validation_inputs or o.hf_validation_split:
        validation = {"mode": "separate_inputs", "inputs": list(o.validation_inputs), "hf_split": o.hf_validation_split}
    else:
        validation = {"mode": "none"}
    manifest = build_manifest(records, settings, validation)
    write_manifest(output_dir, manifest)
    return PrepResult(manifest, jobs_run=ran, jobs_skipped=len(records) - ran)
