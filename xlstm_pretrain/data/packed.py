"""Packed fixed-length samples cut from a token stream, with document boundaries.

A shard set's shards, in order, are read as one stream of tokens: doc, EOD, doc, EOD, ... Sample ``i``
is the window ``stream[i * seq_len : i * seq_len + seq_len + 1]`` (windows overlap by one token, as in
Megatron's GPTDataset, so every token after the first is a label exactly once per epoch); the tail
shorter than a window is not used. Documents are cut wherever the windows fall; instead of padding,
each sample says where documents start so that the model resets its recurrent state there.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import Sequence

import numpy as np

from xlstm_pretrain.data.shard_reader import IndexedDataset


class TokenStream:
    """Several shards read as one concatenated token stream (documents never span shards).

    At most ``max_open_shards`` shards stay memory-mapped (least recently used closed first): every map
    holds a file descriptor, and a SlimPajama set has thousands of shards per DataLoader worker.
    """

    def __init__(self, prefixes: Sequence[str | Path], max_open_shards: int = 64):
        if not prefixes:
            raise ValueError("a token stream needs at least one shard")
        self.prefixes = [str(p) for p in prefixes]
        self.max_open_shards = max_open_shards
        self._open: OrderedDict[int, IndexedDataset] = OrderedDict()
        sizes = []
        for k in range(len(self.prefixes)):  # opening validates every shard up front
            sizes.append(self.shard(k).num_tokens)
        self.shard_starts = np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)])  # shard k: [starts[k], starts[k+1])

    def shard(self, k: int) -> IndexedDataset:
        if k in self._open:
            self._open.move_to_end(k)
        else:
            self._open[k] = IndexedDataset(self.prefixes[k])
            if len(self._open) > self.max_open_shards:
                self._open.popitem(last=False)
        return self._open[k]

    def __getstate__(self):  # DataLoader workers map the files themselves
        return {**self.__dict__, "_open": OrderedDict()}

    def __len__(self) -> int:
        return int(self.shard_starts[-1])

    def _pieces(self, start: int, end: int):
        """(shard, offset in shard, offset in the request, length) covering stream[start:end)."""
        if not 0 <= start <= end <= len(self):
            raise IndexError(f"range [{start}, {end}) outside the stream of {len(self)} tokens")
        k = int(np.searchsorted(self.shard_starts, start, side="right")) - 1
        pos = start
        while pos < end:
            shard_end = int(self.shard_starts[k + 1])
            if pos < shard_end:  # (empty shards are passed over)
                take = min(end, shard_end) - pos
                yield self.shard(k), pos - int(self.shard_starts[k]), pos - start, take
                pos += take
            k += 1

    def read(self, start: int, end: int) -> np.ndarray:
        """Tokens ``stream[start:end]`` as int64."""
        out = np.empty(end - start, dtype=np.int64)
        for shard, offset, at, n in self._pieces(start, end):
            out[at : at + n] = shard.tokens[offset : offset + n]
        return out

    def document_starts(self, start: int, end: int) -> np.ndarray:
        """Positions (relative to ``start``) in ``[start, end)`` where a document begins."""
        found = [
            shard.document_starts_between(offset, offset + n) - offset + at
            for shard, offset, at, n in self._pieces(start, end)
        ]
        return np.concatenate(found) if found else np.empty(0, dtype=np.int64)


class PackedSamples:
    """The ``seq_len + 1``-token windows of one token stream, in stream order (no shuffling here).

    ``samples[i]`` -> dict of numpy arrays, each of length ``seq_len``:
      ``input_ids`` = window[:-1], ``labels`` = window[1:] (int64), and ``doc_boundaries`` (bool), True
      where ``input_ids`` holds the first token of a document (at 0 only if a document starts exactly there).
    """

    def __init__(self, stream: TokenStream | Sequence[str | Path], seq_len: int):
        if seq_len < 1:
            raise ValueError(f"seq_len must be positive, got {seq_len}")
        self.stream = stream if isinstance(stream, TokenStream) else TokenStream(stream)
        self.seq_len = seq_len
        self.num_samples = max(len(self.stream) - 1, 0) // seq_len
        if self.num_samples == 0:
            raise ValueError(
                f"{len(self.stream)} tokens are fewer than one sample of seq_len + 1 = {seq_len + 1} tokens"
            )

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        if not 0 <= i < self.num_samples:
            raise IndexError(f"sample {i} out of range ({self.num_samples} samples)")
        start = i * self.seq_len
        window = self.stream.read(start, start + self.seq_len + 1)
        boundaries = np.zeros(self.seq_len, dtype=bool)
        boundaries[self.stream.document_starts(start, start + self.seq_len)] = True
        return {"input_ids": window[:-1], "labels": window[1:], "doc_boundaries": boundaries}
