"""Shared pieces of the kernel tests (tests/test_kernels_triton.py, tests/test_kernels_fla.py): random mLSTM
problems, forward + backward of a weighted sum of every output, and the relative error against fp64."""

import os

import pytest
import torch

from xlstm_kernels import selfcheck
from xlstm_kernels.mlstm import mlstm_parallel

F64 = torch.float64


def triton_test_device() -> str:
    """Where the Triton tests run: "cpu" under the interpreter (TRITON_INTERPRET=1), "cuda" for compiled
    kernels; the calling test module is skipped when neither is possible."""
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        return "cpu"
    if torch.cuda.is_available():
        return "cuda"
    pytest.skip("TRITON_INTERPRET=0 and no CUDA device", allow_module_level=True)


@pytest.fixture(autouse=True)
def fresh_selfcheck():
    """Each test starts with no recorded self-check results and the default mode (autouse where imported)."""
    selfcheck.reset()
    selfcheck.set_mode(None)
    yield
    selfcheck.reset()
    selfcheck.set_mode(None)


def rel_err(a, b):
    """max |a - b| / max |b| (b is the fp64 reference)."""
    a, b = a.detach().to(F64).cpu(), b.detach().to(F64).cpu()
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()


def softcap(x, cap=15.0):
    return cap * torch.tanh(x / cap)


def mlstm_problem(B, NH, S, DK, DV, *, ioff=0.0, foff=3.0, moff=0.0, gate_scale=1.0, cap=None, reset_p=0.1,
                  state=True, seed=1, reset_at=()):
    """Inputs q, k, v, i, f (+ initial C, n, m), a reset mask, and fp64 weights for h and the final state.
    ``cap``: soft-cap the gates (the large family caps them at 15)."""
    g = torch.Generator().manual_seed(seed)
    xs = [torch.randn(B, NH, S, DK, generator=g), torch.randn(B, NH, S, DK, generator=g),
          torch.randn(B, NH, S, DV, generator=g), torch.randn(B, NH, S, generator=g) * gate_scale + ioff,
          torch.randn(B, NH, S, generator=g) * gate_scale + foff]
    if cap is not None:
        xs[3], xs[4] = softcap(xs[3], cap), softcap(xs[4], cap)
    if state:
        xs += [torch.randn(B, NH, DK, DV, generator=g), torch.randn(B, NH, DK, generator=g),
               torch.randn(B, NH, 1, generator=g) + moff]
    reset = None
    if reset_p > 0:
        reset = torch.rand(B, S, generator=g) < reset_p
        reset[0, min(S - 1, 16)] = True  # a reset at a chunk boundary (chunk 16)
        reset[-1, min(S - 1, 5)] = True  # and one inside a chunk
    if reset_at:
        reset = torch.zeros(B, S, dtype=torch.bool)
        reset[:, list(reset_at)] = True
    weights = [torch.randn(B, NH, S, DV, generator=g, dtype=F64), torch.randn(B, NH, DK, DV, generator=g, dtype=F64),
               torch.randn(B, NH, DK, generator=g, dtype=F64), torch.randn(B, NH, 1, generator=g, dtype=F64)]
    return xs, reset, weights


def mlstm_run(fn, xs, reset, weights, *, dtype, device, final=True, eps=1e-6, chunk_size=16):
    """Forward + backward of sum(h*w) (+ final state terms). Returns outputs and input gradients."""
    xs = [x.to(device, dtype if (j < 3 or dtype == F64) else torch.float32).requires_grad_() for j, x in enumerate(xs)]
    state = tuple(xs[5:]) if len(xs) > 5 else None
    rs = None if reset is None else reset.to(device)
    out = fn(*xs[:5], initial_state=state, reset=rs, return_final_state=final, eps=eps, chunk_size=chunk_size)
    outs = [out[0], *out[1]] if final else [out]
    loss = sum((o.to(F64) * w.to(device)).sum() for o, w in zip(outs, weights))
    return outs, list(torch.autograd.grad(loss, xs))


def parallel_ref(*args, chunk_size=None, **kwargs):
    return mlstm_parallel(*args, **kwargs)
