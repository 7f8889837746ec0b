"""The kernel layer's single places: the chunk-length rule (kernels/chunking.py) that the torch
reference, the FLA backend, the Triton kernel and the FLOP count share, and the backend registry /
selection (kernels/dispatch.py) behind the ``xlstm_kernels`` façade."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import xlstm_kernels
from xlstm_kernels.chunking import TL_DOT_MIN_CHUNK, ChunkPlan, chunk_plan
from xlstm_pretrain.flops import chunk_size_used, mlstm_cell_chunkwise

# ---- the chunk rule ---------------------------------------------------------------------------------


@pytest.mark.parametrize("S, chunk_size, min_len, want", [
    (4096, 64, 1, ChunkPlan(64, 64, 64)),  # whole chunks
    (100, 64, 1, ChunkPlan(64, 2, 36)),  # ragged last chunk
    (20, 64, 1, ChunkPlan(32, 1, 20)),  # no chunk longer than the sequence rounded up to a power of two
    (19, 4, 1, ChunkPlan(4, 5, 3)),
    (1, 64, 1, ChunkPlan(1, 1, 1)),
    (5, 64, TL_DOT_MIN_CHUNK, ChunkPlan(16, 1, 5)),  # tl.dot floor
    (40, 8, TL_DOT_MIN_CHUNK, ChunkPlan(16, 3, 8)),  # the floor wins over a smaller chunk_size
    (0, 64, 1, ChunkPlan(1, 0, 0)),
])
def test_chunk_plan(S, chunk_size, min_len, want):
    plan = chunk_plan(S, chunk_size, min_len)
    assert plan == want
    assert plan.count * plan.length - plan.pad == S


@pytest.mark.parametrize("chunk_size", [0, -4, 48])
def test_chunk_size_must_be_a_power_of_two(chunk_size):
    with pytest.raises(ValueError, match="power of two"):
        chunk_plan(64, chunk_size)
    q = torch.zeros(1, 1, 8, 4)
    with pytest.raises(ValueError, match="power of two"):
        xlstm_kernels.mlstm_chunkwise(q, q, q, q[..., 0], q[..., 0], chunk_size=chunk_size)


@pytest.mark.parametrize("S, chunk_size", [(20, 64), (40, 16), (37, 8), (64, 16)])
def test_flop_count_uses_the_chunks_the_torch_kernel_cuts(S, chunk_size):
    """The FLOP module's cell matmuls equal what FlopCounterMode sees the torch chunkwise kernel do,
    padded last chunk included: fails if flops.py and the kernel chunk differently."""
    B, NH, DK, DV = 1, 2, 8, 12
    g = torch.Generator().manual_seed(0)
    q, k = (torch.randn(B, NH, S, DK, generator=g) for _ in range(2))
    v = torch.randn(B, NH, S, DV, generator=g)
    i, f = (torch.randn(B, NH, S, generator=g) for _ in range(2))
    with FlopCounterMode(display=False) as counter:
        xlstm_kernels.mlstm_chunkwise(q, k, v, i, f, chunk_size=chunk_size)
    analytic = mlstm_cell_chunkwise(NH, DK, DV, chunk_size, S).matmul * S * B
    assert counter.get_total_flops() == pytest.approx(analytic, rel=1e-9)
    assert chunk_size_used(chunk_size, S) == chunk_plan(S, chunk_size).length
