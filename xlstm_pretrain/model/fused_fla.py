"""Optional flash-linear-attention fused ops for the model (``model.fused_ops="fla"``).

The torch code in ``components.py`` / ``lm.py`` stays the reference and the default; with
``fused_ops="fla"`` these functions replace, per call, the torch computation of
  - ``LayerNorm`` (bias-free, scale ``1 + w`` or ``w``)  -> ``fla.modules.norm.layernorm.layer_norm``,
  - ``RMSNorm``                                          -> ``rms_norm``,
  - ``MultiHeadLayerNorm`` (per-head LayerNorm over DH with a per-channel scale) -> ``group_norm`` with
    ``num_groups = NH`` (FLA reshapes (T, NH*DH) to (T*NH, DH) and reads the weight of group ``row % NH``:
    exactly our per-head norm),
  - ``CausalConv1d`` output (depthwise, bias, no activation; carried state and document resets) ->
    ``fla.modules.causal_conv1d.causal_conv1d``,
  - the LM loss (``lm_loss_from_hidden`` in ``parallel/tensor_parallel.py``) ->
    ``fused_linear_cross_entropy_loss`` (logits never materialised), for the paper family (no soft cap).
    FLA's ``logit_softcapping`` is the same cap * tanh(z / cap) as the large family's, but its tanh does not
    run under the Triton interpreter (TypeError), so soft-capped models keep the logits path (untested).
Each op computes the same function as the torch code: same parameters (state dicts are interchangeable),
same eps (added to the variance inside the square root in both), reductions in fp32. Differences are
rounding only: FLA multiplies by the scale in fp32 before the single cast to the output dtype (the torch
RMSNorm casts the normalised x first, then multiplies); outputs are cast to the dtype the torch code returns.

When FLA runs (``use_fla(x)``): the tensor is on a CUDA device, or on the CPU with TRITON_INTERPRET=1 (the
tests: FLA's Triton kernels under the interpreter); and its dtype is fp32 / bf16 / fp16. Otherwise (CPU
without the interpreter, fp64 reference checks, meta tensors) the torch code runs, so a model configured
with "fla" still runs and checkpoints anywhere.

Causal conv mapping. FLA's state is (N, C, W) holding the last W = K inputs of which the conv reads the
last K-1; ours is (B, K-1, C): FLA's initial state is ours transposed with a zero column in front (its
gradient flows back through the pad/transpose). Document resets: the B rows are flattened into one
sequence cut at every row start and every reset (``cu_seqlens``, batch 1: ``xlstm_kernels.document_segments``,
shared with the FLA mLSTM; no host sync when the trainer registered the batch's mask); a row's first segment starts from the
row's state (zeros when the row resets at t = 0), every other segment from zeros. Only the conv output is
FLA's: the returned state (the last K-1 inputs, inputs of finished documents dropped) is a slice of the
input, computed by the torch code (no kernel needed; this also keeps FLA's final-state backward out).
Kernel size 1 (no history) uses torch. A carried state (generation, TBPTT, context parallelism) also
uses torch: FLA's initial-state branches (forward and dh0 kernels) fail under the Triton interpreter
("mask has unsupported dtype"), so that path could not be tested here; ``causal_conv1d`` below supports it
(the mapping above) but ``CausalConv1d`` calls it with ``state=None`` only.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F

import xlstm_kernels

_FLA_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def use_fla(x: torch.Tensor) -> bool:
    """Whether a fused_ops="fla" module hands ``x`` to FLA (see the module docstring)."""
    if x.dtype not in _FLA_DTYPES:
        return False
    if x.device.type == "cuda":
        return True
    return x.device.type == "cpu" and os.environ.get("TRITON_INTERPRET", "0") == "1"


def _mod(name: str):
    """An FLA module, through the kernels' single import point (install hint; interpreter shims)."""
    return xlstm_kernels.import_fla(name, needed_by="model.fused_ops='fla'")


# ---- norms ------------------------------------------------------------------------------------------


def layer_norm(x: torch.Tensor, scale: torch.Tensor, eps: float) -> torch.Tensor:
    """F.layer_norm(x.float()) * scale.float(), cast to x.dtype (``components.LayerNorm``)."""
    ln = _mod("fla.modules.norm.layernorm")
    return ln.layer_norm(x, scale, None, eps=eps)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """x * rsqrt(mean(x^2) + eps) * weight (``components.RMSNorm``), in the dtype torch promotion gives."""
    ln = _mod("fla.modules.norm.layernorm")
    return ln.rms_norm(x, weight, None, eps=eps).to(torch.promote_types(x.dtype, weight.dtype))


def multihead_layer_norm(x: torch.Tensor, scale: torch.Tensor, eps: float) -> torch.Tensor:
    """(B, S, NH, DH) -> per-head LayerNorm * per-channel scale, (B, S, NH*DH) in x.dtype."""
    B, S, NH, DH = x.shape
    ln = _mod("fla.modules.norm.layernorm")
    return ln.group_norm(x.reshape(B, S, NH * DH), scale, None, eps=eps, num_groups=NH)


# ---- causal conv ------------------------------------------------------------------------------------


def causal_conv1d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, state: torch.Tensor | None,
                  reset: torch.Tensor | None) -> torch.Tensor:
    """y (B, S, C) of ``components.CausalConv1d`` (weight (C, K), state (B, K-1, C) or None, reset (B, S))."""
    conv = _mod("fla.modules.causal_conv1d")
    B, S, C = x.shape
    dt = x.dtype
    w = weight.to(dt).contiguous()
    b = None if bias is None else bias.to(dt)
    h0 = None
    if state is not None:
        h0 = F.pad(state.to(dt).transpose(1, 2), (1, 0))  # (B, C, K): FLA keeps K inputs, reads the last K-1
    kwargs = {}
    xf = x
    if reset is not None:
        reset = reset.to(device=x.device, dtype=torch.bool)
        _, cu, cu_cpu, first_seg, _ = xlstm_kernels.document_segments(reset)
        xf = x.reshape(1, B * S, C)
        if h0 is not None:
            N = cu.numel() - 1
            src = torch.full((N,), B, dtype=torch.long, device=x.device)
            rows = torch.arange(B, device=x.device)
            src[first_seg.to(x.device)] = torch.where(reset[:, 0], B, rows)  # a reset at t = 0 drops the state
            h0 = torch.cat([h0, h0.new_zeros(1, *h0.shape[1:])])[src]
        kwargs = dict(cu_seqlens=cu, cu_seqlens_cpu=cu_cpu)
    y, _ = conv.causal_conv1d(xf.contiguous(), w, b, initial_state=None if h0 is None else h0.contiguous(),
                              output_final_state=False, activation=None, **kwargs)
    return y.reshape(B, S, C)


# ---- fused linear cross entropy -------------------------------------------------------------------


def linear_cross_entropy_sum(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor,
                             soft_cap: float | None, ignore_index: int = -100) -> torch.Tensor:
    """sum over tokens of CE(soft_cap(hidden @ weight^T), labels), 0 for ignored labels; a scalar (fp32).

    FLA computes the gradients of hidden and weight chunk by chunk in the forward (the logits of one chunk
    of tokens at a time, never all of them) and scales them in the backward.
    """
    flce = _mod("fla.modules.fused_linear_cross_entropy")
    H = hidden.shape[-1]
    return flce.fused_linear_cross_entropy_loss(
        hidden.reshape(-1, H), labels.reshape(-1), weight, None, ignore_index=ignore_index,
        logit_softcapping=soft_cap, reduction="sum")
