"""kernels/mlstm/chunk_outputs.py: the chunkwise mLSTM's output step with a hand-written backward, against
autograd through the same formulas (fp64, every input, with and without document resets) and gradcheck."""

import pytest
import torch

from xlstm_kernels.mlstm.chunk_outputs import mlstm_chunk_outputs, mlstm_chunk_outputs_reference


def _inputs(resets, B=2, NH=2, NC=3, L=8, DK=5, DV=6, seed=0, m_b_scale=1.0):
    g = torch.Generator().manual_seed(seed)
    dt = torch.float64
    q = torch.randn(B, NH, NC, L, DK, generator=g, dtype=dt)
    k = torch.randn(B, NH, NC, L, DK, generator=g, dtype=dt)
    v = torch.randn(B, NH, NC, L, DV, generator=g, dtype=dt)
    log_f = torch.nn.functional.logsigmoid(torch.randn(B, NH, NC, L, generator=g, dtype=dt) + 2)
    cs = log_f.cumsum(-1)
    i = 2 * torch.randn(B, NH, NC, L, generator=g, dtype=dt)
    m_b = m_b_scale * torch.randn(B, NH, NC, generator=g, dtype=dt)
    Cn_b = torch.randn(B, NH, NC, DK, DV + 1, generator=g, dtype=dt)
    causal = torch.ones(L, L, dtype=torch.bool).tril()
    if not resets:
        return (q, k, v, cs, i, cs.clone(), m_b, Cn_b), causal, None
    rs = torch.zeros(B, 1, NC, L, dtype=torch.bool)
    for b, c, t in resets:
        rs[b, 0, c, t] = True
    seg = rs.long().cumsum(-1)
    valid = causal & (seg[..., :, None] == seg[..., None, :])
    log_b = cs - 0.3 * (seg > 0)  # any differentiable log_b: the step takes it as an input
    return (q, k, v, cs, i, log_b, m_b, Cn_b), valid, seg == 0


@pytest.mark.parametrize("resets", [(), ((0, 0, 0), (0, 1, 3), (1, 2, 7), (1, 2, 2))])
def test_chunk_outputs_match_autograd(resets):
    leaves, valid, continues = _inputs(resets)
    leaves = [x.requires_grad_() for x in leaves]
    dh = torch.randn(leaves[0].shape[:-1] + (leaves[2].shape[-1],), dtype=torch.float64)
    results = []
    for fn in (mlstm_chunk_outputs, mlstm_chunk_outputs_reference):
        h = fn(*leaves, valid, continues, 1e-6)
        results.append((h, *torch.autograd.grad((h * dh).sum(), leaves)))
    names = ["h", "dq", "dk", "dv", "dcs", "di", "dlog_b", "dm_b", "dCn_b"]
    for name, ours, ref in zip(names, *results):
        torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-10, msg=name)


@pytest.mark.parametrize("resets", [(), ((0, 0, 2), (1, 1, 0))])
def test_chunk_outputs_gradcheck(resets):
    leaves, valid, continues = _inputs(resets, B=2, NH=1, NC=2, L=4, DK=3, DV=2)
    leaves = [x.requires_grad_() for x in leaves]
    # eps = 0.5 makes the stabiliser's own (eps-sized) gradient visible to the finite differences
    assert torch.autograd.gradcheck(lambda *x: mlstm_chunk_outputs(*x, valid, continues, 0.5), leaves)


def test_chunk_outputs_floor_branch_and_empty_state():
    """Rows where exp(-m) wins the denominator (large negative m_b: a weak carried state), and an empty
    carried state (m_b = -1e30: floor = inf, h = 0) give finite gradients equal to autograd's."""
    leaves, valid, continues = _inputs((), m_b_scale=30.0)
    leaves = list(leaves)
    leaves[1] = leaves[1] * 1e-3  # small keys: |den| below the floor in many rows
    q, k, _, cs, i, log_b, m_b, Cn_b = leaves
    log_D = torch.where(valid, cs[..., :, None] - cs[..., None, :] + i[..., None, :], float("-inf"))
    m = torch.maximum(log_b + m_b[..., None], log_D.amax(-1))
    w = torch.exp(log_b + m_b[..., None] - m)
    den = ((q @ k.transpose(-1, -2)) * torch.exp(log_D - m[..., None])).sum(-1) + w * (q @ Cn_b)[..., -1]
    floor_rows = (den.abs() < torch.exp(-m)).float().mean()
    assert 0.1 < floor_rows < 0.9, floor_rows  # both branches are exercised
    leaves = [x.requires_grad_() for x in leaves]
    h = mlstm_chunk_outputs(*leaves, valid, continues, 1e-6)
    g = torch.autograd.grad(h.sum(), leaves)
    ref = mlstm_chunk_outputs_reference(*leaves, valid, continues, 1e-6)
    g_ref = torch.autograd.grad(ref.sum(), leaves)
    torch.testing.assert_close(h, ref, rtol=1e-10, atol=1e-10)
    for a, b in zip(g, g_ref):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10)
    empty, valid, _ = _inputs(())
    empty = list(empty)
    empty[6] = torch.full_like(empty[6], -1e30)
    empty[4] = torch.full_like(empty[4], float("-inf"))  # nothing written either
    empty = [x.requires_grad_() for x in empty]
    h = mlstm_chunk_outputs(*empty, valid, None, 1e-6)
    assert torch.equal(h, torch.zeros_like(h))
    assert all(torch.isfinite(x).all() for x in torch.autograd.grad(h.sum(), empty))
