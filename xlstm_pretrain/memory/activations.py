"""Saved-tensor bytes of the forward pass per rank: per block (both families), embedding, logits and loss.

Each block function lists the tensors autograd keeps (read off ``model/blocks_paper.py``, ``blocks_large.py``
and ``components.py``) as ``[(name, bytes), ...]``; the cell and conv terms come from ``kernel_states.py``.
dtypes: under bf16 autocast (precision=bf16) the residual stream and the norms stay fp32, the projections
run in bf16 (their inputs are saved as bf16 copies, and so are the bf16 copies of their weights); with
bf16 parameters (bf16-params) everything outside the cells and the norms' fp32 reductions is bf16.
TP shards heads and projection widths by ``tp``; SP splits the tensors between TP regions (the residual
stream, the norms) by ``tp`` along the sequence; CP splits the sequence (``Shapes.S``).
Not modelled separately: model.fused_ops=fla's norms and conv (counted as the torch ones; only its fused loss,
which never materialises the logits, is).
"""

from __future__ import annotations

from . import kernel_states as ks
from .kernel_states import F32, Terms
from .shapes import Shapes


def _layer_norm(sh: Shapes, d: int) -> Terms:
    """LayerNorm / RMSNorm of the residual stream (fp32 reductions): fp32 input, normalised fp32, stats."""
    n = sh.B * sh.S_sp
    return [("norm input fp32 + normalised", 2 * n * d * F32), ("norm stats", 2 * n * F32)]


def _linear_inputs(sh: Shapes, elems: float, readers: int) -> float:
    """Bytes of a projection input read by ``readers`` linears: bf16 autocast casts it once per linear
    (autocast caches casts of leaf weights only), otherwise the linears share one saved tensor."""
    return elems * sh.act * (readers if sh.autocast else 1)


def _weight_copies(sh: Shapes, weights: float) -> Terms:
    """bf16 autocast keeps the bf16 copy of every weight a matmul reads until backward."""
    return [("bf16 weight copies (autocast)", 2 * weights)] if sh.autocast else []


def paper_mlstm_block(cfg, sh: Shapes, backend: str) -> Terms:
    B, S, a, tp = sh.B, sh.S, sh.act, sh.tp
    d, D, NH = cfg.embedding_dim, cfg.mlstm_inner_dim // tp, cfg.num_heads // tp
    DH, K = cfg.mlstm_inner_dim // cfg.num_heads, cfg.conv1d_kernel_size
    bsd = B * S * D
    t = _layer_norm(sh, d)
    t += [("proj_up input (gathered under SP)", B * S * d * a), ("proj_up output (x_m, z)", 2 * bsd * a)]
    t += ks.causal_conv(B, S, D, K, a, sh.reset)
    t += [("SiLU(conv) x_c", bsd * a), ("headwise q, k input copies", 2 * ks.conv_output_copies(sh.reset) * bsd * a),
          ("concat(q, k, v) for the gates", 3 * bsd * a)]
    t += ks.mlstm_cell(backend, H=B * NH, B=B, S=S, L=sh.L, NC=sh.NC, Q=DH, V=DH, a=a, reset=sh.reset)
    t += [("output norm stats + normalised", B * S * (2 * NH + D) * F32),
          ("SiLU(z), skip sum, gated product", 3 * bsd * a)]
    blocksize = cfg.qkv_proj_blocksize
    t += _weight_copies(sh, 3 * d * D + 3 * D * blocksize + 2 * 3 * cfg.mlstm_inner_dim * NH + D * K)
    return t


def paper_slstm_block(cfg, sh: Shapes, backend: str) -> Terms:
    B, S, a, tp = sh.B, sh.S, sh.act, sh.tp
    d, NH = cfg.embedding_dim, cfg.slstm_num_heads
    dl, NHl, DH, F = d // tp, NH // tp, d // NH, cfg.ffn_dim // tp
    bsd = B * S * dl
    t = _layer_norm(sh, d)
    if cfg.slstm_conv1d_kernel_size > 0:
        t += ks.causal_conv(B, S, dl, cfg.slstm_conv1d_kernel_size, a, sh.reset)
        t += [("SiLU(conv) x_c", bsd * a)]
    t += [("headwise gate input copies (i, f, z, o)", 4 * bsd * a)]
    t += ks.slstm_cell(backend, B=B, S=S, NH=NHl, DH=DH, a=a)
    t += [("group norm stats + normalised", B * S * (2 * NHl + dl) * F32)]
    t += _layer_norm(sh, d)
    t += [("FFN input (gathered under SP)", B * S * d * a), ("FFN up output (gate, up)", 2 * B * S * F * a),
          ("GeLU(gate), gated product", 2 * B * S * F * a)]
    t += _weight_copies(sh, 4 * dl * DH + 3 * d * F + dl * cfg.slstm_conv1d_kernel_size)
    return t


def large_block(cfg, sh: Shapes, backend: str) -> Terms:
    B, S, a, tp = sh.B, sh.S, sh.act, sh.tp
    d, NH = cfg.embedding_dim, cfg.num_heads // tp
    qk, v, F = cfg.qk_dim // tp, cfg.v_dim // tp, cfg.ffn_dim // tp
    Q, V = cfg.qk_head_dim, cfg.v_head_dim
    # RMSNorm keeps the fp32 input and the normalised x (in the residual dtype), then x * weight
    rms = [("RMSNorm input fp32 + normalised", B * sh.S_sp * d * (F32 + sh.resid)),
           ("RMSNorm rsqrt", B * sh.S_sp * F32)]
    t = list(rms)
    t += [("q/k/v/o/i/f input (gathered under SP)", _linear_inputs(sh, B * S * d, 6)),
          ("soft-capped gates", 2 * B * S * NH * a), ("sigmoid(o)", B * S * v * a)]
    t += ks.mlstm_cell(backend, H=B * NH, B=B, S=S, L=sh.L, NC=sh.NC, Q=Q, V=V, a=a, reset=sh.reset)
    t += [("multi-head norm stats + normalised", B * S * (2 * NH + v) * F32),
          ("normed h, gated product", 2 * B * S * v * a)]
    t += rms
    t += [("SwiGLU input (gathered under SP)", _linear_inputs(sh, B * S * d, 2)),
          ("SwiGLU up_gate, up, SiLU, product", 4 * B * S * F * a)]
    t += _weight_copies(sh, 2 * d * qk + 2 * d * v + v * d + 2 * d * NH + 3 * d * F)
    return t


def block(cfg, kind: str, sh: Shapes, backend: str) -> Terms:
    if cfg.family == "large":
        return large_block(cfg, sh, backend)
    return paper_mlstm_block(cfg, sh, backend) if kind == "mlstm" else paper_slstm_block(cfg, sh, backend)


def block_input(cfg, sh: Shapes) -> float:
    """What activation checkpointing keeps per block: its input (the residual stream, SP-split)."""
    return sh.B * sh.S_sp * cfg.embedding_dim * sh.resid


def embedding_and_head(cfg, sh: Shapes, fused_loss: bool) -> Terms:
    """Token ids, the output norm, the LM head input and the logits / loss buffers (vocab sharded by TP).

    Unfused: the cross entropy saves its fp32 log-softmax (the logits themselves are only read by the
    fp32 cast); the large family's soft cap also keeps its fp32 tanh output. Fused (FLA linear + cross
    entropy, TP = 1 without soft cap): the gradient of the hidden states is computed in the forward and kept
    (fp32) instead of any vocab-sized tensor.
    """
    B, S, d, Vl = sh.B, sh.S, cfg.embedding_dim, cfg.vocab_size // sh.tp
    t: Terms = [("token ids", B * S * 8)]
    t += _layer_norm(sh, d)
    t += [("LM head input (gathered under SP)", B * S * d * sh.act)]
    if fused_loss:
        t += [("fused loss: d(hidden) computed in forward (fp32)", B * S * d * F32)]
    else:
        t += [("cross entropy log-softmax (fp32)", B * S * Vl * F32)]
        if cfg.family == "large":
            t += [("logit soft cap tanh output (fp32)", B * S * Vl * F32)]
    t += _weight_copies(sh, d * Vl)
    return t


def saved_bytes(cfg, sh: Shapes, backend: str, activation_checkpointing: bool, fused_loss: bool = False) -> dict:
    """Peak of the saved tensors over one forward + backward of one micro-batch, by part.

    Without checkpointing every block's tensors are alive when the backward starts. With it (every block
    recomputed, ``train/setup.py``) only the block inputs stay, plus one block's tensors during its
    recompute (the largest block).
    """
    per_block = [ks.total(block(cfg, kind, sh, backend)) for kind in cfg.block_types]
    outside = ks.total(embedding_and_head(cfg, sh, fused_loss))
    if activation_checkpointing:
        blocks = {"block inputs (checkpointed)": block_input(cfg, sh) * len(per_block),
                  "one block recomputed": max(per_block)}
    else:
        blocks = {"blocks": sum(per_block)}
    return {**blocks, "embedding, logits, loss": outside}


def kernel_saved_bytes(cfg, sh: Shapes, backend: str) -> float:
    """The part of all blocks' saved bytes that the cells and the causal convs keep (kernel_states.py)."""
    total = 0.0
    for kind in cfg.block_types:
        if cfg.family == "large" or kind == "mlstm":
            H = sh.B * cfg.num_heads // sh.tp
            Q = cfg.qk_head_dim if cfg.family == "large" else cfg.mlstm_inner_dim // cfg.num_heads
            V = cfg.v_head_dim if cfg.family == "large" else Q
            total += ks.total(ks.mlstm_cell(backend, H=H, B=sh.B, S=sh.S, L=sh.L, NC=sh.NC, Q=Q, V=V, a=sh.act,
                                            reset=sh.reset))
            if cfg.family == "paper":
                total += ks.total(ks.causal_conv(sh.B, sh.S, cfg.mlstm_inner_dim // sh.tp, cfg.conv1d_kernel_size,
                                                 sh.act, sh.reset))
        else:
            NH = cfg.slstm_num_heads // sh.tp
            total += ks.total(ks.slstm_cell(backend, B=sh.B, S=sh.S, NH=NH, DH=cfg.embedding_dim // cfg.slstm_num_heads,
                                            a=sh.act))
            if cfg.slstm_conv1d_kernel_size > 0:
                total += ks.total(ks.causal_conv(sh.B, sh.S, cfg.embedding_dim // sh.tp, cfg.slstm_conv1d_kernel_size,
                                                 sh.act, sh.reset))
    return total
