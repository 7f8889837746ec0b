"""A linear recurrence over chunk states with scalar weights, with its own backward.

    S_0 = x0,    S_{c+1} = a_c * S_c + y_c    (c = 0 .. NC-1; a_c one scalar per (batch, head))

returns the states before every chunk, stacked on dim 2, and the last one S_NC. This is the sequential
part of the chunkwise mLSTM (kernels/mlstm/chunkwise.py), run on the combined (C | n) state.

Autograd through a Python loop of ``a * S + y`` records several ops and backward nodes per chunk, most of
the torch kernel's non-matmul time at long S. Here each chunk costs one fused multiply-add into a
preallocated chunk-major buffer in forward and one in backward:

    G_NC = dL/dS_NC,  G_c = dL/dS_c(direct) + a_c G_{c+1};   dL/dy_c = G_{c+1},  dL/da_c = <G_{c+1}, S_c>
"""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable


class _LinearStateScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x0, a, y):
        NC = a.shape[-1]
        states = x0.new_empty((NC + 1,) + x0.shape)  # chunk-major: each step writes one contiguous slice
        states[0] = x0
        a_t = a.movedim(-1, 0)[..., None, None]
        y_t = y.movedim(2, 0)
        for c in range(NC):
            torch.addcmul(y_t[c], a_t[c], states[c], out=states[c + 1])
        ctx.save_for_backward(a, states)
        return states[:NC].movedim(0, 2), states[NC]

    @staticmethod
    @once_differentiable  # the backward writes into preallocated buffers: no double backward
    def backward(ctx, d_before, d_last):
        a, states = ctx.saved_tensors
        NC = a.shape[-1]
        a_t = a.movedim(-1, 0)[..., None, None]
        g = torch.empty_like(states)  # g[c] = dL/dS_c, direct use plus what flows back through S_{c+1}
        if d_last is None:
            g[NC].zero_()
        else:
            g[NC] = d_last
        d_b = None if d_before is None else d_before.movedim(2, 0)
        for c in range(NC - 1, -1, -1):
            if d_b is None:
                torch.mul(a_t[c], g[c + 1], out=g[c])
            else:
                torch.addcmul(d_b[c], a_t[c], g[c + 1], out=g[c])
        d_a = (g[1:] * states[:NC]).sum((-1, -2)).movedim(0, -1)
        return g[0], d_a, g[1:].movedim(0, 2)


def linear_state_scan(x0: torch.Tensor, a: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x0 (B, NH, P, Q); a (B, NH, NC); y (B, NH, NC, P, Q) -> (states before each chunk (B, NH, NC, P, Q),
    last state (B, NH, P, Q)). Differentiable in all three inputs."""
    if a.shape[-1] == 0:
        return y, x0
    return _LinearStateScan.apply(x0, a, y)
