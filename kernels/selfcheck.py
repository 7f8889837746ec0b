"""Runtime self-check of the Triton kernels (our ``triton`` backend, and ``fla``, whose mLSTM runs on
flash-linear-attention's Triton kernels: kernel name ``mlstm_fla``). The dispatch (``dispatch.py``) asks
``passes`` before every Triton call; this module holds the probing logic and the cached results.

On first use per (kernel, device, dtype, head dims, chunk size), the Triton kernel is compared with the
torch reference on a small problem at the caller's own head dims and chunk size (so the multi-tile paths
the model uses are the ones checked) that exercises everything it must get right (a ragged last chunk,
document resets on and inside chunk edges, initial and final state, forward and backward of every
input). On a mismatch, or if Triton cannot run at all (not installed, CPU tensors without
``TRITON_INTERPRET=1``, a compile error), ``passes`` raises or warns once and returns False, and the
dispatch falls back to the torch reference for that key.

Mode, from ``set_mode()`` if called, else the env var ``XLSTM_KERNEL_SELFCHECK``, else by device:
  ``raise`` (default on CUDA: a run that asked for fast kernels must not silently train on the Python
  loop): raise ``KernelSelfCheckError`` naming the kernel;  ``warn`` (default elsewhere): warn once and
  fall back;  ``off``: skip the check and always run the Triton kernel.
This module imports triton lazily (only when a Triton kernel is first probed).
"""

from __future__ import annotations

import contextlib
import os
import threading
import warnings

import torch

ENV_VAR = "XLSTM_KERNEL_SELFCHECK"
MODES = ("warn", "raise", "off")

_lock = threading.RLock()
_mode_override: str | None = None
_results: dict[tuple, str | None] = {}  # key -> None (passed) or the failure message
_warned: set[tuple] = set()


class KernelSelfCheckError(RuntimeError):
    """A Triton kernel disagreed with the torch reference (raised in ``raise`` mode)."""


def set_mode(mode: str | None) -> None:
    """Override the env var (``None`` restores it)."""
    if mode is not None and mode not in MODES:
        raise ValueError(f"self-check mode must be one of {MODES}, got {mode!r}")
    global _mode_override
    _mode_override = mode


def get_mode(device: torch.device | None = None) -> str:
    default = "raise" if device is not None and torch.device(device).type == "cuda" else "warn"
    mode = _mode_override if _mode_override is not None else os.environ.get(ENV_VAR, default).strip().lower()
    if mode not in MODES:
        raise ValueError(f"{ENV_VAR} must be one of {MODES}, got {mode!r}")
    return mode


def reset() -> None:
    """Forget all cached self-check results and warnings (the next use checks again)."""
    with _lock:
        _results.clear()
        _warned.clear()


def results() -> dict:
    """Cached results: (kernel, device, dtype, shape) -> None if passed else the failure message, where
    shape is the probe's sorted (name, value) pairs, e.g. (("DK", 16), ("DV", 16), ("chunk_size", 16))."""
    return dict(_results)


def result(name: str, device, dtype: torch.dtype, **shape) -> str | None:
    """The cached result of one check (KeyError if it never ran)."""
    return _results[(name, str(device), dtype, tuple(sorted(shape.items())))]


def passes(name: str, device: torch.device, dtype: torch.dtype, probe, **shape) -> bool:
    """True if the Triton kernel `name` may be used on (device, dtype) at `shape` (keyword dims the
    probe takes); runs ``probe(device, dtype, **shape)`` once per key, which returns None when the
    kernel agrees with the reference, else a message."""
    mode = get_mode(device)
    if mode == "off":
        return True
    key = (name, str(device), dtype, tuple(sorted(shape.items())))
    with _lock:
        if key not in _results:
            try:
                _results[key] = probe(device, dtype, **shape)
            except Exception as e:  # noqa: BLE001 - any failure means "do not use the kernel"
                _results[key] = f"raised {type(e).__name__}: {e}"
        problem = _results[key]
        if problem is None:
            return True
        where = f"{device} / {dtype} / " + ", ".join(f"{k}={v}" for k, v in sorted(shape.items()))
        if mode == "raise":
            raise KernelSelfCheckError(
                f"xlstm_kernels: the Triton {name} kernel failed its self-check on {where} ({problem}). "
                f"To train anyway on the (slow) torch reference set {ENV_VAR}=warn (falls back with a "
                f"warning) or model.backend=torch; {ENV_VAR}=off skips the check.")
        msg = (f"xlstm_kernels: the Triton {name} kernel failed its self-check on {where} ({problem}); "
               f"falling back to the torch reference. Set {ENV_VAR}=raise to make this an error, "
               f"{ENV_VAR}=off to skip the check.")
        if key not in _warned:
            _warned.add(key)
            warnings.warn(msg, RuntimeWarning, stacklevel=4)
        return False


# ---------------------------------------------------------------------------------------------------
# probes
# ---------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def _grad_context(device: torch.device):
    with contextlib.ExitStack() as stack:
        stack.enter_context(torch.inference_mode(False))
        stack.enter_context(torch.enable_grad())
        if device.type in ("cuda", "cpu"):
            stack.enter_context(torch.autocast(device_type=device.type, enabled=False))
        yield


def _tol(dtype: torch.dtype) -> float:
    return 1e-3 if dtype == torch.float32 else 5e-2


def _compare(names, got, want, dtype, tol=None) -> str | None:
    tol = _tol(dtype) if tol is None else tol
    for name, a, b in zip(names, got, want):
        if a is None or b is None:
            if (a is None) != (b is None):
                return f"{name}: gradient missing"
            continue
        if a.shape != b.shape:
            return f"{name}: shape {tuple(a.shape)} != {tuple(b.shape)}"
        a, b = a.detach().double(), b.detach().double()
        if not torch.isfinite(a).all():
            return f"{name}: non-finite values"
        err = ((a - b).abs().max() / (b.abs().max() + 1e-6)).item()
        if not err <= tol:
            return f"{name}: relative max error {err:.2e} > {tol:.0e}"
    return None


def _randn(gen, *shape):
    return torch.randn(*shape, generator=gen)


def mlstm_probe(device: torch.device, dtype: torch.dtype, kernel=None, tol=None, DK: int = 16, DV: int = 16,
                chunk_size: int = 16) -> str | None:
    """``kernel``: the mLSTM function to check (default: our Triton chunkwise kernel), at head dims
    (DK, DV) and ``chunk_size``: three chunks, the last one ragged, resets on a chunk edge and inside."""
    from .mlstm import chunkwise as torch_chunkwise

    if kernel is None:
        from .mlstm import chunkwise_triton

        kernel = chunkwise_triton.mlstm_chunkwise_triton

    gen = torch.Generator().manual_seed(1234)  # never touches the global RNG
    B, NH, S = 1, 2, 2 * chunk_size + 5
    base = [_randn(gen, B, NH, S, DK), _randn(gen, B, NH, S, DK), _randn(gen, B, NH, S, DV), _randn(gen, B, NH, S),
            _randn(gen, B, NH, S) + 3.0, _randn(gen, B, NH, DK, DV), _randn(gen, B, NH, DK), _randn(gen, B, NH, 1)]
    reset = torch.zeros(B, S, dtype=torch.bool)
    reset[0, chunk_size // 2 + 3] = True
    reset[0, chunk_size] = True
    weights = [_randn(gen, B, NH, S, DV), _randn(gen, B, NH, DK, DV), _randn(gen, B, NH, DK), _randn(gen, B, NH, 1)]
    weights = [w.to(device) for w in weights]
    reset = reset.to(device)

    def run(fn):
        xs = [x.to(device, dtype if j < 3 else torch.float32).requires_grad_() for j, x in enumerate(base)]
        h, (C, n, m) = fn(*xs[:5], initial_state=tuple(xs[5:]), reset=reset, return_final_state=True, eps=1e-6,
                          chunk_size=chunk_size)
        outs = [h, C, n, m]
        loss = sum((o.float() * w).sum() for o, w in zip(outs, weights))
        return outs + list(torch.autograd.grad(loss, xs))

    with _grad_context(device):
        got = run(kernel)
        want = run(torch_chunkwise.mlstm_chunkwise)
    names = ["h", "C", "n", "m", "dq", "dk", "dv", "di", "df", "dC0", "dn0", "dm0"]
    return _compare(names, got, want, dtype, tol)


def slstm_probe(device: torch.device, dtype: torch.dtype, DH: int = 16) -> str | None:
    """Our Triton sLSTM at head dim DH (its kernel picks different code paths by DH)."""
    from .slstm import naive as torch_slstm
    from .slstm import recurrent_triton

    gen = torch.Generator().manual_seed(4321)
    B, S, NH = 2, 9, 2
    base = [_randn(gen, B, S, 4, NH, DH), _randn(gen, 4, NH, DH, DH) * 0.1, _randn(gen, 4, NH, DH),
            _randn(gen, B, NH, DH), _randn(gen, B, NH, DH), torch.rand(B, NH, DH, generator=gen) + 0.5,
            _randn(gen, B, NH, DH)]
    reset = torch.zeros(B, S, dtype=torch.bool)
    reset[1, 5] = True
    weights = [_randn(gen, B, S, NH, DH), _randn(gen, B, NH, DH), _randn(gen, B, NH, DH), _randn(gen, B, NH, DH)]
    weights = [w.to(device) for w in weights]
    reset = reset.to(device)

    def run(fn):
        xs = [x.to(device, dtype if j < 3 else torch.float32).requires_grad_() for j, x in enumerate(base)]
        y, (yN, cN, nN, mN) = fn(xs[0], xs[1], xs[2], initial_state=tuple(xs[3:]), reset=reset,
                                 return_final_state=True)
        outs = [y, yN, cN, nN, mN]
        loss = sum((o.float() * w).sum() for o, w in zip(outs[:4], weights))
        return outs + list(torch.autograd.grad(loss, xs))

    with _grad_context(device):
        got = run(recurrent_triton.slstm_recurrent_triton)
        want = run(torch_slstm.slstm_recurrent)
    names = ["y", "y_N", "c_N", "n_N", "m_N", "dwx", "dR", "db", "dy0", "dc0", "dn0", "dm0"]
    return _compare(names, got, want, dtype)


def mlstm_fla_probe(device: torch.device, dtype: torch.dtype, **shape) -> str | None:
    """The FLA mLSTM (``mlstm/fla.py``) through ``mlstm_probe``."""
    from .mlstm.fla import mlstm_fla

    # fp32 goes through FLA's tl.dot at Triton's default precision (TF32 on a GPU): a looser fp32 bound.
    # The check is there to catch a wrong kernel (an incompatible FLA version, the interpreter's bf16
    # tl.dot), whose errors are O(1).
    return mlstm_probe(device, dtype, kernel=mlstm_fla, tol=1e-2 if dtype == torch.float32 else None, **shape)
