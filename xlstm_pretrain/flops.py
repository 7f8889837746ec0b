"""Analytic FLOP accounting for both xLSTM families, and MFU.

Everything is *forward FLOPs per token*, by component, summed over all blocks; training FLOPs are
``TRAINING_FLOPS_FACTOR = 3`` x forward (backward ~ 2 x forward, as the 7B paper App. D assumes).
One multiply-accumulate is 2 FLOPs. Model FLOPs, not hardware FLOPs: activation recomputation is
not counted (that is what MFU wants).

Each component is split into
- ``matmul``: matmuls and convolutions (the ops ``torch.utils.flop_counter.FlopCounterMode`` counts);
  block-diagonal (headwise) and depthwise maps count only their real multiply-accumulates;
- ``pointwise``: elementwise and reduction work (norms, activations, gates, residuals, the cell's
  gate/stabiliser arithmetic). Small next to the matmuls; the per-element costs are the estimates
  below, with exp / max / mask / activation each counted as 1 FLOP (the official counter's factors
  ``F_exp = F_max = F_mask = F_swish = 1``).

The mLSTM cell is counted in its chunkwise form (what training runs) with the chunks the kernels cut
(``xlstm_kernels.chunk_plan``, kernels/chunking.py: ``L = min(cfg.chunk_size, next power of two >=
seq_len)``; the Triton kernels' 16-row floor matters only below 16 tokens); a sequence that is not a
multiple of L pays for its padded last chunk. The exact per-chunk terms are those of the
official counter (xlstm_pretrain/REFERENCE.md §6); per head per token they are dominated by
``4*dqk*dv*(1 + 1/(2L)) + 2*L*(dqk + dv)``. The count does not depend on ``cfg.mlstm_form``.

Unlike the official paper-block counter we also count the i/f gate projections Linear(3D -> Nh)
(+0.7 % of a 125M block) and the final norm; tests/test_flops.py checks the matmul part against
FlopCounterMode on a real forward and backward, and the totals against the reference's examples.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field

from xlstm_kernels import chunk_plan
from xlstm_pretrain.model.config import ModelConfig

TRAINING_FLOPS_FACTOR = 3  # forward + backward (2 x forward)

# Per-element costs of the small terms (estimates; they are < 1 % of a block).
LAYERNORM_FLOPS = 5  # mean, centre, square-and-sum, scale by rstd, weight
RMSNORM_FLOPS = 4  # square-and-sum, scale by rstd, weight, (mean folded in)
ACTIVATION_FLOPS = 1  # SiLU / GeLU / sigmoid / tanh / exp, as the official counter's F_* = 1
SOFT_CAP_FLOPS = 3  # cap * tanh(x / cap)
SLSTM_CELL_POINTWISE_FLOPS = 15  # per unit and token: 5 F_exp + 9 + F_div (official sLSTM counter)
F_EXP = F_MAX = F_MASK = 1  # mLSTM cell factors of the official counter


# ---- containers ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Flops:
    """FLOPs of one component: matmul-like part and pointwise part."""

    matmul: float = 0.0
    pointwise: float = 0.0

    @property
    def total(self) -> float:
        return self.matmul + self.pointwise

    def __add__(self, other: Flops) -> Flops:
        return Flops(self.matmul + other.matmul, self.pointwise + other.pointwise)

    def __mul__(self, k: float) -> Flops:
        return Flops(self.matmul * k, self.pointwise * k)

    __rmul__ = __mul__


@dataclass(frozen=True)
class FlopBreakdown:
    """Forward FLOPs per token by component (all blocks of a kind summed)."""

    embedding: Flops = field(default_factory=Flops)  # lookups are not FLOPs: always 0
    mlstm_projections: Flops = field(default_factory=Flops)  # up/qkv/gates/down (paper); q,k,v,o,i,f,out (large)
    mlstm_conv: Flops = field(default_factory=Flops)
    mlstm_cell: Flops = field(default_factory=Flops)  # chunkwise
    slstm_projections: Flops = field(default_factory=Flops)  # headwise gate projections from the input
    slstm_conv: Flops = field(default_factory=Flops)
    slstm_cell: Flops = field(default_factory=Flops)  # recurrent matmuls 8*DH*DH per head + pointwise
    ffn: Flops = field(default_factory=Flops)  # gated GeLU FFN (paper sLSTM blocks), SwiGLU (large)
    norms_pointwise: Flops = field(default_factory=Flops)  # norms, skips, output gates, residuals
    lm_head: Flops = field(default_factory=Flops)  # 2*d*V (+ final norm, logit soft cap)

    def components(self) -> dict[str, Flops]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    @property
    def total(self) -> float:
        return sum(c.total for c in self.components().values())

    @property
    def matmul(self) -> float:
        return sum(c.matmul for c in self.components().values())

    @property
    def pointwise(self) -> float:
        return sum(c.pointwise for c in self.components().values())

    def __add__(self, other: FlopBreakdown) -> FlopBreakdown:
        mine, theirs = self.components(), other.components()
        return FlopBreakdown(**{k: mine[k] + theirs[k] for k in mine})

    def __mul__(self, k: float) -> FlopBreakdown:
        return FlopBreakdown(**{name: c * k for name, c in self.components().items()})

    __rmul__ = __mul__


# ---- the mLSTM cell -----------------------------------------------------------------------------


def chunk_size_used(chunk_size: int, seq_len: int) -> int:
    """The chunk length the chunkwise mLSTM runs with: ``xlstm_kernels.chunk_plan`` (the kernels' own rule)."""
    return chunk_plan(seq_len, chunk_size).length


def mlstm_cell_chunkwise(num_heads: int, dqk: int, dv: int, chunk_size: int, seq_len: int) -> Flops:
    """Forward FLOPs per token of the chunkwise mLSTM cell, all heads (official counter's exact terms).

    Per chunk and head (L = chunk length):
      states  (fw_C): 3 + 3L + F_max + F_exp (1 + 2L) + 2 dqk dv + dqk + L (4 dqk dv + 7 dqk)
      outputs (fw_H): L(L+1)/2 + L^2 (7 + F_mask + F_max + F_exp + 2 dqk + 2 dv) + (1 + L) F_max
    Of these, the matmuls are k^T v and q C (2 L dqk dv each), q n (2 L dqk), q k^T (2 L^2 dqk) and
    S v (2 L^2 dv); the rest (gate cumsums, decay matrix, the 2 dqk dv state update, normaliser) is
    pointwise.
    """
    plan = chunk_plan(seq_len, chunk_size)
    L, num_chunks = plan.length, plan.count
    states = 3 + 3 * L + F_MAX + F_EXP * (1 + 2 * L) + 2 * dqk * dv + dqk + L * (4 * dqk * dv + 7 * dqk)
    outputs = L * (L + 1) / 2 + L**2 * (7 + F_MASK + F_MAX + F_EXP + 2 * dqk + 2 * dv) + (1 + L) * F_MAX
    matmul = 4 * L * dqk * dv + 2 * L * dqk + 2 * L**2 * (dqk + dv)
    per_token = num_heads * num_chunks / seq_len
    return Flops(matmul * per_token, (states + outputs - matmul) * per_token)


# ---- blocks (forward FLOPs per token of ONE block) ----------------------------------------------


def paper_mlstm_block(cfg: ModelConfig, seq_len: int) -> FlopBreakdown:
    """x + mLSTMLayer(LayerNorm(x)), pre-up-projection (see model/blocks_paper.py)."""
    d, D, NH = cfg.embedding_dim, cfg.mlstm_inner_dim, cfg.num_heads
    K, bs = cfg.conv1d_kernel_size, cfg.qkv_proj_blocksize
    proj = Flops(
        matmul=2 * d * 2 * D  # proj_up: d -> 2D (x_m, z)
        + 3 * 2 * D * bs  # q, k, v headwise: D/bs blocks of bs x bs, so bs MACs per output
        + 2 * 2 * 3 * D * NH  # i, f gates: Linear(3D -> NH) on concat(q, k, v)
        + 2 * D * d,  # proj_down
        pointwise=2 * NH,  # gate biases
    )
    conv = Flops(matmul=2 * K * D, pointwise=D + ACTIVATION_FLOPS * D)  # depthwise taps; bias, SiLU
    cell = mlstm_cell_chunkwise(NH, cfg.qk_head_dim, cfg.v_head_dim, cfg.chunk_size, seq_len)
    small = Flops(pointwise=LAYERNORM_FLOPS * d  # block pre-norm
                  + LAYERNORM_FLOPS * D  # multi-head outnorm
                  + 2 * D  # + learnable_skip * x_c
                  + ACTIVATION_FLOPS * D + D  # * SiLU(z)
                  + d)  # residual
    return FlopBreakdown(mlstm_projections=proj, mlstm_conv=conv, mlstm_cell=cell, norms_pointwise=small)


def paper_slstm_block(cfg: ModelConfig, seq_len: int) -> FlopBreakdown:
    """x + sLSTMLayer(LayerNorm(x)); x + GatedFFN(LayerNorm(x)), post-up-projection."""
    d, NH, K, F = cfg.embedding_dim, cfg.slstm_num_heads, cfg.slstm_conv1d_kernel_size, cfg.ffn_dim
    DH = d // NH
    conv = Flops(matmul=2 * K * d, pointwise=d + ACTIVATION_FLOPS * d) if K > 0 else Flops()
    proj = Flops(matmul=4 * 2 * d * DH)  # i, f, z, o: headwise d -> d, NH blocks of DH x DH
    # 4 gates x NH heads of y_{t-1}[h] @ R[g, h] (DH x DH): 8*DH*DH per head per token
    cell = Flops(matmul=8 * NH * DH * DH, pointwise=SLSTM_CELL_POINTWISE_FLOPS * d)
    ffn = Flops(matmul=2 * d * 2 * F + 2 * F * d, pointwise=ACTIVATION_FLOPS * F + F)  # up [gate; up], down
    small = Flops(pointwise=2 * LAYERNORM_FLOPS * d  # norm, ffn_norm
                  + LAYERNORM_FLOPS * d  # group norm
                  + 2 * d)  # residuals
    return FlopBreakdown(slstm_projections=proj, slstm_conv=conv, slstm_cell=cell, ffn=ffn, norms_pointwise=small)


def large_block(cfg: ModelConfig, seq_len: int) -> FlopBreakdown:
    """x + mLSTMLayer(RMSNorm(x)); x + SwiGLU(RMSNorm(x)) (xLSTM-7B, see model/blocks_large.py)."""
    d, NH, dqk, dv, F = cfg.embedding_dim, cfg.num_heads, cfg.qk_dim, cfg.v_dim, cfg.ffn_dim
    proj = Flops(
        matmul=2 * d * (2 * dqk + dv)  # q, k, v
        + 2 * d * dv  # output gate pre-activation
        + 2 * 2 * d * NH  # i, f gates
        + 2 * dv * d,  # out_proj
        pointwise=2 * NH * (1 + SOFT_CAP_FLOPS),  # gate biases and soft caps
    )
    cell = mlstm_cell_chunkwise(NH, cfg.qk_head_dim, cfg.v_head_dim, cfg.chunk_size, seq_len)
    ffn = Flops(matmul=3 * 2 * d * F, pointwise=ACTIVATION_FLOPS * F + F)  # up_gate, up, down; SiLU * up
    small = Flops(pointwise=2 * RMSNORM_FLOPS * d  # two pre-norms
                  + LAYERNORM_FLOPS * dv  # multi-head norm
                  + ACTIVATION_FLOPS * dv + dv  # sigmoid(o) * h
                  + 2 * d)  # residuals
    return FlopBreakdown(mlstm_projections=proj, mlstm_cell=cell, ffn=ffn, norms_pointwise=small)


def lm_head(cfg: ModelConfig) -> FlopBreakdown:
    d, V = cfg.embedding_dim, cfg.vocab_size
    norm = (LAYERNORM_FLOPS if cfg.family == "paper" else RMSNORM_FLOPS) * d
    logit_cap = SOFT_CAP_FLOPS * V if cfg.family == "large" else 0
    return FlopBreakdown(lm_head=Flops(matmul=2 * d * V, pointwise=logit_cap), norms_pointwise=Flops(pointwise=norm))


# ---- the model ----------------------------------------------------------------------------------


def flop_breakdown(cfg: ModelConfig, seq_len: int | None = None) -> FlopBreakdown:
    """Forward FLOPs per token by component for the whole model at sequence length ``seq_len``
    (default: ``cfg.context_length``)."""
    S = cfg.context_length if seq_len is None else seq_len
    if S <= 0:
        raise ValueError(f"seq_len must be positive, got {S}")
    total = lm_head(cfg)
    if cfg.family == "paper":
        per_kind = {"mlstm": paper_mlstm_block(cfg, S), "slstm": paper_slstm_block(cfg, S)}
        for kind in cfg.block_types:
            total = total + per_kind[kind]
    else:
        total = total + large_block(cfg, S) * cfg.num_blocks
    return total


def forward_flops_per_token(cfg: ModelConfig, seq_len: int | None = None) -> float:
    return flop_breakdown(cfg, seq_len).total


def training_flops(cfg: ModelConfig, seq_len: int | None, tokens: float) -> float:
    """Total training FLOPs (forward + backward) for ``tokens`` tokens in sequences of ``seq_len``."""
    return TRAINING_FLOPS_FACTOR * forward_flops_per_token(cfg, seq_len) * tokens


def format_report(cfg: ModelConfig, seq_len: int | None = None) -> str:
    """A table of forward FLOPs per token by component (matmul / pointwise / share of the total)."""
    bd = flop_breakdown(cfg, seq_len)
    lines = [f"{'component':<20} {'matmul':>12} {'pointwise':>12} {'total':>12} {'share':>7}"]
    for name, c in bd.components().items():
        if c.total:
            share = c.total / bd.total
            lines.append(f"{name:<20} {c.matmul:>12.4e} {c.pointwise:>12.4e} {c.total:>12.4e} {share:>7.1%}")
    lines.append(f"{'forward per token':<20} {bd.matmul:>12.4e} {bd.pointwise:>12.4e} {bd.total:>12.4e} {1:>7.1%}")
    lines.append(f"{'training per token':<20} {'':>12} {'':>12} {TRAINING_FLOPS_FACTOR * bd.total:>12.4e}")
    return "\n".join(lines)


# ---- MFU ----------------------------------------------------------------------------------------

# Peak dense (no 2:4 sparsity) BF16 tensor-core TFLOP/s per GPU, from NVIDIA's datasheets (H100 SXM /
# PCIe, H200, A100, L40S, HGX B200), cross-checked against public summaries (glennklockwood.com
# "garden/processors" H100, A100, B200 pages; the L40S datasheet table; datasheets list "with sparsity"
# numbers, which are twice these). Patterns are matched against torch.cuda.get_device_name(), e.g.
# "NVIDIA H100 80GB HBM3" (SXM), "NVIDIA H100 PCIe", "NVIDIA A100-SXM4-80GB", "NVIDIA B200".
# Variants with other clocks/power (H100 NVL, H200 NVL, GH200, GB200, L40) are deliberately not matched:
# an unknown device gets no MFU rather than a guessed one. The first matching pattern wins.
DEVICE_PEAK_BF16_TFLOPS: list[tuple[str, str, float]] = [
    ("H100 PCIe", r"\bH100\b.*\bPCIe\b", 756.0),
    ("H100 SXM", r"\bH100\b(?!.*\b(PCIe|NVL)\b)", 989.0),
    ("H200", r"\bH200\b(?!.*\bNVL\b)", 989.0),
    ("A100", r"\bA100\b", 312.0),
    ("L40S", r"\bL40S\b", 362.0),
    ("B200", r"\bB200\b", 2250.0),
]


def device_peak(device_name: str | None) -> tuple[str, float] | None:
    """(canonical name, peak dense BF16 FLOP/s) for a device name, or None if it is not in the table."""
    if not device_name:
        return None
    for canonical, pattern, tflops in DEVICE_PEAK_BF16_TFLOPS:
        if re.search(pattern, device_name, flags=re.IGNORECASE):
            return canonical, tflops * 1e12
    return None


def peak_flops(device_name: str | None) -> float | None:
    found = device_peak(device_name)
    return None if found is None else found[1]


def mfu(flops_per_second: float, device_name: str | None) -> float | None:
    """Model FLOPs utilisation of ONE device: achieved model FLOP/s per device / its peak.

    None for an unknown device (or a CPU): the peak is never guessed.
    """
    peak = peak_flops(device_name)
    return None if peak is None else flops_per_second / peak


__all__ = [
    "DEVICE_PEAK_BF16_TFLOPS", "FlopBreakdown", "Flops", "TRAINING_FLOPS_FACTOR", "chunk_size_used", "device_peak",
    "flop_breakdown", "format_report", "forward_flops_per_token", "large_block", "lm_head", "mfu",
    "mlstm_cell_chunkwise", "paper_mlstm_block", "paper_slstm_block", "peak_flops", "training_flops",
]
