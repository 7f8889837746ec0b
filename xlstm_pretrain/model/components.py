"""Small building blocks shared by both xLSTM families: norms, causal conv, headwise linear, FFNs."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from . import fused_fla
from .fused_fla import use_fla


def soft_cap(x: torch.Tensor, cap: float | None) -> torch.Tensor:
    """cap * tanh(x / cap): smooth clamp of gate pre-activations and logits (xLSTM-7B)."""
    return x if cap is None else cap * torch.tanh(x / cap)


# ---- init helpers (xlstm/components/init.py semantics) ------------------------------------------


def small_init_(w: torch.Tensor, dim: int) -> torch.Tensor:
    """N(0, sqrt(2 / (5 dim))) ("small init", Nguyen & Salazar 2019)."""
    return nn.init.normal_(w, mean=0.0, std=math.sqrt(2.0 / (5.0 * dim)))


def wang_init_(w: torch.Tensor, dim: int, num_blocks: int) -> torch.Tensor:
    """N(0, 2 / num_blocks / sqrt(dim)) for output projections (Wang, GPT-J)."""
    return nn.init.normal_(w, mean=0.0, std=2.0 / num_blocks / math.sqrt(dim))


# ---- fused ops switch ---------------------------------------------------------------------------

FUSED_OPS = ("torch", "fla")


def set_fused_ops(model: nn.Module, fused_ops: str) -> None:
    """Set ``fused_ops`` on every norm / causal conv of ``model`` (``ModelConfig.fused_ops``; see
    ``fused_fla.py``). "torch" (the class default) is the reference; "fla" calls flash-linear-attention's
    fused kernels where ``fused_fla.use_fla(x)`` holds and the torch code elsewhere. No parameter changes."""
    if fused_ops not in FUSED_OPS:
        raise ValueError(f"fused_ops must be one of {FUSED_OPS}, got {fused_ops!r}")
    for m in model.modules():
        if isinstance(m, (LayerNorm, RMSNorm, MultiHeadLayerNorm, CausalConv1d)):
            m.fused_ops = fused_ops


# ---- norms --------------------------------------------------------------------------------------


def upcast(x: torch.Tensor) -> torch.Tensor:
    """x in fp32 for half-precision (and fp32) tensors, unchanged in fp64: reductions never lose precision,
    and an fp64 model (evaluation, reference tests) stays fp64 end to end."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


class LayerNorm(nn.Module):
    """LayerNorm without bias over the last dim.

    ``residual_weight=True`` stores the weight as an offset from 1 (zeros at init; the paper family),
    so weight decay pulls the scale towards 1. Reductions run in fp32.
    """

    fused_ops = "torch"  # set_fused_ops

    def __init__(self, dim: int, eps: float = 1e-5, residual_weight: bool = True):
        super().__init__()
        self.dim, self.eps, self.residual_weight = dim, eps, residual_weight
        self.weight = nn.Parameter(torch.zeros(dim) if residual_weight else torch.ones(dim))

    def scale(self) -> torch.Tensor:
        return 1.0 + self.weight if self.residual_weight else self.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fused_ops == "fla" and use_fla(x):
            return fused_fla.layer_norm(x, self.scale(), self.eps)
        y = F.layer_norm(upcast(x), (self.dim,), eps=self.eps)
        return (y * upcast(self.scale())).to(x.dtype)

    def reset_parameters(self):
        nn.init.zeros_(self.weight) if self.residual_weight else nn.init.ones_(self.weight)


class RMSNorm(nn.Module):
    """x * rsqrt(mean(x^2) + eps) * weight, reductions in fp32 (xLSTM-7B)."""

    fused_ops = "torch"  # set_fused_ops

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fused_ops == "fla" and use_fla(x):
            return fused_fla.rms_norm(x, self.weight, self.eps)
        xf = upcast(x)
        y = (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype)
        return y * self.weight

    def reset_parameters(self):
        nn.init.ones_(self.weight)


class MultiHeadLayerNorm(nn.Module):
    """Per-head LayerNorm over the head dim with a per-channel scale, for (B, S, NH, DH) -> (B, S, NH*DH).

    The paper family stores the scale as an offset from 1 (eps 1e-5, like its group norm); the large
    family stores it directly (eps 1e-6). Reductions in fp32.
    """

    fused_ops = "torch"  # set_fused_ops

    def __init__(self, num_heads: int, head_dim: int, eps: float, residual_weight: bool):
        super().__init__()
        self.num_heads, self.head_dim, self.eps, self.residual_weight = num_heads, head_dim, eps, residual_weight
        n = num_heads * head_dim
        self.weight = nn.Parameter(torch.zeros(n) if residual_weight else torch.ones(n))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, S, NH, DH = x.shape
        scale = 1.0 + self.weight if self.residual_weight else self.weight
        if self.fused_ops == "fla" and use_fla(x):
            return fused_fla.multihead_layer_norm(x, scale, self.eps)
        y = F.layer_norm(upcast(x), (DH,), eps=self.eps).reshape(B, S, NH * DH)
        return (y * upcast(scale)).to(x.dtype)

    def reset_parameters(self):
        nn.init.zeros_(self.weight) if self.residual_weight else nn.init.ones_(self.weight)


# ---- causal depthwise convolution with state and document resets --------------------------------


class CausalConv1d(nn.Module):
    """Depthwise causal conv: y_t = sum_{j<K} w[c, j] x_{t-K+1+j} + b[c].

    ``state`` holds the last K-1 inputs before the sequence (zeros = no history). With ``reset``
    (B, S), inputs from an earlier document are not seen (the conv restarts at each document), and the
    returned state keeps only the last document's inputs, so state passing stays exact across resets.
    """

    fused_ops = "torch"  # set_fused_ops: "fla" computes y with FLA's causal_conv1d (the state is a slice)

    def __init__(self, channels: int, kernel_size: int = 4, bias: bool = True):
        super().__init__()
        self.channels, self.kernel_size = channels, kernel_size
        self.weight = nn.Parameter(torch.empty(channels, 1, kernel_size))  # nn.Conv1d layout
        self.bias = nn.Parameter(torch.zeros(channels)) if bias else None
        self.reset_parameters()

    def reset_parameters(self):
        # PyTorch's Conv1d default init (fan_in = K for a depthwise conv), as the official model uses.
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            bound = 1.0 / math.sqrt(self.kernel_size)
            nn.init.uniform_(self.bias, -bound, bound)

    def zero_state(self, batch: int, dtype=None, device=None) -> torch.Tensor:
        return torch.zeros(batch, self.kernel_size - 1, self.channels, dtype=dtype, device=device)

    def forward(self, x: torch.Tensor, state: torch.Tensor | None = None, reset: torch.Tensor | None = None):
        """x: (B, S, C). Returns (y (B, S, C), new_state (B, K-1, C))."""
        B, S, C = x.shape
        K = self.kernel_size
        state_in = state
        # FLA only without a carried state (the training path): its initial-state kernels fail under the
        # Triton interpreter, so that path is untested and left to torch (fused_fla.py)
        fused = self.fused_ops == "fla" and K > 1 and state is None and use_fla(x)
        if state is None:
            state = self.zero_state(B, x.dtype, x.device)
        xx = torch.cat([state.to(x.dtype), x], dim=1)  # (B, K-1+S, C)
        w = self.weight[:, 0, :].to(x.dtype)  # (C, K)
        if reset is not None:
            # document index per position (history belongs to document 0, the one the state continues)
            seg = torch.cat([reset.new_zeros(B, K - 1), reset], dim=1).long().cumsum(1)  # (B, K-1+S)
        if fused:
            # the output from FLA (bias included); the state below is a slice of xx either way
            y = fused_fla.causal_conv1d(x, self.weight[:, 0, :], self.bias, state_in, reset)
        elif reset is None:
            y = F.conv1d(xx.transpose(1, 2), w[:, None, :], groups=C).transpose(1, 2)
        else:
            y = DocumentMaskedConv.apply(xx, w, seg)
        if self.bias is not None and not fused:
            y = y + self.bias.to(x.dtype)
        tail = xx[:, xx.shape[1] - (K - 1) :]
        if reset is not None:
            # Inputs of a document that ended inside the tail are invisible to whatever continues the
            # sequence (the next segment's tokens belong to the last document or start a new one): drop them.
            tail_seg = seg[:, seg.shape[1] - (K - 1) :]
            tail = tail * (tail_seg == seg[:, -1:])[..., None]
        return y, tail


def _same_document(seg: torch.Tensor, K: int, lag: int) -> torch.Tensor:
    """(B, S, 1) mask: is input x_{t-lag} in token t's document (seg over the K-1 history + S positions)."""
    S = seg.shape[1] - (K - 1)
    return (seg[:, K - 1 - lag : K - 1 - lag + S] == seg[:, K - 1 :])[..., None]


class DocumentMaskedConv(torch.autograd.Function):
    """Depthwise causal conv whose taps skip inputs of other documents: y_t = sum_lag w[:, K-1-lag]
    x_{t-lag} [same document]. Written out in autograd the masked tap products would each be saved,
    K x (B, S, C) for backward; this saves only the padded input and the document index (what
    F.conv1d saves without resets, plus B*(S+K-1) small ints) and rebuilds the masks in backward."""

    @staticmethod
    def forward(ctx, xx: torch.Tensor, w: torch.Tensor, seg: torch.Tensor) -> torch.Tensor:
        K = w.shape[1]
        S = xx.shape[1] - (K - 1)
        seg = seg.to(torch.int32)  # document index per position: small next to C channels
        y = xx.new_zeros(xx.shape[0], S, xx.shape[2])
        for lag in range(K):  # tap w[:, K-1-lag] reads x_{t-lag}
            y += xx[:, K - 1 - lag : K - 1 - lag + S] * _same_document(seg, K, lag) * w[:, K - 1 - lag]
        ctx.save_for_backward(xx, w, seg)
        return y

    @staticmethod
    def backward(ctx, dy: torch.Tensor):
        xx, w, seg = ctx.saved_tensors
        K = w.shape[1]
        S = dy.shape[1]
        dxx = torch.zeros_like(xx) if ctx.needs_input_grad[0] else None
        acc = torch.promote_types(w.dtype, torch.float32)  # sum the weight gradient in >= fp32
        dw = torch.zeros(w.shape, dtype=acc, device=w.device) if ctx.needs_input_grad[1] else None
        for lag in range(K):
            g = dy * _same_document(seg, K, lag)
            if dxx is not None:
                dxx[:, K - 1 - lag : K - 1 - lag + S] += g * w[:, K - 1 - lag]
            if dw is not None:
                dw[:, K - 1 - lag] = (g.to(acc) * xx[:, K - 1 - lag : K - 1 - lag + S].to(acc)).sum((0, 1))
        return dxx, None if dw is None else dw.to(w.dtype), None


# ---- linear layers -------------------------------------------------------------------------------


class LinearHeadwise(nn.Module):
    """Block-diagonal linear map: ``num_blocks`` independent (out/nb x in/nb) blocks (no bias)."""

    def __init__(self, in_features: int, out_features: int, num_blocks: int):
        super().__init__()
        if in_features % num_blocks or out_features % num_blocks:
            raise ValueError(f"LinearHeadwise: {num_blocks} blocks must divide {in_features} and {out_features}")
        self.num_blocks = num_blocks
        self.weight = nn.Parameter(torch.empty(num_blocks, out_features // num_blocks, in_features // num_blocks))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xs = x.reshape(*x.shape[:-1], self.num_blocks, -1)
        return torch.einsum("...hd,hod->...ho", xs, self.weight).reshape(*x.shape[:-1], -1)


class GatedFeedForward(nn.Module):
    """down(act(gate) * up) with a fused up/gate projection ``proj_up`` = [gate; up] (paper: GeLU)."""

    def __init__(self, dim: int, hidden: int, act: str = "gelu"):
        super().__init__()
        self.hidden = hidden
        self.act = {"gelu": F.gelu, "silu": F.silu, "relu": F.relu}[act]
        self.proj_up = nn.Linear(dim, 2 * hidden, bias=False)
        self.proj_down = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.proj_up(x).split(self.hidden, dim=-1)
        return self.proj_down(self.act(gate) * up)


class SwiGLU(nn.Module):
    """down(SiLU(up_gate x) * up x) with separate projections (xLSTM-7B / HF layout)."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.proj_up_gate = nn.Linear(dim, hidden, bias=False)
        self.proj_up = nn.Linear(dim, hidden, bias=False)
        self.proj_down = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj_down(F.silu(self.proj_up_gate(x)) * self.proj_up(x))
