"""xLSTM cell kernels behind one dispatch (installed as ``xlstm_kernels``).

Every backend has the signatures of the pure-PyTorch references in ``mlstm/naive.py``,
``mlstm/chunkwise.py`` and ``slstm/naive.py`` (read their docstrings for shapes and conventions).
``backend="torch"`` is the reference; faster backends register themselves in ``MLSTM_BACKENDS`` /
``SLSTM_BACKENDS`` and must match it.
"""

from __future__ import annotations

import contextlib
import importlib.util

import torch

from .chunking import ChunkPlan, chunk_plan
from .mlstm import (MLSTMState, mlstm_chunkwise, mlstm_final_state, mlstm_parallel, mlstm_recurrent, mlstm_step,
                    zero_state)
from .slstm import SLSTMState, slstm_recurrent, slstm_step, slstm_zero_state

MLSTM_TORCH_FORMS = {"chunkwise": mlstm_chunkwise, "parallel": mlstm_parallel, "recurrent": mlstm_recurrent}


def _without_autocast(device: torch.device):
    """The cells compute their state in fp32 (fp64 for fp64 inputs) whatever the input dtype. Under an
    autocast region the torch cells' matmuls (q.C, q.n of the normaliser, y.R) would silently run in
    bf16/fp16 (relative error ~1e-2 instead of ~1e-6), so autocast is switched off inside every backend
    (the Triton/FLA kernels and their torch fallbacks choose their precision themselves); inputs are
    upcast explicitly and the output keeps the input dtype."""
    if torch.amp.is_autocast_available(device.type) and torch.is_autocast_enabled(device.type):
        return torch.autocast(device.type, enabled=False)
    return contextlib.nullcontext()


def _mlstm_torch(q, k, v, i, f, *, initial_state=None, reset=None, return_final_state=False, eps=1e-6,
                 chunk_size=64, form="chunkwise"):
    if form not in MLSTM_TORCH_FORMS:
        raise ValueError(f"mLSTM torch form must be one of {sorted(MLSTM_TORCH_FORMS)}, got {form!r}")
    kwargs = dict(initial_state=initial_state, reset=reset, return_final_state=return_final_state, eps=eps)
    if q.shape[2] == 1:  # a single token (generation): one recurrent step, whatever the training form
        form = "recurrent"
    if form == "chunkwise":
        kwargs["chunk_size"] = chunk_size
    return MLSTM_TORCH_FORMS[form](q, k, v, i, f, **kwargs)


def _slstm_torch(wx, R, b, *, initial_state=None, reset=None, return_final_state=False):
    return slstm_recurrent(wx, R, b, initial_state=initial_state, reset=reset, return_final_state=return_final_state)


def _mlstm_triton(q, k, v, i, f, *, initial_state=None, reset=None, return_final_state=False, eps=1e-6,
                  chunk_size=64, form="chunkwise"):
    # triton is imported lazily: `import xlstm_kernels` works without it (the self-check then falls back).
    from .selfcheck import mlstm_triton_backend

    return mlstm_triton_backend(q, k, v, i, f, initial_state=initial_state, reset=reset,
                                return_final_state=return_final_state, eps=eps, chunk_size=chunk_size, form=form)


def _slstm_triton(wx, R, b, *, initial_state=None, reset=None, return_final_state=False):
    from .selfcheck import slstm_triton_backend

    return slstm_triton_backend(wx, R, b, initial_state=initial_state, reset=reset,
                                return_final_state=return_final_state)


def _mlstm_fla(q, k, v, i, f, *, initial_state=None, reset=None, return_final_state=False, eps=1e-6,
               chunk_size=64, form="chunkwise"):
    # flash-linear-attention is imported lazily (importing it takes seconds and pulls in transformers).
    from .selfcheck import mlstm_fla_backend

    return mlstm_fla_backend(q, k, v, i, f, initial_state=initial_state, reset=reset,
                             return_final_state=return_final_state, eps=eps, chunk_size=chunk_size, form=form)


# "triton": Triton kernels (kernels/mlstm/chunkwise_triton.py, kernels/slstm/recurrent_triton.py), checked
# against "torch" on first use per (device, dtype) with a torch fallback (kernels/selfcheck.py,
# env XLSTM_KERNEL_SELFCHECK=warn|raise|off). The triton mLSTM computes the chunkwise form only.
MLSTM_BACKENDS = {"torch": _mlstm_torch, "triton": _mlstm_triton}
SLSTM_BACKENDS = {"torch": _slstm_torch, "triton": _slstm_triton}

# "fla": the mLSTM on flash-linear-attention's chunk_simple_gla (kernels/mlstm/fla.py), self-checked like
# "triton" (kernel name "mlstm_fla"). FLA has no sLSTM, so sLSTM blocks of a model configured with
# backend="fla" use our Triton sLSTM kernel. Registered only when the packages are installed (found, not
# imported: the import happens on first use); otherwise MISSING_BACKENDS says what to install.
MISSING_BACKENDS: dict[str, str] = {}
if importlib.util.find_spec("fla") is not None and importlib.util.find_spec("triton") is not None:
    MLSTM_BACKENDS["fla"] = _mlstm_fla
    SLSTM_BACKENDS["fla"] = _slstm_triton
else:
    MISSING_BACKENDS["fla"] = ("backend 'fla' needs flash-linear-attention >= 0.6 and triton: pip install "
                               "flash-linear-attention (or: pip install 'xlstm-pretrain[fla]')")


# backend="auto" (the model default): on CUDA the first available of AUTO_CUDA_ORDER, else the torch
# reference (CPU has no compiled Triton; the interpreter is for tests). The Triton/FLA backends are
# self-checked on first use at the model's own shapes and, on CUDA, raise when the check fails (see
# selfcheck.py), so "auto" never silently trains on a wrong kernel. FLA first: its chunk_simple_gla is
# the tuned production kernel; ours (triton) is the fallback when flash-linear-attention is not
# installed. tools/bench/kernels.py measures both on the GPU; flip the order if ours wins there.
AUTO_CUDA_ORDER = ("fla", "triton")


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
        if name not in MLSTM_BACKENDS:
            skipped.append(MISSING_BACKENDS.get(name, f"{name} not registered"))
        elif name == "fla" and chunk_size is not None and chunk_size not in _fla_chunk_sizes():
            skipped.append(f"fla: chunk_size {chunk_size} not in {_fla_chunk_sizes()}")
        else:
            why = f" (skipped {'; '.join(skipped)})" if skipped else ""
            return name, f"auto: CUDA, the first usable of {list(AUTO_CUDA_ORDER)}{why}"
    return "torch", f"auto: no Triton backend usable ({'; '.join(skipped)})"


def _fla_chunk_sizes() -> tuple[int, ...]:
    from .mlstm.fla import FLA_CHUNK_SIZES  # the module only, not flash-linear-attention itself

    return FLA_CHUNK_SIZES


def register_document_boundaries(reset: torch.Tensor, reset_host: torch.Tensor) -> None:
    """Hand the kernels the host copy of a batch's document-boundary mask (``reset`` is the same mask on
    the compute device). Kernels that need boundary positions on the host (FLA's varlen layout, for the
    mLSTM and the fused causal conv) take them from here instead of synchronising with the device in
    every layer. Call once per micro-batch, after moving the mask (costs one host nonzero and a small
    upload per batch, whatever the backend). Unregistered masks still work, with one device
    synchronisation per FLA layer."""
    from .mlstm.fla import register_host_boundaries

    register_host_boundaries(reset, reset_host)


def _unknown_backend(kind: str, backend: str, available) -> ValueError:
    if backend in MISSING_BACKENDS:
        return ValueError(f"{kind} backend {backend!r} is not available: {MISSING_BACKENDS[backend]}")
    return ValueError(f"unknown {kind} backend {backend!r}; available: {sorted(available)}")


def mlstm(q, k, v, i, f, *, backend="torch", **kwargs):
    """mLSTM over a sequence: q, k (B,NH,S,DHQK), v (B,NH,S,DHV), i, f (B,NH,S) pre-activations.

    backend: a name in MLSTM_BACKENDS, or "auto" (``resolve_backend`` picks by q's device).

    kwargs: initial_state, reset, return_final_state, eps, chunk_size, form (torch backend).
    """
    if backend == "auto":
        backend = resolve_backend(backend, q.device, kwargs.get("form", "chunkwise"), kwargs.get("chunk_size"))[0]
    if backend not in MLSTM_BACKENDS:
        raise _unknown_backend("mLSTM", backend, MLSTM_BACKENDS)
    with _without_autocast(q.device):  # every backend (and its torch fallbacks) manages its own precision
        return MLSTM_BACKENDS[backend](q, k, v, i, f, **kwargs)


def slstm(wx, R, b, *, backend="torch", **kwargs):
    """sLSTM over a sequence: wx (B,S,4,NH,DH) input pre-activations, R (4,NH,DH,DH), b (4,NH,DH)."""
    if backend == "auto":
        backend = resolve_backend(backend, wx.device)[0]
    if backend not in SLSTM_BACKENDS:
        raise _unknown_backend("sLSTM", backend, SLSTM_BACKENDS)
    with _without_autocast(wx.device):
        return SLSTM_BACKENDS[backend](wx, R, b, **kwargs)


__all__ = [
    "ChunkPlan", "chunk_plan", "AUTO_CUDA_ORDER", "MLSTMState", "SLSTMState", "MISSING_BACKENDS", "resolve_backend", "MLSTM_BACKENDS", "SLSTM_BACKENDS", "mlstm", "slstm",
    "mlstm_chunkwise", "mlstm_final_state", "mlstm_parallel", "mlstm_recurrent", "mlstm_step", "register_document_boundaries",
    "slstm_recurrent", "slstm_step",
    "slstm_zero_state", "zero_state",
]
