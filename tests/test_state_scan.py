"""kernels/mlstm/state_scan.py: the chunk-state recurrence with a hand-written backward, against autograd
through the plain loop it replaces (fp64, every input, with and without gradients into the stacked states)."""

import pytest
import torch

from xlstm_kernels.mlstm.state_scan import linear_state_scan


def loop_reference(x0, a, y):
    states, s = [], x0
    for a_c, y_c in zip(a.unbind(-1), y.unbind(2)):
        states.append(s)
        s = a_c[..., None, None] * s + y_c
    return torch.stack(states, 2), s


@pytest.mark.parametrize("NC", [5, 1])
@pytest.mark.parametrize("use_before,use_last", [(True, True), (True, False), (False, True)])
def test_linear_state_scan_matches_autograd_loop(use_before, use_last, NC):
    g = torch.Generator().manual_seed(0)
    B, NH, P, Q = 2, 3, 4, 6
    x0 = torch.randn(B, NH, P, Q, generator=g, dtype=torch.float64, requires_grad=True)
    a = torch.rand(B, NH, NC, generator=g, dtype=torch.float64).requires_grad_()
    y = torch.randn(B, NH, NC, P, Q, generator=g, dtype=torch.float64, requires_grad=True)
    w_b = torch.randn(B, NH, NC, P, Q, generator=g, dtype=torch.float64)
    w_l = torch.randn(B, NH, P, Q, generator=g, dtype=torch.float64)
    results = []
    for fn in (linear_state_scan, loop_reference):
        before, last = fn(x0, a, y)
        loss = (before * w_b).sum() * use_before + (last * w_l).sum() * use_last
        results.append((before, last, *torch.autograd.grad(loss, (x0, a, y))))
    for ours, ref in zip(*results):
        torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-12)
    assert torch.autograd.gradcheck(linear_state_scan, (x0, a, y))


def test_linear_state_scan_no_chunks():
    x0, a, y = torch.randn(1, 2, 3, 4), torch.randn(1, 2, 0), torch.randn(1, 2, 0, 3, 4)
    before, last = linear_state_scan(x0, a, y)
    assert before.shape == (1, 2, 0, 3, 4) and torch.equal(last, x0)


@pytest.mark.parametrize("NC", [1, 2, 5, 8, 13])
def test_max_plus_scan_equals_the_sequential_stabiliser(NC):
    """The chunkwise stabiliser's log-depth scan: m_{c+1} = max(A_c + m_c, M_c) step by step, with -inf
    carries (document resets) among them; values and gradients (autograd through both)."""
    from xlstm_kernels.mlstm.chunkwise import _max_plus_scan

    g = torch.Generator().manual_seed(NC)
    A = -torch.rand(2, 3, NC, generator=g, dtype=torch.float64) * 4
    A[0, 1, NC // 2] = float("-inf")
    A = A.requires_grad_()
    M = torch.randn(2, 3, NC, generator=g, dtype=torch.float64, requires_grad=True)
    m0 = torch.randn(2, 3, 1, generator=g, dtype=torch.float64, requires_grad=True)
    carry_sum, reach = _max_plus_scan(A, M)
    got = torch.maximum(m0 + carry_sum, reach)
    m, want = m0[..., 0], []
    for c in range(NC):
        m = torch.maximum(A[..., c] + m, M[..., c])
        want.append(m)
    want = torch.stack(want, -1)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    w = torch.randn(2, 3, NC, generator=g, dtype=torch.float64)
    for a, b in zip(torch.autograd.grad((got * w).sum(), (A, M, m0), allow_unused=True),
                    torch.autograd.grad((want * w).sum(), (A, M, m0), allow_unused=True)):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
