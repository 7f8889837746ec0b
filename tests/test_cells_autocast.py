"""The torch cells keep their fp32 contract inside a bf16 autocast region (precision: bf16 trains so).

Inputs are fp32 (what the projections of a model with fp32 master weights give outside autocast's
matmul list) and compared with fp64 on the same values; with autocast leaking into the cell, its
matmuls (q.C, the normaliser q.n, y.R) run in bf16 and the relative error is ~1e-2.
"""

from __future__ import annotations

import pytest
import torch

import xlstm_kernels


def _rel(a, b) -> float:
    return ((a.double() - b).norm() / b.norm()).item()


def _mlstm_inputs(dtype=torch.float32):
    g = torch.Generator().manual_seed(0)
    B, NH, S, DH = 2, 2, 96, 32
    q, k, v = (torch.randn(B, NH, S, DH, generator=g, dtype=dtype) for _ in range(3))
    i = torch.randn(B, NH, S, generator=g, dtype=dtype)
    f = 3.0 + torch.randn(B, NH, S, generator=g, dtype=dtype)
    reset = torch.zeros(B, S, dtype=torch.bool)
    reset[:, 40] = True
    return (q, k, v, i, f), reset


@pytest.mark.parametrize("form", ["chunkwise", "parallel", "recurrent"])
def test_mlstm_torch_cell_is_fp32_under_bf16_autocast(form):
    inputs, reset = _mlstm_inputs()
    leaves = [x.clone().requires_grad_() for x in inputs]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        h, (C, n, m) = xlstm_kernels.mlstm(*leaves, backend="torch", form=form, chunk_size=32, reset=reset,
                                           return_final_state=True)
    assert h.dtype == torch.float32 and C.dtype == torch.float32
    ref_leaves = [x.double().requires_grad_() for x in inputs]
    h_ref, (C_ref, n_ref, _) = xlstm_kernels.mlstm(*ref_leaves, backend="torch", form=form, chunk_size=32,
                                                   reset=reset, return_final_state=True)
    assert _rel(h, h_ref) < 1e-5 and _rel(C, C_ref) < 1e-5 and _rel(n, n_ref) < 1e-5
    w = torch.randn(h.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    (h.double() * w).sum().backward()
    (h_ref * w).sum().backward()
    for name, a, b in zip("qkvif", leaves, ref_leaves):
        assert _rel(a.grad, b.grad) < 1e-4, f"d{name}: {_rel(a.grad, b.grad):.2e}"


def test_slstm_torch_cell_is_fp32_under_bf16_autocast():
    g = torch.Generator().manual_seed(0)
    B, S, NH, DH = 2, 48, 2, 16
    wx = torch.randn(B, S, 4, NH, DH, generator=g)
    R = 0.3 * torch.randn(4, NH, DH, DH, generator=g)
    b = 0.1 * torch.randn(4, NH, DH, generator=g)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = xlstm_kernels.slstm(wx, R, b, backend="torch")
    y_ref = xlstm_kernels.slstm(wx.double(), R.double(), b.double(), backend="torch")
    assert y.dtype == torch.float32
    assert _rel(y, y_ref) < 1e-5


def test_bf16_inputs_under_autocast_match_fp64_to_bf16_rounding():
    """bf16 inputs (the projections' output under autocast): the cell upcasts them, so the only error
    left is rounding the output to bf16 (2^-9 relative per element)."""
    inputs, reset = _mlstm_inputs(torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        h = xlstm_kernels.mlstm(*inputs, backend="torch", chunk_size=32, reset=reset)
    h_ref = xlstm_kernels.mlstm(*(x.double() for x in inputs), backend="torch", chunk_size=32, reset=reset)
    assert h.dtype == torch.bfloat16
    assert _rel(h, h_ref) < 4e-3


def test_cells_run_on_the_meta_device():
    """Shape-only forwards (FLOP counting, planning) go through the same dispatch; meta has no autocast."""
    q = torch.empty(1, 2, 8, 4, device="meta")
    i = torch.empty(1, 2, 8, device="meta")
    assert xlstm_kernels.mlstm(q, q, q, i, i, backend="torch", chunk_size=4).shape == (1, 2, 8, 4)
    wx = torch.empty(1, 3, 4, 2, 4, device="meta")
    R, b = torch.empty(4, 2, 4, 4, device="meta"), torch.empty(4, 2, 4, device="meta")
    assert xlstm_kernels.slstm(wx, R, b, backend="torch").shape == (1, 3, 2, 4)


def test_cp_state_summary_is_fp32_under_bf16_autocast():
    inputs, reset = _mlstm_inputs()
    q, k, v, i, f = inputs
    with torch.autocast("cpu", dtype=torch.bfloat16):
        C, n, m = xlstm_kernels.mlstm_final_state(k, v, i, f, reset)
    C_ref, n_ref, _ = xlstm_kernels.mlstm_final_state(k.double(), v.double(), i.double(), f.double(), reset)
    assert C.dtype == torch.float32
    assert _rel(C, C_ref) < 1e-6 and _rel(n, n_ref) < 1e-6


def test_every_backend_runs_outside_autocast(monkeypatch):
    """The dispatch switches autocast off for every backend, so torch fallbacks inside the Triton/FLA
    backends (fp64, single tokens, a failed self-check in warn mode) keep the fp32 contract too."""
    seen = []

    def probe_backend(q, k, v, i, f, **kwargs):
        seen.append(torch.is_autocast_enabled("cpu"))
        return xlstm_kernels.MLSTM_BACKENDS["torch"](q, k, v, i, f, **kwargs)

    monkeypatch.setitem(xlstm_kernels.MLSTM_BACKENDS, "probe", probe_backend)
    inputs, _ = _mlstm_inputs()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        xlstm_kernels.mlstm(*inputs, backend="probe", chunk_size=32)
    assert seen == [False]
