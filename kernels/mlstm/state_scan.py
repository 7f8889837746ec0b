"""A linear recurrence over chunk states with scalar weights, with its own backward.

    S_0 = x0,    S_{c+1} = a_c * S_c + y_c    (c = 0 .. NC-1; a_c one scalar per (batch, head))

returns the states before every chunk, stacked on dim 2, and the last one S_NC. This is the sequential
part of the chunkwise mLSTM (kernels/mlstm/chunkwise.py), run on the combined (C | n) state.

Autograd through a Python loop of ``a * S + y`` records several ops and backward nodes per chunk, most of
the torch kernel's non-matmul time at long S. Here each chunk costs one fused multiply-add into a
preallocated buffer in forward and one in backward:

    G_NC = dL/dS_NC,  G_c = dL/dS_c(direct) + a_c G_{c+1};   dL/dy_c = G_{c+1},  dL/da_c = <G_{c+1}, S_c>
"""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable


class _LinearStateScan(torch.autograd.Function):
    # The states before each chunk are written straight into one (..., NC, P, Q) buffer, the layout the
    # output step's batched matmuls read without a copy; each step writes one (P, Q) block per head.
    @staticmethod
    def forward(ctx, x0, a, y):
        NC = a.shape[-1]
        before = y.new_empty(y.shape)
        before[..., 0, :, :] = x0
        a_c = a[..., None, None]
        for c in range(NC - 1):
            torch.addcmul(y[..., c, :, :], a_c[..., c, :, :], before[..., c, :, :], out=before[..., c + 1, :, :])
        last = torch.addcmul(y[..., NC - 1, :, :], a_c[..., NC - 1, :, :], before[..., NC - 1, :, :])
        ctx.save_for_backward(a, before)
        return before, last

    @staticmethod
    @once_differentiable  # the backward writes into preallocated buffers: no double backward
    def backward(ctx, d_before, d_last):
        a, before = ctx.saved_tensors
        NC = a.shape[-1]
        a_c = a[..., None, None]
        # dy[c] = dL/dS_{c+1} = d_before[c+1] + a_{c+1} dy[c+1] (the last: d_last), computed in place
        dy = torch.empty_like(before)
        if d_last is None:
            dy[..., NC - 1, :, :] = 0
        else:
            dy[..., NC - 1, :, :] = d_last
        for c in range(NC - 1, 0, -1):
            if d_before is None:
                torch.mul(a_c[..., c, :, :], dy[..., c, :, :], out=dy[..., c - 1, :, :])
            else:
                torch.addcmul(d_before[..., c, :, :], a_c[..., c, :, :], dy[..., c, :, :], out=dy[..., c - 1, :, :])
        d_x0 = a_c[..., 0, :, :] * dy[..., 0, :, :]
        if d_before is not None:
            d_x0 += d_before[..., 0, :, :]
        d_a = (dy * before).sum((-1, -2))
        return d_x0, d_a, dy


def linear_state_scan(x0: torch.Tensor, a: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x0 (B, NH, P, Q); a (B, NH, NC); y (B, NH, NC, P, Q) -> (states before each chunk (B, NH, NC, P, Q),
    last state (B, NH, P, Q)). Differentiable in all three inputs."""
    if a.shape[-1] == 0:
        return y, x0
    return _LinearStateScan.apply(x0, a, y)
