"""The context-parallel mLSTM summary (kernels/mlstm/summary.py): the state a shard produces alone equals
running the whole cell from an empty state, gradients included, at a fraction of the work."""

from __future__ import annotations

import pytest
import torch
from torch.utils.checkpoint import checkpoint
from torch.utils.flop_counter import FlopCounterMode

from xlstm_kernels import mlstm_chunkwise, mlstm_final_state
from xlstm_kernels.mlstm.summary import EMPTY_M


def _inputs(B=2, NH=3, S=37, DK=8, DV=12, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    k = torch.randn(B, NH, S, DK, generator=g, dtype=dtype)
    v = torch.randn(B, NH, S, DV, generator=g, dtype=dtype)
    i = 3 * torch.randn(B, NH, S, generator=g, dtype=dtype)
    f = torch.randn(B, NH, S, generator=g, dtype=dtype) + 2
    return k, v, i, f


def _cell_final_state(k, v, i, f, reset, chunk_size=8):
    B, NH, _, DK = k.shape
    DV = v.shape[-1]
    empty = (k.new_zeros(B, NH, DK, DV), k.new_zeros(B, NH, DK), k.new_full((B, NH, 1), EMPTY_M))
    q = torch.zeros_like(k)  # outputs are discarded: only the final state matters
    return mlstm_chunkwise(q, k, v, i, f, initial_state=empty, reset=reset, return_final_state=True,
                           chunk_size=chunk_size)[1]


@pytest.mark.parametrize("resets", [(), (0,), (5, 20), (36,)])
def test_summary_equals_the_cell_from_an_empty_state(resets):
    leaves = [x.requires_grad_() for x in _inputs()]
    reset = torch.zeros(2, 37, dtype=torch.bool)
    reset[0, list(resets)] = True
    got = mlstm_final_state(*leaves, reset)
    want = _cell_final_state(*leaves, reset)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    w = [torch.randn_like(t) for t in got]
    g_got = torch.autograd.grad(sum((a * x).sum() for a, x in zip(got, w)), leaves)
    g_want = torch.autograd.grad(sum((a * x).sum() for a, x in zip(want, w)), leaves)
    for name, a, b in zip("kvif", g_got, g_want):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10, msg=f"d{name}")


def test_summary_is_one_state_matmul_not_a_cell_pass():
    """Forward + backward matmul FLOPs of the summary are those of one k^T v (and its two backward
    products), well under the chunkwise cell's, which also builds outputs it then discards."""
    k, v, i, f = (x.requires_grad_() for x in _inputs(B=1, NH=2, S=256, DK=32, DV=32, dtype=torch.float32))

    def flops(fn):
        with FlopCounterMode(display=False) as counter:
            out = fn(k, v, i, f, None)
            sum(t.sum() for t in out).backward()
        return counter.get_total_flops()

    def cell_under_checkpoint(*args):  # the summary pass CP used before: the cell, recomputed in backward
        return checkpoint(_cell_final_state, *args, use_reentrant=False)

    state_only = 2 * 2 * 256 * 32 * 32  # B*NH heads x 2*S*DK*DV
    assert flops(mlstm_final_state) == 3 * state_only  # 1 forward + 1 backward (d(kw), dv) of k^T v
    assert flops(cell_under_checkpoint) > 2 * flops(mlstm_final_state)
