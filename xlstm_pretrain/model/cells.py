"""The recurrent cells as (parameter-free) modules around the kernel dispatch.

Layers call ``self.cell(...)`` rather than the kernels directly, so that parallelism can swap a cell
for a wrapper (context parallelism passes state across sequence shards) without touching the layer.
States: mLSTM (C, n, m), sLSTM (y, c, n, m); see ``kernels/mlstm/naive.py`` and ``kernels/slstm/naive.py``.
"""

from __future__ import annotations

from torch import nn

import xlstm_kernels

from .config import ModelConfig


class MLSTMCell(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.backend, self.form, self.chunk_size, self.eps = cfg.backend, cfg.mlstm_form, cfg.chunk_size, cfg.eps

    def forward(self, q, k, v, i, f, state=None, reset=None, return_state=False):
        """q, k (B, NH, S, DHQK), v (B, NH, S, DHV), i, f (B, NH, S) -> h (B, NH, S, DHV) [, final state]."""
        out = xlstm_kernels.mlstm(q, k, v, i, f, backend=self.backend, form=self.form, chunk_size=self.chunk_size,
                                  eps=self.eps, initial_state=state, reset=reset, return_final_state=return_state)
        return out if return_state else (out, None)


class SLSTMCell(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.backend = cfg.backend

    def forward(self, wx, R, b, state=None, reset=None, return_state=False):
        """wx (B, S, 4, NH, DH), R (4, NH, DH, DH), b (4, NH, DH) -> y (B, S, NH, DH) [, final state]."""
        out = xlstm_kernels.slstm(wx, R, b, backend=self.backend, initial_state=state, reset=reset,
                                  return_final_state=return_state)
        return out if return_state else (out, None)
