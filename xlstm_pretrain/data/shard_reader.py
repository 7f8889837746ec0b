"""Memory-mapped reader for Megatron-LM's indexed dataset format (a ``.bin`` + ``.idx`` pair).

The same files are read by Megatron-LM (``megatron/core/datasets/indexed_dataset.py``) and gpt-neox
(``megatron/data/indexed_dataset.py``, ``MMapIndexedDataset``). Layout, as written by Megatron-LM's
``_IndexWriter`` (checked against its source; all integers little-endian):

``.idx``::

    9 bytes   magic  b"MMIDIDX\\x00\\x00"
    uint64    version (always 1)
    uint8     dtype code of the tokens in .bin (see DTYPE_CODES)
    uint64    sequence count  S
    uint64    document-index count D  (= number of documents + 1)
    int32[S]  sequence lengths, in tokens
    int64[S]  sequence pointers, in BYTES from the start of .bin
    int64[D]  document indices: document d is sequences [doc_idx[d], doc_idx[d+1]); doc_idx[0] == 0

``.bin``: the token ids of all sequences, concatenated, in the dtype named by the code.

Our writer (``data_prep/shard_writer.py``) stores one sequence per document, so doc_idx is 0..S; the reader
accepts the general case (several sequences per document) too.

This module needs only numpy, so data_prep and DataLoader workers can import it without torch.
"""

from __future__ import annotations

import bisect
import os
import struct
from pathlib import Path

import numpy as np

INDEX_MAGIC = b"MMIDIDX\x00\x00"
INDEX_VERSION = 1
HEADER_SIZE = len(INDEX_MAGIC) + 8 + 1 + 8 + 8  # magic, version, dtype code, two counts = 34 bytes

# Megatron-LM's DType enum (code -> numpy dtype). gpt-neox uses the same codes for the integer types.
DTYPE_CODES: dict[int, np.dtype] = {
    1: np.dtype(np.uint8),
    2: np.dtype(np.int8),
    3: np.dtype(np.int16),
    4: np.dtype(np.int32),
    5: np.dtype(np.int64),
    6: np.dtype(np.float64),
    7: np.dtype(np.float32),
    8: np.dtype(np.uint16),
}
CODE_FOR_DTYPE: dict[np.dtype, int] = {dt: code for code, dt in DTYPE_CODES.items()}

# Megatron's rule: uint16 below 65500 entries (a little headroom under 65536), else int32.
UINT16_VOCAB_LIMIT = 65500


def token_dtype_for_vocab(vocab_size: int) -> np.dtype:
    """The token dtype Megatron would choose for a vocabulary of this size."""
    return np.dtype(np.uint16) if vocab_size < UINT16_VOCAB_LIMIT else np.dtype(np.int32)


def index_path(prefix: str | Path) -> str:
    return f"{prefix}.idx"


def data_path(prefix: str | Path) -> str:
    return f"{prefix}.bin"


class IndexedDataset:
    """Read-only, memory-mapped view of one ``.bin``/``.idx`` pair ("shard").

    ``dataset[i]`` is sequence ``i`` (for our shards: document ``i``, EOD included) as a numpy view.
    ``tokens`` is the whole ``.bin`` as one flat array: the shard's token stream.
    Pickling keeps only the prefix (DataLoader workers re-map the files instead of copying them).
    """

    def __init__(self, prefix: str | Path):
        self.prefix = str(prefix)
        self._open()

    # ---- opening ------------------------------------------------------------------------------
    def _open(self) -> None:
        idx_file, bin_file = index_path(self.prefix), data_path(self.prefix)
        for path in (idx_file, bin_file):
            if not os.path.isfile(path):
                raise FileNotFoundError(f"indexed dataset file not found: {path}")
        idx_size = os.path.getsize(idx_file)
        if idx_size < HEADER_SIZE:
            raise ValueError(f"{idx_file}: {idx_size} bytes is too short for an index header")
        with open(idx_file, "rb") as f:
            magic = f.read(len(INDEX_MAGIC))
            if magic != INDEX_MAGIC:
                raise ValueError(f"{idx_file}: not a Megatron index (magic {magic!r}, expected {INDEX_MAGIC!r})")
            (version,) = struct.unpack("<Q", f.read(8))
            if version != INDEX_VERSION:
                raise ValueError(f"{idx_file}: unsupported index version {version}")
            (code,) = struct.unpack("<B", f.read(1))
            if code not in DTYPE_CODES:
                raise ValueError(f"{idx_file}: unknown dtype code {code}")
            (num_sequences,) = struct.unpack("<Q", f.read(8))
            (num_doc_entries,) = struct.unpack("<Q", f.read(8))

        self.dtype = DTYPE_CODES[code]
        self.dtype_code = code
        needed = HEADER_SIZE + 4 * num_sequences + 8 * num_sequences + 8 * num_doc_entries
        if idx_size < needed:  # larger is allowed: Megatron's multimodal indexes append int8 modes
            raise ValueError(f"{idx_file}: truncated ({idx_size} bytes, header says at least {needed})")

        idx = np.memmap(idx_file, dtype=np.uint8, mode="r")
        offset = HEADER_SIZE
        self.sequence_lengths = np.frombuffer(idx, dtype="<i4", count=num_sequences, offset=offset)
        offset += 4 * num_sequences
        self.sequence_pointers = np.frombuffer(idx, dtype="<i8", count=num_sequences, offset=offset)
        offset += 8 * num_sequences
        self.document_indices = np.frombuffer(idx, dtype="<i8", count=num_doc_entries, offset=offset)
        self._idx_mmap = idx
        if num_doc_entries and (self.document_indices[0] != 0 or self.document_indices[-1] != num_sequences):
            raise ValueError(f"{idx_file}: document indices must run from 0 to the sequence count {num_sequences}")

        bin_size = self._bin_size = os.path.getsize(bin_file)
        if bin_size % self.dtype.itemsize:
            raise ValueError(f"{bin_file}: size {bin_size} is not a multiple of {self.dtype} items")
        if num_sequences:
            end = int(self.sequence_pointers[-1]) + int(self.sequence_lengths[-1]) * self.dtype.itemsize
            if end != bin_size:
                raise ValueError(f"{bin_file}: {bin_size} bytes but the index says the data ends at byte {end}")
        # numpy cannot memory-map an empty file; an empty shard is legal (e.g. an empty held-out split).
        if bin_size:
            self.tokens = np.memmap(bin_file, dtype=self.dtype.newbyteorder("<"), mode="r")
        else:
            self.tokens = np.empty(0, dtype=self.dtype)

    def __getstate__(self):
        return {"prefix": self.prefix}

    def __setstate__(self, state):
        self.prefix = state["prefix"]
        self._open()

    # ---- access -------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.sequence_lengths)

    def __getitem__(self, i: int) -> np.ndarray:
        start = int(self.sequence_pointers[i]) // self.dtype.itemsize
        return self.tokens[start : start + int(self.sequence_lengths[i])]

    @property
    def num_tokens(self) -> int:
        return len(self.tokens)

    @property
    def num_documents(self) -> int:
        return max(len(self.document_indices) - 1, 0)

    def document_starts_between(self, start: int, end: int) -> np.ndarray:
        """Offsets (within ``tokens``) of the document starts in ``[start, end)``, ascending.

        A binary search over the memory-mapped index, O(log documents) per call: nothing per-document is
        materialised or scanned (a SlimPajama run has ~6e8 documents; every DataLoader worker maps them).
        Handles the general Megatron index (several sequences per document, empty documents).
        """
        size = self.dtype.itemsize
        documents = range(self.num_documents)
        lo = bisect.bisect_left(documents, start * size, key=self._document_start_pointer)
        hi = bisect.bisect_left(documents, end * size, key=self._document_start_pointer)
        starts = [self._document_start_pointer(d) // size for d in range(lo, hi)]
        return np.unique(np.asarray(starts, dtype=np.int64))  # empty documents share their successor's start

    def _document_start_pointer(self, d: int) -> int:
        """Byte offset of document d's first token (non-decreasing in d)."""
        first_sequence = int(self.document_indices[d])
        if first_sequence < len(self.sequence_pointers):
            return int(self.sequence_pointers[first_sequence])
        return self._bin_size  # an empty document at the very end
