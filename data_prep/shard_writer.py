"""Writer for Megatron-LM indexed shards (``.bin`` + ``.idx``); the layout is documented with the reader
in ``xlstm_pretrain/data/shard_reader.py`` (re-exported here so data_prep code has one place to import from).

Writes go to ``<prefix>.bin.tmp`` / ``<prefix>.idx.tmp``; ``commit()`` renames them into place, so a
crash never leaves a half-written file under a final name.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

import numpy as np

from xlstm_pretrain.data.shard_reader import (  # noqa: F401  (re-exported)
    CODE_FOR_DTYPE,
    INDEX_MAGIC,
    INDEX_VERSION,
    IndexedDataset,
    data_path,
    index_path,
    token_dtype_for_vocab,
)

TMP_SUFFIX = ".tmp"


class IndexedDatasetWriter:
    """Append documents (one Megatron "sequence" each), then ``finish()`` the index and ``commit()``."""

    def __init__(self, prefix: str | Path, dtype: np.dtype):
        self.prefix = str(prefix)
        self.dtype = np.dtype(dtype)
        if self.dtype not in CODE_FOR_DTYPE:
            raise ValueError(f"dtype {self.dtype} has no Megatron dtype code")
        self._lengths: list[int] = []
        self._bin = open(data_path(self.prefix) + TMP_SUFFIX, "wb")
        self._finished = False

    @property
    def num_documents(self) -> int:
        return len(self._lengths)

    @property
    def num_tokens(self) -> int:
        return sum(self._lengths)

    def add_document(self, token_ids) -> None:
        ids = np.asarray(token_ids)
        if ids.size and (ids.min() < 0 or ids.max() > np.iinfo(self.dtype).max):
            raise ValueError(f"token ids out of range for {self.dtype}: [{ids.min()}, {ids.max()}]")
        self._bin.write(ids.astype(self.dtype.newbyteorder("<"), copy=False).tobytes())
        self._lengths.append(int(ids.size))

    def finish(self) -> None:
        """Close ``.bin.tmp`` and write ``.idx.tmp`` (both flushed to disk)."""
        self._bin.flush()
        os.fsync(self._bin.fileno())
        self._bin.close()
        write_index(index_path(self.prefix) + TMP_SUFFIX, self.dtype, self._lengths)
        self._finished = True

    def commit(self) -> None:
        """Atomically move the finished temp files to their final names (``.bin`` first: a reader
        needs both, and a leftover ``.bin`` without a matching ``.idx`` is simply redone)."""
        if not self._finished:
            raise RuntimeError("finish() before commit()")
        os.replace(data_path(self.prefix) + TMP_SUFFIX, data_path(self.prefix))
        os.replace(index_path(self.prefix) + TMP_SUFFIX, index_path(self.prefix))

    def discard(self) -> None:
        """Instead of ``commit()`` for a shard that came out empty: leave no files under its name (also
        none from an earlier run), since Megatron-LM and gpt-neox cannot mmap a 0-byte ``.bin``."""
        self.abort()
        for path in (index_path(self.prefix), data_path(self.prefix)):  # .idx first: never an .idx without .bin
            if os.path.exists(path):
                os.remove(path)

    def abort(self) -> None:
        if not self._bin.closed:
            self._bin.close()
        for path in (data_path(self.prefix) + TMP_SUFFIX, index_path(self.prefix) + TMP_SUFFIX):
            if os.path.exists(path):
                os.remove(path)


def write_index(path: str, dtype: np.dtype, sequence_lengths: list[int]) -> None:
    """Write a Megatron ``.idx`` for one-sequence-per-document data."""
    if sequence_lengths and max(sequence_lengths) >= 2**31:
        raise ValueError("a document is longer than 2**31 tokens; Megatron's index stores int32 lengths")
    lengths = np.asarray(sequence_lengths, dtype="<i4")
    pointers = np.zeros(len(lengths), dtype="<i8")
    if len(lengths):
        pointers[1:] = np.cumsum(lengths[:-1], dtype=np.int64) * np.dtype(dtype).itemsize
    document_indices = np.arange(len(lengths) + 1, dtype="<i8")
    with open(path, "wb") as f:
        f.write(INDEX_MAGIC)
        f.write(struct.pack("<Q", INDEX_VERSION))
        f.write(struct.pack("<B", CODE_FOR_DTYPE[np.dtype(dtype)]))
        f.write(struct.pack("<Q", len(lengths)))
        f.write(struct.pack("<Q", len(document_indices)))
        f.write(lengths.tobytes())
        f.write(pointers.tobytes())
        f.write(document_indices.tobytes())
        f.flush()
        os.fsync(f.fileno())
