"""The one chunk-length rule of the chunkwise mLSTM (torch reference, Triton kernel, FLA backend, FLOP count).

A chunkwise mLSTM cuts a sequence of ``seq_len`` tokens into chunks of ``length`` tokens:

    length = max(min_len, min(chunk_size, next_pow2(seq_len)))      (next_pow2(0) = 1)
    count  = ceil(seq_len / length)
    last   = seq_len - (count - 1) * length   tokens in the last chunk (1 .. length; ragged when < length)
    pad    = count * length - seq_len          positions past the end of the sequence

``chunk_size`` (``model.chunk_size``) must be a power of two. No chunk is longer than the sequence rounded
up to a power of two (a chunk longer than the sequence only adds padded work), and none is shorter than
the kernel's smallest tile ``min_len``: 1 for the torch reference, ``TL_DOT_MIN_CHUNK`` (16) for the Triton
kernels (ours and flash-linear-attention's), because ``tl.dot`` needs at least 16 rows. The ragged last
chunk is computed as if padded with tokens that leave the state untouched (log f = 0, i = -inf): the torch
reference pads explicitly, the Triton kernels mask the positions past ``seq_len``; either way outputs and
final state are exact and the padded positions cost FLOPs (``xlstm_pretrain/flops.py`` counts them).

The chunk length changes rounding only, never the function. Change the rule here, and only here: the
kernels and the FLOP count all call ``chunk_plan`` (tests/test_dispatch.py checks that they agree).
"""

from __future__ import annotations

from dataclasses import dataclass

TORCH_MIN_CHUNK = 1  # the torch reference takes any power of two
TL_DOT_MIN_CHUNK = 16  # Triton kernels: tl.dot needs >= 16 along every dimension


@dataclass(frozen=True)
class ChunkPlan:
    """How a sequence is cut into chunks (see the module docstring)."""

    length: int  # tokens per chunk (L)
    count: int  # number of chunks (NC)
    last: int  # real tokens in the last chunk (== length unless the sequence ends in a ragged chunk)

    @property
    def pad(self) -> int:
        """Positions of the last chunk past the end of the sequence."""
        return self.length - self.last if self.count else 0


def check_chunk_size(chunk_size: int) -> int:
    """``chunk_size`` if it is a positive power of two, else a ValueError."""
    if chunk_size <= 0 or chunk_size & (chunk_size - 1):
        raise ValueError(f"mLSTM chunkwise: chunk_size must be a power of two, got {chunk_size}")
    return chunk_size


def chunk_plan(seq_len: int, chunk_size: int, min_len: int = TORCH_MIN_CHUNK) -> ChunkPlan:
    """The chunks a kernel with smallest tile ``min_len`` cuts ``seq_len`` tokens into at ``chunk_size``."""
    check_chunk_size(chunk_size)
    if seq_len < 0:
        raise ValueError(f"seq_len must be >= 0, got {seq_len}")
    length = max(min_len, min(chunk_size, 1 << max(seq_len - 1, 0).bit_length()))
    count = -(-seq_len // length)
    last = seq_len - (count - 1) * length if count else 0
    return ChunkPlan(length=length, count=count, last=last)


__all__ = ["TL_DOT_MIN_CHUNK", "TORCH_MIN_CHUNK", "ChunkPlan", "check_chunk_size", "chunk_plan"]
