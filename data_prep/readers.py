"""Reading SlimPajama-layout documents, counting (never crashing on) bad input.

Local input: ``*.jsonl`` and ``*.jsonl.zst`` files, or folders searched recursively for them, one JSON
object per line: ``{"text": ..., "meta": {"redpajama_set_name": ...}}``. Hub input: any Hugging Face
``datasets`` source with the same fields, streamed.

A bad line is skipped and counted under one reason (``BAD_INPUT_REASONS``); the first few of each reason
are kept with ``file:line`` for the report. A truncated or corrupt ``.zst`` keeps every complete line
before the damage: it is decoded in small pieces, so only the damaged zstd block is lost. A missing or
unreadable input path is an ``InputError`` before any work starts.

The ``json`` builder of the hub path (``--hf-dataset json --hf-data-files a.jsonl``) on local files is
read by this module too (``iter_json_records``), so its bad lines are counted like local files' lines
instead of stopping the run inside pyarrow.
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

import zstandard

BAD_INPUT_REASONS = (
    "malformed_json",  # not parseable as JSON, or not a JSON object
    "missing_text",  # no "text" field, or it is not a string
    "empty_document",  # "text" is empty or whitespace only
    "invalid_utf8",  # the line is not valid UTF-8 (or "text" holds an unpaired surrogate escape)
    "blank_line",  # an empty line between records
    "truncated_zst",  # the .zst stream ends mid-frame (an interrupted download)
    "corrupt_zst",  # the .zst decoder rejected the data
    "empty_file",  # a 0-byte input file (e.g. a download that never started)
)
INPUT_SUFFIXES = (".jsonl", ".jsonl.zst")
EXAMPLES_PER_REASON = 5
# Folder names of held-out splits (SlimPajama: validation/, test/). Train input must not include them.
HELDOUT_FOLDER_NAMES = frozenset({"validation", "valid", "val", "test"})
# Compressed bytes fed to the zstd decoder per call: a decode error loses the output of the failing call,
# so small pieces keep every block decoded before the damaged one (a 1 MiB piece spans many blocks).
ZSTD_PIECE_SIZE = 1024


class InputError(Exception):
    """An input path is missing, unreadable, or holds no input files: the run cannot start."""


@dataclass(frozen=True)
class InputFile:
    path: str  # absolute path, to open
    key: str  # stable name for reports and held-out hashing: the path below (and including) the input folder


@dataclass
class Document:
    text: str
    source: str  # InputFile.key, or "hf:<name>:<split>"
    line: int  # 1-based line of the (decompressed) file, or 1-based record number of a hub stream
    set_name: str | None  # meta.redpajama_set_name


@dataclass
class InputLog:
    """Per-reason counts of skipped lines, the first few of each with file and line, and filter skips."""

    counts: Counter = field(default_factory=Counter)
    examples: list[dict] = field(default_factory=list)  # {"reason", "source", "line", "detail"}
    filtered: int = 0  # valid documents skipped by the redpajama_set_name filter (not bad input)

    def skip(self, reason: str, source: str, line: int, detail: str = "") -> None:
        assert reason in BAD_INPUT_REASONS, reason
        self.counts[reason] += 1
        if self.counts[reason] <= EXAMPLES_PER_REASON:
            self.examples.append({"reason": reason, "source": source, "line": line, "detail": detail})

    def merge(self, other: "InputLog") -> None:
        """Add another log (of a later shard): counts add up, examples stay the first few per reason."""
        for example in other.examples:
            if sum(e["reason"] == example["reason"] for e in self.examples) < EXAMPLES_PER_REASON:
                self.examples.append(example)
        self.counts.update(other.counts)
        self.filtered += other.filtered

    def to_dict(self) -> dict:
        return {
            "counts": {r: self.counts.get(r, 0) for r in BAD_INPUT_REASONS},
            "examples": list(self.examples),
            "filtered_documents": self.filtered,
        }

    @classmethod
    def from_dict(cls, d: dict) -> "InputLog":
        return cls(Counter({k: v for k, v in d["counts"].items() if v}), list(d["examples"]), d["filtered_documents"])


@dataclass(frozen=True)
class BadLine:
    """A line that holds no record (its reason in BAD_INPUT_REASONS), in place of the record it should be."""

    reason: str
    source: str  # InputFile.key
    line: int
    detail: str = ""

    def log_to(self, log: InputLog) -> None:
        log.skip(self.reason, self.source, self.line, self.detail)


def format_example(example: dict) -> str:
    detail = f" ({example['detail']})" if example["detail"] else ""
    return f"{example['source']}:{example['line']}: {example['reason']}{detail}"


# --------------------------------------------------------------------------------------------------
# Finding input files
# --------------------------------------------------------------------------------------------------


def has_input_suffix(name: str, suffixes: Iterable[str] = INPUT_SUFFIXES) -> bool:
    return any(name.endswith(s) for s in suffixes)


def natural_sort_key(relative_path: str) -> tuple:
    """Numbers compare as numbers: chunk2 sorts before chunk10 (a plain string sort puts chunk10 first)."""
    parts = re.split(r"([0-9]+)", relative_path)
    return [int(p) if i % 2 else p for i, p in enumerate(parts)], relative_path


def _check_no_heldout_folders(folder: str, files: list[Path], root: Path) -> None:
    """Refuse a train folder that holds validation/ or test/ (e.g. SlimPajama's root): training on them
    would leak the evaluation data into the train shards."""
    folders = {part for f in files for part in f.relative_to(root).parts[:-1]}
    found = sorted(name for name in folders if name.lower() in HELDOUT_FOLDER_NAMES)
    if found:
        raise InputError(
            f"--input {folder} contains held-out split folder(s) {', '.join(f + '/' for f in found)}: training "
            f"on them would leak evaluation data. Give the train folder (e.g. {Path(folder) / 'train'}), or list "
            "the wanted folders/files explicitly (and --validation-input for validation data)"
        )


def find_input_files(
    paths: Iterable[str | Path], suffixes: tuple[str, ...] = INPUT_SUFFIXES, refuse_heldout_folders: bool = False
) -> list[InputFile]:
    """Expand files and folders (recursively, in natural order) into input files, in the order given.
    ``refuse_heldout_folders``: an ``InputError`` if a folder holds validation/ or test/ subfolders."""
    found: list[InputFile] = []
    seen: dict[str, str] = {}
    for given in paths:
        p = Path(given)
        if not p.exists():
            raise InputError(f"input path does not exist: {given}")
        if not os.access(p, os.R_OK | (os.X_OK if p.is_dir() else 0)):
            raise InputError(f"input path is not readable: {given}")
        if p.is_dir():
            files = sorted(
                (f for f in p.rglob("*") if f.is_file() and has_input_suffix(f.name, suffixes)),
                key=lambda f: natural_sort_key(f.relative_to(p).as_posix()),
            )
            if not files:
                raise InputError(f"no {' / '.join('*' + s for s in suffixes)} files under {given}")
            if refuse_heldout_folders:
                _check_no_heldout_folders(str(given), files, p)
            entries = [InputFile(str(f.resolve()), f"{p.resolve().name}/{f.relative_to(p).as_posix()}") for f in files]
        else:
            if not has_input_suffix(p.name, suffixes):
                raise InputError(f"unsupported input file {given}: expected {' or '.join(suffixes)}")
            entries = [InputFile(str(p.resolve()), p.name)]
        for entry in entries:
            if not os.access(entry.path, os.R_OK):
                raise InputError(f"input file is not readable: {entry.path}")
            if entry.path in seen:
                raise InputError(f"input file {entry.path} is listed twice (via {seen[entry.path]} and {given})")
            seen[entry.path] = str(given)
            found.append(entry)
    return found


# --------------------------------------------------------------------------------------------------
# Lines of a file (plain or zstd), with damage detection
# --------------------------------------------------------------------------------------------------


class DamagedStream(Exception):
    """A .zst file ended mid-frame or failed to decode, after every complete line was yielded."""

    def __init__(self, reason: str, detail: str, line: int, tail: bytes):
        super().__init__(detail)
        self.reason, self.detail, self.line, self.tail = reason, detail, line, tail


def iter_lines(path: str) -> Iterator[tuple[int, bytes]]:
    """(1-based line number, line bytes without the newline). Raises ``DamagedStream`` at the end of a
    damaged ``.zst``, carrying the incomplete last line."""
    if path.endswith(".zst"):
        yield from _split_lines(_zstd_chunks(path))
    else:
        with open(path, "rb") as f:
            for n, line in enumerate(f, start=1):
                yield n, line.rstrip(b"\n")


def _zstd_chunks(path: str, read_size: int = 1 << 20, piece_size: int = ZSTD_PIECE_SIZE) -> Iterator[bytes]:
    # stream_reader() silently returns EOF on a truncated frame, so decode frame by frame with
    # decompressobj() and check that the last frame reached its end. The decoder gets small pieces: what
    # it decoded before an error is only ours if the call that raised did not also produce it.
    decompressor = zstandard.ZstdDecompressor()
    frame = decompressor.decompressobj()
    mid_frame = False
    with open(path, "rb") as f:
        while data := f.read(read_size):
            view = memoryview(data)
            for start in range(0, len(view), piece_size):
                raw = view[start : start + piece_size]
                while raw:
                    if frame.eof:  # SlimPajama files are one frame, but concatenated frames are valid zstd
                        frame = decompressor.decompressobj()
                    try:
                        out = frame.decompress(raw)
                    except zstandard.ZstdError as e:
                        raise DamagedStream("corrupt_zst", str(e), 0, b"") from None
                    mid_frame = not frame.eof
                    if out:
                        yield out
                    raw = frame.unused_data if frame.eof else b""
    if mid_frame:
        raise DamagedStream("truncated_zst", "the compressed stream ends mid-frame", 0, b"")


def _split_lines(chunks: Iterator[bytes]) -> Iterator[tuple[int, bytes]]:
    partial: list[bytes] = []
    n = 0
    try:
        for chunk in chunks:
            lines = chunk.split(b"\n")
            if len(lines) == 1:
                partial.append(chunk)
                continue
            lines[0] = b"".join(partial) + lines[0]
            partial = [lines.pop()]
            for line in lines:
                n += 1
                yield n, line
    except DamagedStream as e:
        raise DamagedStream(e.reason, e.detail, n + 1, b"".join(partial)) from None
    tail = b"".join(partial)
    if tail:
        yield n + 1, tail


# --------------------------------------------------------------------------------------------------
# Records and documents
# --------------------------------------------------------------------------------------------------


def parse_record(raw: bytes, source: str, line: int):
    """The JSON value of one line, or a ``BadLine`` saying why there is none."""
    if not raw.strip():
        return BadLine("blank_line", source, line)
    try:
        decoded = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        return BadLine("invalid_utf8", source, line, f"byte {e.start}: {e.reason}")
    try:
        return json.loads(decoded)
    except json.JSONDecodeError as e:
        return BadLine("malformed_json", source, line, f"{e.msg} at column {e.colno}")


def iter_file_records(input_file: InputFile) -> Iterator[tuple[int, object]]:
    """(line, parsed JSON value or ``BadLine``) for every line of one local file, in order; a 0-byte file
    and the damage of a ``.zst`` come as a ``BadLine`` too."""
    if os.path.getsize(input_file.path) == 0:
        yield 0, BadLine("empty_file", input_file.key, 0, "the file is empty (0 bytes)")
        return
    try:
        for line, raw in iter_lines(input_file.path):
            yield line, parse_record(raw, input_file.key, line)
    except DamagedStream as e:
        # The incomplete last line may still be a whole record (damage right after it): keep it if so,
        # but do not also count it as malformed JSON; the damage is reported once, by its own reason.
        if e.tail.strip():
            tail = parse_record(e.tail, input_file.key, e.line)
            if not isinstance(tail, BadLine):
                yield e.line, tail
        yield e.line, BadLine(e.reason, input_file.key, e.line, f"{e.detail}; {e.line - 1} complete lines read")


def document_from_record(
    record, source: str, line: int, log: InputLog, set_names: frozenset[str] | None
) -> Document | None:
    """Validate one parsed record; None (and counted in ``log``) if it is not a usable document."""
    if isinstance(record, BadLine):
        record.log_to(log)
        return None
    if not isinstance(record, dict):
        log.skip("malformed_json", source, line, f"a JSON {type(record).__name__}, not an object")
        return None
    text = record.get("text")
    if not isinstance(text, str):
        log.skip("missing_text", source, line, "no 'text' field" if "text" not in record else "'text' is not a string")
        return None
    if not text.strip():
        log.skip("empty_document", source, line)
        return None
    try:
        text.encode("utf-8")  # JSON "\ud800" escapes decode to unpaired surrogates the tokenizer cannot take
    except UnicodeEncodeError as e:
        log.skip("invalid_utf8", source, line, f"unpaired surrogate at character {e.start}")
        return None
    meta = record.get("meta")
    set_name = meta.get("redpajama_set_name") if isinstance(meta, dict) else None
    if set_names is not None and set_name not in set_names:
        log.filtered += 1
        return None
    return Document(text, source, line, set_name)


def parse_line(raw: bytes, source: str, line: int, log: InputLog, set_names: frozenset[str] | None) -> Document | None:
    return document_from_record(parse_record(raw, source, line), source, line, log, set_names)


def iter_file_documents(
    input_file: InputFile, log: InputLog, set_names: frozenset[str] | None = None
) -> Iterator[Document]:
    """Valid documents of one local file, in line order; everything else is counted in ``log``."""
    for line, record in iter_file_records(input_file):
        doc = document_from_record(record, input_file.key, line, log, set_names)
        if doc is not None:
            yield doc


# --------------------------------------------------------------------------------------------------
# Hub streams
# --------------------------------------------------------------------------------------------------

# The fingerprint tag of hub jobs whose records come from iter_json_records (one record per line, bad
# lines included), not from the datasets library (which drops blank lines and stops at a malformed one).
LINE_READER = "data_prep-lines"


def hub_source_name(name: str, split: str, config: str | None = None) -> str:
    return f"hf:{name}" + (f"/{config}" if config else "") + f":{split}"


def hub_reader(name: str, split: str, data_files: list[str] | None) -> str | None:
    """``LINE_READER`` when the hub source is the ``json`` builder on local .jsonl/.jsonl.zst files (read
    here, bad lines counted), else None (the datasets library streams it)."""
    if name != "json" or split != "train" or not data_files:
        return None
    if all(has_input_suffix(f) and Path(f).is_file() for f in data_files):
        return LINE_READER
    return None


def iter_json_records(data_files: list[str]) -> Iterator[object]:
    """One item per line of the files, in order: the parsed JSON value, or a ``BadLine`` (which keeps its
    file and line for the report)."""
    for input_file in find_input_files(data_files):
        for _, record in iter_file_records(input_file):
            yield record


def iter_hub_records(
    name: str, split: str, config: str | None = None, data_files: list[str] | None = None
) -> Iterator[object]:
    """Raw records of a Hugging Face ``datasets`` source, streamed (nothing is downloaded up front); the
    ``json`` builder on local files is read line by line here (``hub_reader``)."""
    if hub_reader(name, split, data_files) == LINE_READER:
        yield from iter_json_records(data_files)
        return
    import datasets  # imported here: slow to import, and only the hub path needs it

    source = hub_source_name(name, split, config)
    count = 0
    try:
        for record in datasets.load_dataset(name, config, split=split, data_files=data_files, streaming=True):
            count += 1
            yield record
    except Exception as e:  # noqa: BLE001  (datasets/pyarrow/network errors have no common base class)
        # A stream cannot skip a bad record and go on; stop with a message instead of a pyarrow traceback.
        raise InputError(
            f"{source}: the datasets stream failed after record {count}: {type(e).__name__}: {e}. "
            "Shards finished so far are kept (a rerun resumes). Local .jsonl/.jsonl.zst files are read "
            "line by line, counting bad lines, with --input or --hf-dataset json --hf-data-files"
        ) from None
