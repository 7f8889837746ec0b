"""Backend registry and selection of the xLSTM cells: the one place where a backend is registered.

A backend is a name with one mLSTM and one sLSTM function, both with the signatures of the torch
reference (``_mlstm_torch`` / ``_slstm_torch`` below; shapes and conventions in ``mlstm/naive.py`` and
``slstm/naive.py``):

    mlstm(q, k, v, i, f, *, initial_state=None, reset=None, return_final_state=False, eps=1e-6,
          chunk_size=64, form="chunkwise")
    slstm(wx, R, b, *, initial_state=None, reset=None, return_final_state=False)

The mLSTM's ``initial_state`` may be a state or a function of the sequence's own summary returning one
(``mlstm_sequence_summary``: what context parallelism exchanges before a shard knows its initial state).
The torch chunkwise takes the summary from its own chunk summaries; for every other backend and torch
form ``mlstm`` / ``_mlstm_torch`` call the function with ``mlstm_sequence_summary`` first
(``_state_from_summary``), so of the functions behind the registry only the torch chunkwise
(``mlstm_chunkwise``) ever receives a function.

Registered here (``register_backend``):
  ``torch``   pure PyTorch (mLSTM forms chunkwise / parallel / recurrent; the sLSTM recurrence with a
              hand-written backward, ``slstm/recurrent.py``, checked against ``slstm/naive.py``);
  ``triton``  our Triton kernels (``mlstm/chunkwise_triton.py``, ``slstm/recurrent_triton.py``; chunkwise only);
  ``fla``     the mLSTM on flash-linear-attention's ``chunk_simple_gla`` (``mlstm/fla.py``) and, as FLA has
              no sLSTM, our Triton sLSTM; registered only when ``fla`` and ``triton`` are installed (found,
              not imported), else ``MISSING_BACKENDS["fla"]`` says what to install.
The Triton-based backends go through the self-check hook (``_self_checked``): on first use per
(kernel, device, dtype, head dims, chunk size) ``selfcheck.passes`` compares the kernel with the torch
reference (the probes live in ``selfcheck.py``); if it fails (or the dtype is fp64, which the kernels do
not take) the call runs on the torch reference instead, or raises, by the self-check mode.

To add a backend: write its two functions with exactly these signatures (``tests/test_dispatch.py`` checks
every registered one), add one ``register_backend`` call below, and, if it should be picked by
``backend="auto"`` on CUDA, put its name in ``AUTO_CUDA_ORDER``.
"""

from __future__ import annotations

import contextlib
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass

import torch

from . import selfcheck
from .fla_runtime import FLA_INSTALL_HINT
from .mlstm import mlstm_chunkwise, mlstm_parallel, mlstm_recurrent, mlstm_sequence_summary
from .mlstm.fla import FLA_CHUNK_SIZES  # the module only: flash-linear-attention is imported on first use
from .slstm import slstm_recurrent_manual_backward


@dataclass(frozen=True)
class BackendInfo:
    """What ``resolve_backend`` needs to know about a registered backend besides its functions."""

    chunk_sizes: tuple[int, ...] | None = None  # the mLSTM chunk sizes it runs (None: every power of two)
    forms: tuple[str, ...] = ("chunkwise",)  # the mLSTM forms it computes


MLSTM_BACKENDS: dict[str, Callable] = {}
SLSTM_BACKENDS: dict[str, Callable] = {}
BACKEND_INFO: dict[str, BackendInfo] = {}
MISSING_BACKENDS: dict[str, str] = {}  # name -> what to install


def register_backend(name: str, mlstm: Callable, slstm: Callable, *, requires: tuple[str, ...] = (),
                     install_hint: str = "", info: BackendInfo = BackendInfo()) -> bool:
    """Register ``name`` if every module in ``requires`` is installed (found, not imported; importing FLA
    takes seconds), else record ``install_hint`` in ``MISSING_BACKENDS``. Returns whether it registered."""
    if any(importlib.util.find_spec(module) is None for module in requires):
        MISSING_BACKENDS[name] = install_hint
        return False
    MLSTM_BACKENDS[name] = mlstm
    SLSTM_BACKENDS[name] = slstm
    BACKEND_INFO[name] = info
    MISSING_BACKENDS.pop(name, None)
    return True


# ---------------------------------------------------------------------------------------------------
# precision and the self-check hook
# ---------------------------------------------------------------------------------------------------
def _without_autocast(device: torch.device):
    """The cells compute their state in fp32 (fp64 for fp64 inputs) whatever the input dtype. Under an
    autocast region the torch cells' matmuls (q.C, q.n of the normaliser, y.R) would silently run in
    bf16/fp16 (relative error ~1e-2 instead of ~1e-6), so autocast is switched off inside every backend
    (the Triton/FLA kernels and their torch fallbacks choose their precision themselves); inputs are
    upcast explicitly and the output keeps the input dtype."""
    if torch.amp.is_autocast_available(device.type) and torch.is_autocast_enabled(device.type):
        return torch.autocast(device.type, enabled=False)
    return contextlib.nullcontext()


_TRITON_DTYPES = (torch.float32, torch.bfloat16, torch.float16)  # fp64 runs on the torch reference


def _self_checked(kernel: str, probe, x: torch.Tensor, **shape) -> bool:
    """Whether the Triton kernel ``kernel`` may run on ``x``'s device and dtype at ``shape``: its dtype is
    one the kernels take and ``selfcheck.passes`` (cached per key; raises in ``raise`` mode)."""
    return x.dtype in _TRITON_DTYPES and selfcheck.passes(kernel, x.device, x.dtype, probe, **shape)


def _chunkwise_only(backend: str, form: str) -> None:
    if form != "chunkwise":
        raise ValueError(f"the {backend} mLSTM backend computes the chunkwise form only, got form={form!r}")


# ---------------------------------------------------------------------------------------------------
# backends
# ---------------------------------------------------------------------------------------------------
MLSTM_TORCH_FORMS = {"chunkwise": mlstm_chunkwise, "parallel": mlstm_parallel, "recurrent": mlstm_recurrent}


def _state_from_summary(initial_state, k, v, i, f, reset):
    """``initial_state`` as a state: a function of the sequence's summary is called with it."""
    if callable(initial_state):
        return initial_state(mlstm_sequence_summary(k, v, i, f, reset))
    return initial_state


def _mlstm_torch(q, k, v, i, f, *, initial_state=None, reset=None, return_final_state=False, eps=1e-6,
                 chunk_size=64, form="chunkwise"):
    if form not in MLSTM_TORCH_FORMS:
        raise ValueError(f"mLSTM torch form must be one of {sorted(MLSTM_TORCH_FORMS)}, got {form!r}")
    if q.shape[2] == 1:  # a single token (generation): one recurrent step, whatever the training form
        form = "recurrent"
    if form != "chunkwise":  # the chunkwise form takes a state function itself (no second pass)
        initial_state = _state_from_summary(initial_state, k, v, i, f, reset)
    kwargs = dict(initial_state=initial_state, reset=reset, return_final_state=return_final_state, eps=eps)
    if form == "chunkwise":
        kwargs["chunk_size"] = chunk_size
    return MLSTM_TORCH_FORMS[form](q, k, v, i, f, **kwargs)


def _slstm_torch(wx, R, b, *, initial_state=None, reset=None, return_final_state=False):
    return slstm_recurrent_manual_backward(wx, R, b, initial_state=initial_state, reset=reset,
                                           return_final_state=return_final_state)


def _mlstm_triton(q, k, v, i, f, *, initial_state=None, reset=None, return_final_state=False, eps=1e-6,
                  chunk_size=64, form="chunkwise"):
    """Chunkwise mLSTM on our Triton kernel (the torch reference for fp64, or when the self-check fails).
    triton is imported on first use: ``import xlstm_kernels`` works without it (the self-check then fails
    and the call falls back)."""
    _chunkwise_only("triton", form)
    kwargs = dict(initial_state=initial_state, reset=reset, return_final_state=return_final_state, eps=eps,
                  chunk_size=chunk_size)
    if _self_checked("mlstm_chunkwise", selfcheck.mlstm_probe, q, DK=q.shape[-1], DV=v.shape[-1],
                     chunk_size=chunk_size):
        from .mlstm import chunkwise_triton

        return chunkwise_triton.mlstm_chunkwise_triton(q, k, v, i, f, **kwargs)
    return mlstm_chunkwise(q, k, v, i, f, **kwargs)


def _slstm_triton(wx, R, b, *, initial_state=None, reset=None, return_final_state=False):
    """Recurrent sLSTM on our Triton kernel (the torch reference for fp64, or when the self-check fails)."""
    kwargs = dict(initial_state=initial_state, reset=reset, return_final_state=return_final_state)
    if _self_checked("slstm_recurrent", selfcheck.slstm_probe, wx, DH=wx.shape[-1]):
        from .slstm import recurrent_triton

        return recurrent_triton.slstm_recurrent_triton(wx, R, b, **kwargs)
    return slstm_recurrent_manual_backward(wx, R, b, **kwargs)


def _mlstm_fla(q, k, v, i, f, *, initial_state=None, reset=None, return_final_state=False, eps=1e-6,
               chunk_size=64, form="chunkwise"):
    """mLSTM on flash-linear-attention's chunk_simple_gla (``mlstm/fla.py``), self-checked as kernel
    ``mlstm_fla`` (the torch recurrent step for single tokens, the torch chunkwise reference for fp64 or
    when the self-check fails)."""
    _chunkwise_only("fla", form)
    kwargs = dict(initial_state=initial_state, reset=reset, return_final_state=return_final_state, eps=eps)
    if q.shape[2] == 1:  # generation: one recurrent step, as backend="torch" takes it
        return mlstm_recurrent(q, k, v, i, f, **kwargs)
    kwargs["chunk_size"] = chunk_size
    if _self_checked("mlstm_fla", selfcheck.mlstm_fla_probe, q, DK=q.shape[-1], DV=v.shape[-1],
                     chunk_size=chunk_size):
        from .mlstm import fla

        return fla.mlstm_fla(q, k, v, i, f, **kwargs)
    return mlstm_chunkwise(q, k, v, i, f, **kwargs)


register_backend("torch", _mlstm_torch, _slstm_torch, info=BackendInfo(forms=tuple(MLSTM_TORCH_FORMS)))
register_backend("triton", _mlstm_triton, _slstm_triton)
register_backend("fla", _mlstm_fla, _slstm_triton, requires=("fla", "triton"),
                 install_hint=f"backend 'fla' needs flash-linear-attention >= 0.6 and triton: {FLA_INSTALL_HINT}",
                 info=BackendInfo(chunk_sizes=FLA_CHUNK_SIZES))


# ---------------------------------------------------------------------------------------------------
# selection
# ---------------------------------------------------------------------------------------------------
# backend="auto" (the model default): on CUDA the first usable of AUTO_CUDA_ORDER, else the torch
# reference (CPU has no compiled Triton; the interpreter is for tests). The Triton/FLA backends are
# self-checked on first use at the model's own shapes and, on CUDA, raise when the check fails (see
# selfcheck.py), so "auto" never silently trains on a wrong kernel. FLA first: its chunk_simple_gla is
# the tuned production kernel; ours (triton) is the fallback when flash-linear-attention is not
# installed. tools/bench/kernels.py measures both on the GPU; flip the order if ours wins there.
AUTO_CUDA_ORDER = ("fla", "triton")


def _unusable(name: str, form: str, chunk_size: int | None) -> str | None:
    """Why the registered backend ``name`` cannot run this configuration (None if it can)."""
    if name not in MLSTM_BACKENDS:
        return MISSING_BACKENDS.get(name, f"{name} not registered")
    info = BACKEND_INFO.get(name, BackendInfo())
    if form not in info.forms:
        return f"{name}: mlstm_form={form!r} not computed"
    if chunk_size is not None and info.chunk_sizes is not None and chunk_size not in info.chunk_sizes:
        return f"{name}: chunk_size {chunk_size} not in {info.chunk_sizes}"
    return None


def resolve_backend(backend: str, device, form: str = "chunkwise", chunk_size: int | None = None) -> tuple[str, str]:
    """The mLSTM backend that runs on ``device`` for the configured name, and why (printed by the trainer)."""
    device = torch.device(device)
    if backend != "auto":
        return backend, "configured"
    if form != "chunkwise":
        return "torch", f"auto: mlstm_form={form!r} exists only in the torch reference"
    if device.type != "cuda":
        return "torch", f"auto: {device.type} device, the pure-PyTorch reference (Triton kernels need CUDA)"
    if importlib.util.find_spec("triton") is None:
        return "torch", "auto: triton is not installed (CUDA builds of torch ship it; reinstall torch)"
    skipped = []
    for name in AUTO_CUDA_ORDER:
        why_not = _unusable(name, form, chunk_size)
        if why_not is None:
            why = f" (skipped {'; '.join(skipped)})" if skipped else ""
            return name, f"auto: CUDA, the first usable of {list(AUTO_CUDA_ORDER)}{why}"
        skipped.append(why_not)
    return "torch", f"auto: no Triton backend usable ({'; '.join(skipped)})"


def _unknown_backend(kind: str, backend: str, available) -> ValueError:
    if backend in MISSING_BACKENDS:
        return ValueError(f"{kind} backend {backend!r} is not available: {MISSING_BACKENDS[backend]}")
    return ValueError(f"unknown {kind} backend {backend!r}; available: {sorted(available)}")


def mlstm(q, k, v, i, f, *, backend="torch", **kwargs):
    """mLSTM over a sequence: q, k (B,NH,S,DHQK), v (B,NH,S,DHV), i, f (B,NH,S) pre-activations.

    backend: a name in MLSTM_BACKENDS, or "auto" (``resolve_backend`` picks by q's device).

    kwargs: initial_state (a state, or a function of the sequence's summary: see the module docstring),
    reset, return_final_state, eps, chunk_size, form (torch backend).
    """
    if backend == "auto":
        backend = resolve_backend(backend, q.device, kwargs.get("form", "chunkwise"), kwargs.get("chunk_size"))[0]
    if backend not in MLSTM_BACKENDS:
        raise _unknown_backend("mLSTM", backend, MLSTM_BACKENDS)
    with _without_autocast(q.device):  # every backend (and its torch fallbacks) manages its own precision
        if backend != "torch" and callable(kwargs.get("initial_state")):
            kwargs["initial_state"] = _state_from_summary(kwargs["initial_state"], k, v, i, f, kwargs.get("reset"))
        return MLSTM_BACKENDS[backend](q, k, v, i, f, **kwargs)


def slstm(wx, R, b, *, backend="torch", **kwargs):
    """sLSTM over a sequence: wx (B,S,4,NH,DH) input pre-activations, R (4,NH,DH,DH), b (4,NH,DH)."""
    if backend == "auto":
        backend = resolve_backend(backend, wx.device)[0]
    if backend not in SLSTM_BACKENDS:
        raise _unknown_backend("sLSTM", backend, SLSTM_BACKENDS)
    with _without_autocast(wx.device):
        return SLSTM_BACKENDS[backend](wx, R, b, **kwargs)
