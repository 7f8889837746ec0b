"""The torch mLSTM and sLSTM do work linear in S (issue: per-step indexing made backward O(S^2)).

Measured without a clock: a dispatch mode adds up the elements every aten op writes during forward and
backward. Doubling S must (about) double that count. Indexing a chunk/step out of a stacked tensor
(``x[:, t]``) has a backward that writes a full-size zero tensor per step, which doubles the count's
growth rate; these tests fail with it.
"""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from xlstm_kernels import mlstm_chunkwise, mlstm_recurrent, slstm_recurrent, slstm_recurrent_manual_backward


class ElementsWritten(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.count += t.numel()
        return out


def _elements_written(run_fwd_bwd) -> int:
    with ElementsWritten() as mode:
        run_fwd_bwd()
    return mode.count


def _mlstm(form, S, reset_every=None, **form_kwargs):
    def run():
        g = torch.Generator().manual_seed(0)
        q, k, v = (torch.randn(1, 2, S, 8, generator=g, requires_grad=True) for _ in range(3))
        i, f = (torch.randn(1, 2, S, generator=g, requires_grad=True) for _ in range(2))
        reset = None
        if reset_every:
            reset = torch.zeros(1, S, dtype=torch.bool)
            reset[:, ::reset_every] = True
        form(q, k, v, i, f, reset=reset, **form_kwargs).sum().backward()
    return run


def _slstm(S, reset_every=None, fn=slstm_recurrent):
    def run():
        g = torch.Generator().manual_seed(0)
        wx = torch.randn(1, S, 4, 2, 4, generator=g, requires_grad=True)
        R = (0.1 * torch.randn(4, 2, 4, 4, generator=g)).requires_grad_()
        b = torch.zeros(4, 2, 4, requires_grad=True)
        reset = None
        if reset_every:
            reset = torch.zeros(1, S, dtype=torch.bool)
            reset[:, ::reset_every] = True
        fn(wx, R, b, reset=reset).sum().backward()
    return run


@pytest.mark.parametrize("reset_every", [None, 7])
@pytest.mark.parametrize("name, make", [
    ("mlstm_chunkwise", lambda S, r: _mlstm(mlstm_chunkwise, S, r, chunk_size=4)),  # many chunks
    ("mlstm_recurrent", lambda S, r: _mlstm(mlstm_recurrent, S, r)),
    ("slstm_recurrent", _slstm),
    ("slstm_recurrent_manual_backward", lambda S, r: _slstm(S, r, slstm_recurrent_manual_backward)),
])
def test_work_is_linear_in_sequence_length(name, make, reset_every):
    # S large enough that per-step tensors dominate fixed costs; small heads keep it fast.
    n1 = _elements_written(make(128, reset_every))
    n2 = _elements_written(make(256, reset_every))
    n4 = _elements_written(make(512, reset_every))
    # Linear: each doubling ~2x. The O(S^2) indexing pattern gave ratios of 2.9-3.8 here.
    assert n2 / n1 < 2.2 and n4 / n2 < 2.2, f"{name}: elements written {n1}, {n2}, {n4} (not linear in S)"
