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


@pytest.mark.parametrize("S,chunk,resets", [(37, 8, ()), (37, 8, (0,)), (37, 8, (5, 20)), (37, 8, (36,)),
                                            (32, 8, (24,)), (40, 16, (15, 16))])
def test_chunkwise_state_function_gets_the_summary_and_matches_two_passes(S, chunk, resets):
    """``initial_state=fn``: the torch chunkwise hands fn the summary computed from its chunk summaries
    (equal to ``mlstm_sequence_summary``, resets on and around chunk edges, ragged S), runs from fn's state,
    and its gradients (through the summary too) equal the two-pass computation's."""
    from xlstm_kernels import mlstm_sequence_summary
    from xlstm_pretrain.parallel.context_parallel import combine_mlstm_state

    k, v, i, f = _inputs(S=S)
    q = torch.randn_like(k)
    before = (torch.randn(2, 3, 8, 12, dtype=torch.float64), torch.randn(2, 3, 8, dtype=torch.float64),
              torch.randn(2, 3, 1, dtype=torch.float64))
    reset = torch.zeros(2, S, dtype=torch.bool)
    reset[1, list(resets)] = True
    leaves = [x.requires_grad_() for x in (q, k, v, i, f, *before)]
    seen = {}

    def state_fn(summary):  # what a CP rank does: its earlier shards (here one state) combined with ...
        seen["summary"] = summary
        return combine_mlstm_state(leaves[5:], tuple(s * 0.5 for s in summary))

    h, final = mlstm_chunkwise(*leaves[:5], initial_state=state_fn, reset=reset, return_final_state=True,
                               chunk_size=chunk)
    want_summary = mlstm_sequence_summary(*leaves[1:5], reset)
    for name, a, b in zip(("log_F", "C", "n", "m"), seen["summary"], want_summary):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12, msg=name)
    h2, final2 = mlstm_chunkwise(*leaves[:5], initial_state=state_fn(want_summary), reset=reset,
                                 return_final_state=True, chunk_size=chunk)
    torch.testing.assert_close(h, h2, rtol=1e-12, atol=1e-12)
    w = torch.randn_like(h)
    loss = lambda h, fs: (h * w).sum() + sum(s.sum() for s in fs)  # noqa: E731
    g = torch.autograd.grad(loss(h, final), leaves)
    g2 = torch.autograd.grad(loss(h2, final2), leaves)
    for name, a, b in zip(("q", "k", "v", "i", "f", "C0", "n0", "m0"), g, g2):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9, msg=f"d{name}")


def test_state_function_reaches_every_backend_as_a_state(monkeypatch):
    """Forms and backends without the fused summary get the function resolved by the dispatch: the torch
    parallel / recurrent forms (and a single generation token), and any other registered backend, whose
    function receives the state the function returned for ``mlstm_sequence_summary``."""
    import xlstm_kernels
    from xlstm_kernels import mlstm_sequence_summary

    k, v, i, f = _inputs(S=16)
    q = torch.randn_like(k)
    state_fn = lambda s: tuple(x.clamp(-50, 50) for x in s[1:])  # noqa: E731
    got = {}
    for form in ("chunkwise", "parallel", "recurrent"):
        got[form] = xlstm_kernels.mlstm(q, k, v, i, f, backend="torch", form=form, chunk_size=8,
                                        initial_state=state_fn)
    for form in ("parallel", "recurrent"):
        torch.testing.assert_close(got[form], got["chunkwise"], rtol=1e-9, atol=1e-9)
    one = [x[:, :, :1] for x in (q, k, v, i, f)]
    h1 = xlstm_kernels.mlstm(*one, backend="torch", initial_state=state_fn)
    want1 = xlstm_kernels.mlstm_recurrent(*one, initial_state=state_fn(mlstm_sequence_summary(*one[1:])))
    torch.testing.assert_close(h1, want1, rtol=1e-12, atol=1e-12)

    seen = {}

    def other_backend(q, k, v, i, f, *, initial_state=None, **kwargs):
        seen["state"] = initial_state
        return xlstm_kernels.mlstm(q, k, v, i, f, backend="torch", initial_state=initial_state, **kwargs)

    monkeypatch.setitem(xlstm_kernels.MLSTM_BACKENDS, "probe", other_backend)
    h = xlstm_kernels.mlstm(q, k, v, i, f, backend="probe", chunk_size=8, initial_state=state_fn)
    assert isinstance(seen["state"], tuple)
    for a, b in zip(seen["state"], state_fn(mlstm_sequence_summary(k, v, i, f))):
        assert torch.equal(a, b)
    torch.testing.assert_close(h, got["chunkwise"], rtol=1e-9, atol=1e-9)


def test_the_fused_summary_adds_no_pass_over_the_tokens():
    """The chunkwise cell with a state function costs what it costs with a state, plus the weighted sum
    of NC chunk summaries (forward and backward): no k^T v over the tokens again."""
    B, NH, S, DK, DV, chunk = 1, 2, 256, 32, 32, 64
    k, v, i, f = (x.requires_grad_() for x in _inputs(B=B, NH=NH, S=S, DK=DK, DV=DV, dtype=torch.float32))
    q = torch.randn_like(k).requires_grad_()
    zero = (torch.zeros(B, NH, DK, DV), torch.zeros(B, NH, DK), torch.zeros(B, NH, 1))

    def flops(initial_state):
        with FlopCounterMode(display=False) as counter:
            h = mlstm_chunkwise(q, k, v, i, f, initial_state=initial_state, chunk_size=chunk)
            h.sum().backward()
        return counter.get_total_flops()

    extra = flops(lambda summary: zero) - flops(zero)
    chunk_sums = 2 * B * NH * (S // chunk) * DK * (DV + 1)  # one weighted sum of the NC chunk summaries
    assert 0 < extra <= 3 * chunk_sums  # forward + its backward, nothing of size S
    assert extra < 2 * B * NH * S * DK * DV  # less than a single k^T v over the tokens
