"""One unit of tokenization work ("job"): a fixed group of input documents -> one output shard.

A job is defined by its inputs alone (a group of consecutive input files, or a fixed range of hub
records), never by which worker runs it or when, so the output is byte-identical for any worker count.
Each job writes its shard(s) to temp files, renames them into place, and only then writes its record
``progress/<job>.json`` (counts + a fingerprint of its inputs and settings). A rerun skips a job whose
record exists, matches, and whose files have the recorded sizes; anything else is redone from scratch.

A job with no documents writes no files (a 0-byte ``.bin`` cannot be mmapped by Megatron-LM or gpt-neox);
its record says so. A job whose settings match but whose input files changed since (size, or content
when the modification time moved) is an ``InputsChanged`` error, or is redone with ``redo_changed``.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from data_prep.readers import Document, InputFile, InputLog, document_from_record, iter_file_documents
from data_prep.shard_writer import IndexedDatasetWriter, data_path, index_path
from data_prep.tokenizer_info import TokenizerInfo, encode_documents, load_tokenizer

PROGRESS_DIR = "progress"
ENCODE_BATCH_DOCS = 256  # documents per tokenizer call: big enough to amortise the call, small in memory


@dataclass(frozen=True)
class PrepSettings:
    """Everything that decides the bytes of every shard (shared by all jobs of a run)."""

    output_dir: str
    tokenizer: TokenizerInfo
    validation_fraction: float = 0.0  # held-out share of the train inputs' documents
    split_seed: int = 1234  # which documents are held out is a hash of (seed, file key, line)
    set_names: frozenset[str] | None = None  # keep only these meta.redpajama_set_name values


@dataclass
class ShardJob:
    name: str  # "train_00003": the output prefix of its shard, and the name of its progress record
    split: str  # "train" or "val"
    files: list[InputFile] = field(default_factory=list)  # local input
    hub_source: str | None = None  # hub input: a range of records of this stream ...
    first_record: int = 0  # ... starting at this 0-based record number ...
    records: list[dict] | None = None  # ... carried in the job (None when the job is already done)
    records_per_job: int = 0
    hub_reader: str | None = None  # readers.LINE_READER when data_prep reads the hub source's lines itself
    heldout_name: str | None = None  # "val_00003": where held-out documents of a train job go

    def output_names(self) -> list[str]:
        return [self.name] + ([self.heldout_name] if self.heldout_name else [])

    def fingerprint(self, settings: PrepSettings) -> str:
        """Hash of everything that decides this job's output bytes (input file names and sizes included)."""
        return self._hash(settings, [(f.key, os.path.getsize(f.path)) for f in self.files])

    def settings_fingerprint(self, settings: PrepSettings) -> str:
        """The same, less the input files: equal when only the files changed (e.g. re-downloaded)."""
        return self._hash(settings, None)

    def _hash(self, settings: PrepSettings, files: list | None) -> str:
        hub = [self.hub_source, self.first_record, self.records_per_job] if self.hub_source else None
        if hub and self.hub_reader:  # only then: keeps the fingerprints of earlier datasets-read hub jobs
            hub.append(self.hub_reader)
        spec = {
            "name": self.name,
            "split": self.split,
            "inputs": {"files": files, "hub": hub},
            "heldout": [self.heldout_name, settings.validation_fraction, settings.split_seed],
            "tokenizer_sha256": settings.tokenizer.sha256,
            "eod_id": settings.tokenizer.eod_id,
            "dtype": settings.tokenizer.dtype,
            "set_names": sorted(settings.set_names) if settings.set_names is not None else None,
        }
        return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()


class OutputConflict(Exception):
    """The output folder holds a finished shard made from other inputs or settings."""


class InputsChanged(OutputConflict):
    """Finished shards were made from input files that changed since (same settings)."""

    def __init__(self, output_dir: str, changes: dict[str, list[str]]):
        shown = [f"{job}: {', '.join(files)}" for job, files in list(changes.items())[:10]]
        more = f"\n  ... and {len(changes) - 10} more job(s)" if len(changes) > 10 else ""
        super().__init__(
            f"{output_dir}: {len(changes)} finished shard(s) were made from input files that changed since "
            f"(e.g. re-downloaded):\n  " + "\n  ".join(shown) + more + "\nRerun with --redo-changed to "
            "re-tokenize just those jobs (or --overwrite to redo everything)"
        )
        self.changes = changes


# --------------------------------------------------------------------------------------------------
# Progress records (the "done" markers)
# --------------------------------------------------------------------------------------------------


def progress_path(settings: PrepSettings, job_name: str) -> Path:
    return Path(settings.output_dir) / PROGRESS_DIR / f"{job_name}.json"


def read_finished(job: ShardJob, settings: PrepSettings, redo_changed: bool = False) -> dict | None:
    """The job's record if it finished under the same inputs and settings and its files are intact;
    None if it has to be (re)done. Other settings: ``OutputConflict``. Changed input files:
    ``InputsChanged``, or (``redo_changed``) its record is removed and None returned."""
    path = progress_path(settings, job.name)
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None  # a damaged record: redo the job
    mtimes_before = [f["mtime_ns"] for f in record.get("input_files", [])]
    changed = changed_inputs(job, settings, record)
    if not changed and mtimes_before != [f["mtime_ns"] for f in record.get("input_files", [])]:
        _write_record(path, record)  # files moved but unchanged: keep their new times
    if changed:
        if not redo_changed:
            raise InputsChanged(settings.output_dir, {job.name: changed})
        path.unlink()  # a crash while redoing must not leave the old record next to new files
        return None
    itemsize = np.dtype(settings.tokenizer.dtype).itemsize
    for out in record["outputs"]:
        prefix = Path(settings.output_dir) / out["name"]
        if out["num_documents"] == 0:
            remove_shard_files(prefix)  # an empty shard has no files (earlier versions wrote a 0-byte .bin)
            continue
        bin_file, idx_file = Path(data_path(prefix)), Path(index_path(prefix))
        if not (idx_file.is_file() and bin_file.is_file()) or bin_file.stat().st_size != out["num_tokens"] * itemsize:
            return None  # a file went missing or is damaged: redo the job
    return record


def remove_shard_files(prefix: Path) -> None:
    for path in (Path(index_path(prefix)), Path(data_path(prefix))):  # .idx first: never an .idx without .bin
        path.unlink(missing_ok=True)


def changed_inputs(job: ShardJob, settings: PrepSettings, record: dict) -> list[str]:
    """The input files of ``job`` that differ from those its record was made from ([] if none). Raises
    ``OutputConflict`` if the record was made with other settings."""
    if record.get("fingerprint") != job.fingerprint(settings):
        if record.get("settings_fingerprint") != job.settings_fingerprint(settings):
            raise OutputConflict(
                f"{settings.output_dir} already holds shard {job.name} made from other inputs or settings "
                f"(see {progress_path(settings, job.name)}); use a new --output-dir, or --overwrite to replace "
                "everything there"
            )
        recorded = [(f["key"], f["size"]) for f in record["input_files"]]
        now = [(f.key, os.path.getsize(f.path)) for f in job.files]
        differing = sorted({key for key, _ in set(recorded) ^ set(now)})
        return differing or [key for key, _ in now]  # the same files, in another order
    # Same names and sizes: the content may still differ (a re-downloaded file with a fixed bit flip).
    # Hash only files whose modification time moved; records of older versions have no hashes.
    by_key = {f["key"]: f for f in record.get("input_files", [])}
    return [f.key for f in job.files if f.key in by_key and _content_changed(f, by_key[f.key])]


def _content_changed(input_file: InputFile, before: dict) -> bool:
    """Whether a file of the recorded size has other content than recorded. A file whose modification
    time moved but whose content is the same (e.g. copied to another disk) gets the new time in
    ``before``, so that later runs do not hash it again."""
    mtime_ns = os.stat(input_file.path).st_mtime_ns
    if mtime_ns == before["mtime_ns"]:
        return False
    if file_sha256(input_file.path) != before["sha256"]:
        return True
    before["mtime_ns"] = mtime_ns
    return False


def file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def describe_input_files(files: list[InputFile]) -> list[dict]:
    """What a job's record keeps of its input files, to tell later whether they changed."""
    described = []
    for f in files:
        stat = os.stat(f.path)
        described.append(
            {"key": f.key, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": file_sha256(f.path)}
        )
    return described


def _write_record(path: Path, record: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(record, indent=1))
    os.replace(tmp, path)


# --------------------------------------------------------------------------------------------------
# Running a job
# --------------------------------------------------------------------------------------------------


def is_held_out(key: str, line: int, fraction: float, seed: int) -> bool:
    """Deterministic Bernoulli(fraction) per document: independent of worker count, shard grouping and
    machine (a keyed hash of the file key and line, not Python's salted ``hash``)."""
    if fraction <= 0:
        return False
    digest = hashlib.blake2b(f"{key}:{line}".encode(), digest_size=8, key=str(seed).encode()).digest()
    return int.from_bytes(digest, "little") < fraction * 2**64


def _job_documents(job: ShardJob, settings: PrepSettings, log: InputLog):
    if job.hub_source is not None:
        for i, record in enumerate(job.records or []):
            line = job.first_record + i + 1
            doc = document_from_record(record, job.hub_source, line, log, settings.set_names)
            if doc is not None:
                yield doc
    else:
        for input_file in job.files:
            yield from iter_file_documents(input_file, log, settings.set_names)


def run_job(job: ShardJob, settings: PrepSettings, report: Callable[[int, int], None] | None = None) -> dict:
    """Tokenize the job's documents into its shard(s), commit them, write and return its record.
    ``report(documents, tokens)`` is called after each tokenizer batch (for the progress bar)."""
    info = settings.tokenizer
    tokenizer = load_tokenizer(info.path)
    out_dir = Path(settings.output_dir)
    writers = {name: IndexedDatasetWriter(out_dir / name, np.dtype(info.dtype)) for name in job.output_names()}
    log = InputLog()
    sources: dict[str, Counter] = {}
    set_names: dict[str, Counter] = {}

    def write_batch(batch: list[Document]) -> None:
        tokens = 0
        for doc, ids in zip(batch, encode_documents(tokenizer, [d.text for d in batch], info.eod_id)):
            held_out = job.heldout_name is not None and is_held_out(
                doc.source, doc.line, settings.validation_fraction, settings.split_seed
            )
            writers[job.heldout_name if held_out else job.name].add_document(ids)
            prefix = "heldout_" if held_out else ""
            for counter in (sources[doc.source], set_names.setdefault(str(doc.set_name), Counter())):
                counter[prefix + "documents"] += 1
                counter[prefix + "tokens"] += len(ids)
            tokens += len(ids)
        if report is not None:
            report(len(batch), tokens)

    input_files = describe_input_files(job.files)  # before reading: a file replaced meanwhile looks changed
    try:
        for source in [f.key for f in job.files] or [job.hub_source]:
            sources[source] = Counter()  # every input is listed, even one with no valid document
        batch: list[Document] = []
        for doc in _job_documents(job, settings, log):
            batch.append(doc)
            if len(batch) == ENCODE_BATCH_DOCS:
                write_batch(batch)
                batch = []
        if batch:
            write_batch(batch)
        for writer in writers.values():
            writer.finish()
    except BaseException:
        for writer in writers.values():
            writer.abort()
        raise
    for writer in writers.values():
        if writer.num_documents:
            writer.commit()
        else:
            writer.discard()  # no 0-byte .bin: Megatron-LM and gpt-neox cannot mmap one

    record = {
        "job": job.name,
        "fingerprint": job.fingerprint(settings),
        "settings_fingerprint": job.settings_fingerprint(settings),
        "input_files": input_files,
        "outputs": [
            {
                "name": name,
                "split": "val" if name == job.heldout_name else job.split,
                "num_documents": w.num_documents,
                "num_tokens": w.num_tokens,
            }
            for name, w in writers.items()
        ],
        "sources": {k: _counts(c) for k, c in sources.items()},
        "source_paths": {f.key: f.path for f in job.files},
        "set_names": {k: _counts(c) for k, c in sorted(set_names.items())},
        "input_log": log.to_dict(),
    }
    _write_record(progress_path(settings, job.name), record)  # last: the job counts as done from here
    return record


def _counts(c: Counter) -> dict:
    keys = ("documents", "tokens", "heldout_documents", "heldout_tokens")
    return {k: c.get(k, 0) for k in keys}
