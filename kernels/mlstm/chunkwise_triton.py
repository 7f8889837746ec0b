"""Chunkwise mLSTM in Triton: forward and backward kernels behind a ``torch.autograd.Function``.

Computes the same function as ``chunkwise.mlstm_chunkwise`` / ``naive.mlstm_parallel`` (see
``naive.py`` for the conventions: q-scaling, fp32 state (C, n, m), eps placement, the
``max(|n^T q|, exp(-m))`` floor, document resets that restart from the zero state with m = 0).
Gradients are the exact gradients of that function (autograd of the reference is the ground truth),
including the path through the normaliser and through the stabiliser m (which matters because of eps),
and flow into the initial state (C0, n0, m0) and out of the final state (C, n, m).

Notation per chunk c of L tokens (positions t, s inside the chunk), gates in fp32:
  lf = logsigmoid(f), b_t = sum_{r<=t} lf_r (cumsum inside the chunk), seg_t = number of resets at or
  before t inside the chunk, valid_ts = s <= t and seg_s == seg_t, lb_t = sum_{valid s} lf_s,
  logD_ts = b_t - b_s + i_s (valid) else -inf, log_init_t = lb_t + m_c (if seg_t == 0) else lb_t,
  m_row_t = max(log_init_t, max_s logD_ts), D_ts = exp(logD_ts - m_row_t),
  w_init_t = exp(log_init_t - m_row_t) if seg_t == 0 else 0,
  h_t = (sum_s D_ts (q̂_t.k_s) v_s + w_init_t C_c^T q̂_t) / (max(|den_t|, exp(-m_row_t)) + eps),
  den_t = sum_s D_ts (q̂_t.k_s) + w_init_t q̂_t.n_c.
  End-of-chunk state: last segment = tokens with seg == seg_{L-1}, g = lb_{L-1},
  log_a_s = b_{L-1} - b_s + i_s (s in last segment), u = g + m_c (no reset in chunk) or g (reset: the
  zero state's m = 0 floors the stabiliser), m_{c+1} = max(u, max_s log_a_s),
  C_{c+1} = [no reset] exp(g + m_c - m_{c+1}) C_c + sum_s exp(log_a_s - m_{c+1}) k_s v_s^T (same for n).

Kernels:
  forward  1. ``_fw_recurrent``: one program per (b*head, DHQK tile, DHV tile) loops over the chunks and
              stores the state before every chunk (C in ``state_dtype``) and the final state (fp32).
           2. ``_fw_output``: one program per (b*head, chunk): P = D * Q K^T once, then the outputs DHV tile
              by DHV tile; m_row and den per token.
  backward 0. ``_bw_prep``: per token 1/denom, d den, d m_row from <dh, h>.
           1. ``_bw_recurrent``: reverse loop over chunks for dC_{c+1} (``state_dtype``), dn after every chunk
              and dC0, dn0 (fp32).
           2. ``_bw_dqk``: one program per (b*head, chunk): dq, dk, and the per-chunk gate gradients
              with m held fixed, plus the routing of the m path (which argmax each max picked).
           3. ``_bw_dv``: one program per (b*head, chunk): P once, then dv DHV tile by DHV tile.
Register budget (sm_90, 255 per thread): at the default tiles no kernel spills at the shipped shapes
(``tools/bench/kernels.py --aot-check``, asserted by the tests). bf16 tiles go to tl.dot as loaded (per-row
factors such as 1/denominator are applied to the products, not to the operands), and the L x L gate tiles
are built after the matmul loops that do not need them, so few L x L tiles are live at once.
Tile loads: on Hopper (``TMA_LOADS``) the q / k / v / dh tiles and the per-chunk state tiles are read, and
h / dq / dk / dv and the states written, through tensor descriptors (TMA bulk copies into shared memory,
zero-filled past S and the head dims by the hardware) instead of per-element pointers, which need a 64-bit
address per element in registers: at the 7B's shapes registers drop from 190-237 to 80-171 per thread
(``_fw_output`` 237 -> 80, ``_bw_dqk`` 236 -> 171). Elsewhere, and for layouts TMA cannot take, the same
kernels run masked pointer loads (one ``TMA`` constexpr; ``_tok`` / ``_st`` are the two paths side by side).
           4. ``_bw_mchain``: one program per b*head: the scalar reverse recurrence of dm over the chunks
              (gradient through the stabiliser chain), finishing di, d logsigmoid(f) and dm0.
Ties in a max split the gradient like torch (maximum: halves, amax: evenly), which only matters on
exact ties. Inputs are bf16 / fp16 / fp32 (fp64 inputs are handled by the torch reference;
fp16 matmuls use tf32 products, fp16's precision with fp32's range: see ``triton_utils.mm``). The chunk
length is the package's rule (``kernels/chunking.py``: ``min(chunk_size, next_pow2(S))``) with tl.dot's
minimum of 16: the chunk length changes only rounding, never the function.

Memory: the forward materialises the state C before every chunk, C_all (B*NH*(S/L)*DHQK*DHV elements), in
``state_dtype``: the input dtype for bf16 inputs (every reader of C_all and of its gradient dC_all on the
bf16 path feeds them to ``mm``, which rounds its operands to bf16 anyway: h is bit-identical to fp32 states,
the backward differs only in the gate gradients through the carried state's decay, an fp32 sum of
C_c * dC_{c+1}), fp32 for fp32 and fp16 inputs. n and m before every chunk stay fp32 (small); the returned
final state and the initial-state gradients are fp32 buffers of their own, never rounded. The states are not
kept for the backward: with ``RECOMPUTE_STATES_IN_BACKWARD`` (default) the backward re-runs ``_fw_recurrent`` from the
saved initial state (bit-identical states; the cost is the state-update matmuls, ~1/3 of the forward's), so
the states are only a transient buffer of the layer being differentiated (with their gradients, the same
size again) instead of being held for every layer of the model until its backward (e.g. ~1 GiB per layer in
bf16, ~48 GiB in all, for the 1.3B paper model at micro-batch 4). TFLA and FLA make the same trade.
With user inputs i = -inf everywhere in a chunk's last segment, the reference floors m at 0 (its ``log_a_max`` guard) and these kernels do not (eps-level).
"""

from __future__ import annotations

import functools
import math
import os

import torch
import torch.nn.functional as F
import triton
import triton.language as tl
from triton.tools.tensor_descriptor import TensorDescriptor

from ..chunking import TL_DOT_MIN_CHUNK, chunk_plan
from ..triton_utils import INTERPRET, maybe_autotune, mm, pow2_block, prune_head_blocks
from .naive import check_inputs

NEG_INF = tl.constexpr(float("-inf"))
# Keep only the initial state for the backward and recompute the per-chunk states there (see the module
# docstring). False keeps every chunk's state from the forward (more memory, no recomputation).
RECOMPUTE_STATES_IN_BACKWARD = True
# True stores the per-chunk states C_all / dC_all in fp32 whatever the input dtype (see ``state_dtype``; the
# tests compare the bf16 states against it).
FP32_STATES = False
# Tile loads and stores through the Tensor Memory Accelerator (tensor descriptors) instead of per-element
# pointers. None: for bf16 / fp16 inputs on CUDA devices of compute capability >= 9 (Hopper), unless
# ``XLSTM_MLSTM_TMA=0`` (fp32 inputs keep the pointer loads: fp32 is the exact-reference dtype, not a speed
# path, and its TMA compiles spill more); True: wherever the layout allows, any dtype, the interpreter included
# (the tests); False: never. A call whose tensors do not fit TMA's rules (16-byte aligned base and rows,
# chunk <= 256) runs the pointer loads.
TMA_LOADS = None


def state_dtype(input_dtype: torch.dtype) -> torch.dtype:
    """The dtype of the per-chunk state buffers C_all and dC_all for q / k / v of ``input_dtype``.

    bf16 inputs: bf16. Every reader of these buffers on the bf16 path feeds them to ``mm``, which rounds its
    operands to bf16 before the product anyway, so storing them rounded changes no product (h is
    bit-identical) and halves the traffic and the transient memory of the largest buffers (for the 7B's
    256 x 512 heads a state is 4x a chunk's q, k, v). The one fp32 elementwise reader is the forget-gate term
    sum(C_c * dC_{c+1}) in ``_bw_dqk``, which then sums bf16-rounded products. bf16 has fp32's exponent range,
    so a growing state cannot overflow.
    fp32 inputs: fp32 (exact products: the kernels match the fp32 reference to fp32 rounding). fp16 inputs:
    fp32, since fp16's range could overflow a growing state and fp16 runs tf32 products on fp32 operands
    (``triton_utils.mm``). ``FP32_STATES`` forces fp32 for every input dtype.
    """
    return torch.bfloat16 if input_dtype == torch.bfloat16 and not FP32_STATES else torch.float32


# GPU autotuning space (the interpreter uses pow2_block sizes). Index 0 is the default config used with
# XLSTM_TRITON_AUTOTUNE=0; tiles larger than the head dims are pruned before the search. Chosen from the
# sm_90 register / spill report of AOT compiles (8 warps, small tiles spill least in the backward).
_TILES = [(32, 64, 8), (32, 32, 8), (64, 64, 8), (64, 64, 4), (32, 32, 4), (32, 64, 4), (64, 128, 8), (128, 64, 8),
          (32, 128, 8)]
_REC_CONFIGS = [triton.Config({"BK": bk, "BV": bv}, num_warps=w, num_stages=s) for bk, bv, w in _TILES
                for s in (2, 1)]
_PAR_CONFIGS = [triton.Config({"BK": bk, "BV": bv}, num_warps=w, num_stages=1)
                for bk, bv, w in _TILES + [(32, 64, 16)]]
# _bw_dqk keeps dS, the X / Y accumulators and the dq / dk tiles live at once: at L = 64 only BK 16 x BV 32
# (8 warps) compiles without spills on sm_90, so that is its default; the larger tiles stay in the search.
_DQK_CONFIGS = [triton.Config({"BK": 16, "BV": 32}, num_warps=8, num_stages=1)] + _PAR_CONFIGS
# KEY_DT (the input dtype's name, a constexpr the kernels do not read) is in the key because the autotuner adds
# the dtypes of tensor arguments to its key by itself, but a tensor descriptor has no dtype it can see.
_KEY = ["DHQK", "DHV", "L", "BH", "KEY_DT"]
# Which tile each tensor-descriptor argument is read or written in: (rows, columns) by meta-parameter name.
_TMA_BLOCKS = {"q_ptr": ("L", "BK"), "k_ptr": ("L", "BK"), "dq_ptr": ("L", "BK"), "dk_ptr": ("L", "BK"),
               "v_ptr": ("L", "BV"), "h_ptr": ("L", "BV"), "dh_ptr": ("L", "BV"), "dv_ptr": ("L", "BV"),
               "Call_ptr": ("BK", "BV"), "dCall_ptr": ("BK", "BV")}


def _set_tma_blocks(nargs):
    """Config pre-hook: a descriptor's block shape is part of the compiled kernel, so each config sets the
    blocks its tiles need ([1, rows, columns] of the 3-D descriptors) before it is launched."""
    for name, (rows, cols) in _TMA_BLOCKS.items():
        desc = nargs.get(name)
        if isinstance(desc, TensorDescriptor):
            desc.block_shape = [1, int(nargs[rows]), int(nargs[cols])]


def _tma_configs(configs, default=None):
    """The TMA twin of a config list: same tiles and warps, at least 2 pipeline stages (TMA copies are
    asynchronous and want a buffer in flight; Triton 3.9 also fails to compile a descriptor load inside a
    loop at num_stages=1), and the block-shape pre-hook. ``default`` (BK, BV, warps) moves that config first
    (the one ``XLSTM_TRITON_AUTOTUNE=0`` runs)."""
    if default is not None:
        configs = sorted(configs, key=lambda c: (c.kwargs["BK"], c.kwargs["BV"], c.num_warps) != default)
    out, seen = [], set()
    for c in configs:
        key = (tuple(sorted(c.kwargs.items())), c.num_warps, max(2, c.num_stages))
        if key not in seen:
            seen.add(key)
            out.append(triton.Config(dict(c.kwargs), num_warps=c.num_warps, num_stages=key[2],
                                     pre_hook=_set_tma_blocks))
    return out


def _autotuned(kernel, configs):
    """``kernel`` (a @triton.jit function) with the GPU autotuner over ``configs`` (bare under the interpreter)."""
    return maybe_autotune(configs, key=_KEY, prune=prune_head_blocks)(kernel)


# ---------------------------------------------------------------------------------------------------
# tile loads and per-chunk gate quantities (shared by every kernel)
# ---------------------------------------------------------------------------------------------------
@triton.jit
def _min_combine(a, b):
    return tl.minimum(a, b)


@triton.jit
def _rows(ptr, bh, S, pos, real, o, D: tl.constexpr):
    """The [L, len(o)] tile of token rows ``pos`` and columns ``o`` of a (BH, S, D) tensor, zero outside,
    in the tensor's own dtype (bf16 tiles go to tl.dot as they are)."""
    return tl.load(ptr + (bh * S + pos[:, None]) * D + o[None, :], mask=real[:, None] & (o < D)[None, :], other=0.0)


@triton.jit
def _state(ptr, sidx, ok, ov, DHQK: tl.constexpr, DHV: tl.constexpr):
    """The [len(ok), len(ov)] tile of state ``sidx`` of a (N, DHQK, DHV) fp32 tensor (initial / final states)."""
    return tl.load(ptr + sidx * DHQK * DHV + ok[:, None] * DHV + ov[None, :],
                   mask=(ok < DHQK)[:, None] & (ov < DHV)[None, :], other=0.0)


# Tile sources. With TMA (a constexpr) the source is a host-made tensor descriptor (``_tok_desc`` /
# ``_state_desc``) and the tile comes in one bulk copy (the Tensor Memory Accelerator on sm_90: no per-element
# address registers, out-of-bounds rows and columns filled with zeros by the hardware); otherwise it is a
# pointer and the tile comes from masked per-element loads. Same tile, same dtype, either way.
@triton.jit
def _tok(src, bh, S, c, j, L: tl.constexpr, BD: tl.constexpr, D: tl.constexpr, TMA: tl.constexpr):
    """The [L, BD] tile of chunk c's token rows and column block j of a (BH, S, D) tensor, zero outside, in
    the tensor's own dtype (bf16 tiles go to tl.dot as they are)."""
    if TMA:
        return src.load([bh.to(tl.int32), c * L, j * BD]).reshape(L, BD)
    else:
        pos = c * L + tl.arange(0, L)
        o = j * BD + tl.arange(0, BD)
        return tl.load(src + (bh * S + pos[:, None]) * D + o[None, :], mask=(pos < S)[:, None] & (o < D)[None, :],
                       other=0.0)


@triton.jit
def _store_tok(dst, x, bh, S, c, j, L: tl.constexpr, BD: tl.constexpr, D: tl.constexpr, TMA: tl.constexpr):
    """Store an [L, BD] tile where ``_tok`` loads it (rows past S and columns past D are dropped)."""
    if TMA:
        dst.store([bh.to(tl.int32), c * L, j * BD], x.to(dst.dtype).reshape(1, L, BD))
    else:
        pos = c * L + tl.arange(0, L)
        o = j * BD + tl.arange(0, BD)
        tl.store(dst + (bh * S + pos[:, None]) * D + o[None, :], x.to(dst.dtype.element_ty),
                 mask=(pos < S)[:, None] & (o < D)[None, :])


@triton.jit
def _st(src, sidx, jk, jv, BK: tl.constexpr, BV: tl.constexpr, DHQK: tl.constexpr, DHV: tl.constexpr,
        TMA: tl.constexpr):
    """The [BK, BV] tile (jk, jv) of per-chunk state ``sidx`` of a (N, DHQK, DHV) tensor, in its own dtype
    (bf16 per-chunk states go to ``mm`` as they are; widen them for fp32 elementwise math)."""
    if TMA:
        return src.load([sidx.to(tl.int32), jk * BK, jv * BV]).reshape(BK, BV)
    else:
        ok = jk * BK + tl.arange(0, BK)
        ov = jv * BV + tl.arange(0, BV)
        return tl.load(src + sidx * DHQK * DHV + ok[:, None] * DHV + ov[None, :],
                       mask=(ok < DHQK)[:, None] & (ov < DHV)[None, :], other=0.0)


@triton.jit
def _store_st(dst, x, sidx, jk, jv, BK: tl.constexpr, BV: tl.constexpr, DHQK: tl.constexpr, DHV: tl.constexpr,
              TMA: tl.constexpr):
    if TMA:
        dst.store([sidx.to(tl.int32), jk * BK, jv * BV], x.to(dst.dtype).reshape(1, BK, BV))
    else:
        ok = jk * BK + tl.arange(0, BK)
        ov = jv * BV + tl.arange(0, BV)
        tl.store(dst + sidx * DHQK * DHV + ok[:, None] * DHV + ov[None, :], x.to(dst.dtype.element_ty),
                 mask=(ok < DHQK)[:, None] & (ov < DHV)[None, :])


@triton.jit
def _chunk_vec(lf_ptr, ig_ptr, rs_ptr, bh, bidx, c, S, L: tl.constexpr, HAS_RESET: tl.constexpr):
    """The per-token gate vectors of chunk c (no L x L tile: those come from ``_chunk_tiles`` where needed,
    so that they are not live across the matmul loops)."""
    t = tl.arange(0, L)
    pos = c * L + t
    real = pos < S
    lf = tl.load(lf_ptr + bh * S + pos, mask=real, other=0.0)  # padding forgets nothing ...
    ig = tl.load(ig_ptr + bh * S + pos, mask=real, other=NEG_INF)  # ... and writes nothing
    b = tl.cumsum(lf, 0)
    if HAS_RESET:
        rs = tl.load(rs_ptr + bidx * S + pos, mask=real, other=0).to(tl.int32)
        seg = tl.cumsum(rs, 0)
        # lb_t = b_t - b_{r-1} with r the last reset <= t (b_{r-1} is non-increasing in r: a running min)
        lb = b - tl.minimum(tl.associative_scan(tl.where(rs != 0, b - lf, 0.0), 0, _min_combine), 0.0)
    else:
        seg = tl.zeros([L], dtype=tl.int32)
        lb = b
    seg_last = tl.max(seg, 0)
    in_last = seg == seg_last
    b_last = tl.sum(tl.where(t == L - 1, b, 0.0), 0)
    g = tl.sum(tl.where(t == L - 1, lb, 0.0), 0)
    log_a = tl.where(in_last & real, b_last - b + ig, NEG_INF)
    cont = seg == 0
    has_reset = seg_last > 0
    return t, pos, real, b, ig, seg, lb, in_last, log_a, g, cont, has_reset


@triton.jit
def _chunk_tiles(t, real, b, ig, seg, HAS_RESET: tl.constexpr):
    """same_ts: s <= t in t's segment; valid: same and s a real token; logD_ts = b_t - b_s + i_s or -inf."""
    if HAS_RESET:
        same = (t[:, None] >= t[None, :]) & (seg[:, None] == seg[None, :])
    else:
        same = t[:, None] >= t[None, :]
    valid = same & real[None, :]
    logD = tl.where(valid, b[:, None] - b[None, :] + ig[None, :], NEG_INF)
    return same, valid, logD


@triton.jit
def _row_max(logD, lb, cont, m_c):
    log_init = lb + tl.where(cont, m_c, 0.0)
    amax_d = tl.max(logD, 1)
    m_row = tl.maximum(log_init, amax_d)
    return log_init, amax_d, m_row


@triton.jit
def _qk(q_ptr, k_ptr, bh, S, c, L: tl.constexpr, DHQK: tl.constexpr, BK: tl.constexpr, DT: tl.constexpr,
        EMU: tl.constexpr, TMA: tl.constexpr):
    """Q K^T of chunk c (unscaled), [L, L] fp32."""
    s_qk = tl.zeros([L, L], dtype=tl.float32)
    for kk in range(0, tl.cdiv(DHQK, BK)):
        s_qk += mm(_tok(q_ptr, bh, S, c, kk, L, BK, DHQK, TMA), tl.trans(_tok(k_ptr, bh, S, c, kk, L, BK, DHQK, TMA)),
                   DT, EMU)
    return s_qk


@triton.jit
def _intra_weights(q_ptr, k_ptr, lf_ptr, ig_ptr, rs_ptr, mall_ptr, bh, bidx, c, S, NC, scale, L: tl.constexpr,
                   DHQK: tl.constexpr, BK: tl.constexpr, HAS_RESET: tl.constexpr, DT: tl.constexpr,
                   EMU: tl.constexpr, TMA: tl.constexpr):
    """P_ts = D_ts q̂_t.k_s (the intra-chunk weights, computed once per chunk) and the vectors around it."""
    t, pos, real, b, ig, seg, lb, in_last, log_a, g, cont, has_reset = _chunk_vec(
        lf_ptr, ig_ptr, rs_ptr, bh, bidx, c, S, L, HAS_RESET)
    s_qk = _qk(q_ptr, k_ptr, bh, S, c, L, DHQK, BK, DT, EMU, TMA)
    same, valid, logD = _chunk_tiles(t, real, b, ig, seg, HAS_RESET)
    sidx = bh * (NC + 1) + c
    m_c = tl.load(mall_ptr + sidx)
    log_init, amax_d, m_row = _row_max(logD, lb, cont, m_c)
    P = tl.where(valid, tl.exp(logD - m_row[:, None]), 0.0) * s_qk * scale
    return P, pos, real, log_a, log_init, cont, m_row, sidx


# ---------------------------------------------------------------------------------------------------
# forward
# ---------------------------------------------------------------------------------------------------
def tune_bucket(BH: int) -> int:
    """The ``BH`` the kernels receive: B*NH rounded up to a power of two. It is only an autotune key (how many
    programs run decides the best tiles), bucketed so that every new batch size (evaluation, generation, a
    ragged last batch) does not start a new autotune search."""
    return triton.next_power_of_2(BH)


@triton.jit
def _fw_recurrent_kernel(k_ptr, v_ptr, lf_ptr, ig_ptr, rs_ptr, C0_ptr, n0_ptr, m0_ptr, Call_ptr, CN_ptr, nall_ptr,
                         mall_ptr, S, NC, NH, BH, DHQK: tl.constexpr, DHV: tl.constexpr, L: tl.constexpr,
                         BK: tl.constexpr, BV: tl.constexpr, HAS_RESET: tl.constexpr, EMU: tl.constexpr,
                         TMA: tl.constexpr, KEY_DT: tl.constexpr):
    """C_c before every chunk into Call (BH*NC states, ``state_dtype``), n_c, m_c into nall / mall (BH*(NC+1):
    the last is the final state), the final C into CN (fp32, from the fp32 registers)."""
    bh = tl.program_id(0).to(tl.int64)
    pk = tl.program_id(1)
    pv = tl.program_id(2)
    bidx = bh // NH
    DT = k_ptr.dtype if TMA else k_ptr.dtype.element_ty
    ok = pk * BK + tl.arange(0, BK)
    ov = pv * BV + tl.arange(0, BV)
    mk = ok < DHQK
    mkv = mk[:, None] & (ov < DHV)[None, :]
    st_off = ok[:, None] * DHV + ov[None, :]
    C = _state(C0_ptr, bh, ok, ov, DHQK, DHV)
    n = tl.load(n0_ptr + bh * DHQK + ok, mask=mk, other=0.0)
    m = tl.load(m0_ptr + bh)
    for c in range(NC):
        sidx = bh * (NC + 1) + c
        _store_st(Call_ptr, C, bh * NC + c, pk, pv, BK, BV, DHQK, DHV, TMA)
        if pv == 0:
            tl.store(nall_ptr + sidx * DHQK + ok, n, mask=mk)
            if pk == 0:
                tl.store(mall_ptr + sidx, m)
        t, pos, real, b, ig, seg, lb, in_last, log_a, g, cont, has_reset = _chunk_vec(
            lf_ptr, ig_ptr, rs_ptr, bh, bidx, c, S, L, HAS_RESET)
        u = tl.where(has_reset, g, g + m)
        m_new = tl.maximum(u, tl.max(log_a, 0))
        w_dec = tl.where(has_reset, 0.0, tl.exp(g + m - m_new))
        kw = _tok(k_ptr, bh, S, c, pk, L, BK, DHQK, TMA).to(tl.float32) * tl.exp(log_a - m_new)[:, None]
        C = C * w_dec + mm(tl.trans(kw), _tok(v_ptr, bh, S, c, pv, L, BV, DHV, TMA), DT, EMU)
        n = n * w_dec + tl.sum(kw, 0)
        m = m_new
    sidx = bh * (NC + 1) + NC
    tl.store(CN_ptr + bh * DHQK * DHV + st_off, C, mask=mkv)
    if pv == 0:
        tl.store(nall_ptr + sidx * DHQK + ok, n, mask=mk)
        if pk == 0:
            tl.store(mall_ptr + sidx, m)


_fw_recurrent = _autotuned(_fw_recurrent_kernel, _REC_CONFIGS)
# 4 warps: at 8 the sm_90 compile of _bw_recurrent without resets spills 8 B at the shipped shapes
_REC_TMA_CONFIGS = _tma_configs(_REC_CONFIGS, default=(32, 64, 4))
_fw_recurrent_tma = _autotuned(_fw_recurrent_kernel, _REC_TMA_CONFIGS)


@triton.jit
def _fw_output_kernel(q_ptr, k_ptr, v_ptr, lf_ptr, ig_ptr, rs_ptr, Call_ptr, nall_ptr, mall_ptr, h_ptr, mrow_ptr,
                      den_ptr, S, NC, NH, BH, scale, eps, DHQK: tl.constexpr, DHV: tl.constexpr, L: tl.constexpr,
                      BK: tl.constexpr, BV: tl.constexpr, HAS_RESET: tl.constexpr, EMU: tl.constexpr,
                      TMA: tl.constexpr, KEY_DT: tl.constexpr):
    """One program per (b*head, chunk): P = D * Q K^T once, then h tile by tile over DHV."""
    bh = tl.program_id(0).to(tl.int64)
    c = tl.program_id(1)
    bidx = bh // NH
    DT = q_ptr.dtype if TMA else q_ptr.dtype.element_ty
    P, pos, real, log_a, log_init, cont, m_row, sidx = _intra_weights(
        q_ptr, k_ptr, lf_ptr, ig_ptr, rs_ptr, mall_ptr, bh, bidx, c, S, NC, scale, L, DHQK, BK, HAS_RESET, DT, EMU,
        TMA)
    w_init = tl.where(cont, tl.exp(log_init - m_row), 0.0) * scale
    q_n = tl.zeros([L], dtype=tl.float32)
    for kk in range(0, tl.cdiv(DHQK, BK)):
        ok = kk * BK + tl.arange(0, BK)
        nt = tl.load(nall_ptr + sidx * DHQK + ok, mask=ok < DHQK, other=0.0)
        q_n += tl.sum(_tok(q_ptr, bh, S, c, kk, L, BK, DHQK, TMA).to(tl.float32) * nt[None, :], 1)
    den = tl.sum(P, 1) + w_init * q_n
    rdenom = 1.0 / (tl.maximum(tl.abs(den), tl.exp(-m_row)) + eps)
    for vv in range(0, tl.cdiv(DHV, BV)):
        q_c = tl.zeros([L, BV], dtype=tl.float32)
        for kk in range(0, tl.cdiv(DHQK, BK)):
            q_c += mm(_tok(q_ptr, bh, S, c, kk, L, BK, DHQK, TMA),
                      _st(Call_ptr, bh * NC + c, kk, vv, BK, BV, DHQK, DHV, TMA), DT, EMU)
        num = mm(P, _tok(v_ptr, bh, S, c, vv, L, BV, DHV, TMA), DT, EMU) + w_init[:, None] * q_c
        _store_tok(h_ptr, num * rdenom[:, None], bh, S, c, vv, L, BV, DHV, TMA)
    tl.store(mrow_ptr + bh * S + pos, m_row, mask=real)
    tl.store(den_ptr + bh * S + pos, den, mask=real)


_fw_output = _autotuned(_fw_output_kernel, _PAR_CONFIGS)
_PAR_TMA_CONFIGS = _tma_configs(_PAR_CONFIGS)
_fw_output_tma = _autotuned(_fw_output_kernel, _PAR_TMA_CONFIGS)


# ---------------------------------------------------------------------------------------------------
# backward
# ---------------------------------------------------------------------------------------------------
@triton.jit
def _bw_prep(dh_ptr, h_ptr, den_ptr, mrow_ptr, rden_ptr, dden_ptr, dmrow_ptr, S, eps, DHV: tl.constexpr,
             BT: tl.constexpr, BV: tl.constexpr):
    """Per token: 1/denom, d den and the total d m_row, from <dh, h> (h = num / denom)."""
    bh = tl.program_id(0).to(tl.int64)
    pos = tl.program_id(1) * BT + tl.arange(0, BT)
    real = pos < S
    dhh = tl.zeros([BT], dtype=tl.float32)
    for vv in range(0, tl.cdiv(DHV, BV)):
        ov = vv * BV + tl.arange(0, BV)
        dhh += tl.sum(_rows(dh_ptr, bh, S, pos, real, ov, DHV).to(tl.float32)
                      * _rows(h_ptr, bh, S, pos, real, ov, DHV).to(tl.float32), 1)
    den = tl.load(den_ptr + bh * S + pos, mask=real, other=1.0)
    m_row = tl.load(mrow_ptr + bh * S + pos, mask=real, other=0.0)
    floor = tl.exp(-m_row)
    aden = tl.abs(den)
    rden = 1.0 / (tl.maximum(aden, floor) + eps)
    # d max(|den|, floor) / d den (torch.maximum splits a tie in halves), times sign(den)
    slope = tl.where(aden > floor, 1.0, tl.where(aden == floor, 0.5, 0.0))
    slope = tl.where(den > 0, slope, tl.where(den < 0, -slope, 0.0))
    tl.store(rden_ptr + bh * S + pos, rden, mask=real)
    tl.store(dden_ptr + bh * S + pos, -dhh * rden * slope, mask=real)
    # total derivative of h through m_row: the stabilised form is invariant to m except for eps
    tl.store(dmrow_ptr + bh * S + pos, -eps * dhh * rden, mask=real)


@triton.jit
def _bw_recurrent_kernel(q_ptr, dh_ptr, lf_ptr, ig_ptr, rs_ptr, mall_ptr, mrow_ptr, rden_ptr, dden_ptr, dCN_ptr,
                         dnN_ptr, dCall_ptr, dC0_ptr, dnall_ptr, S, NC, NH, BH, scale, DHQK: tl.constexpr,
                         DHV: tl.constexpr, L: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
                         HAS_RESET: tl.constexpr, EMU: tl.constexpr, TMA: tl.constexpr, KEY_DT: tl.constexpr):
    """dC_{c+1} into dCall slot c (BH*NC states, ``state_dtype``: chunk c reads it with C_c from the same slot),
    dn_c into dnall (BH*(NC+1), fp32), dC_0 into dC0 (fp32, from the fp32 registers)."""
    bh = tl.program_id(0).to(tl.int64)
    pk = tl.program_id(1)
    pv = tl.program_id(2)
    bidx = bh // NH
    DT = q_ptr.dtype if TMA else q_ptr.dtype.element_ty
    ok = pk * BK + tl.arange(0, BK)
    ov = pv * BV + tl.arange(0, BV)
    mk = ok < DHQK
    mkv = mk[:, None] & (ov < DHV)[None, :]
    st_off = ok[:, None] * DHV + ov[None, :]
    dC = _state(dCN_ptr, bh, ok, ov, DHQK, DHV)
    dn = tl.load(dnN_ptr + bh * DHQK + ok, mask=mk, other=0.0)
    for cc in range(NC):
        c = NC - 1 - cc
        sidx = bh * (NC + 1) + c
        _store_st(dCall_ptr, dC, bh * NC + c, pk, pv, BK, BV, DHQK, DHV, TMA)
        if pv == 0:
            tl.store(dnall_ptr + (sidx + 1) * DHQK + ok, dn, mask=mk)
        t, pos, real, b, ig, seg, lb, in_last, log_a, g, cont, has_reset = _chunk_vec(
            lf_ptr, ig_ptr, rs_ptr, bh, bidx, c, S, L, HAS_RESET)
        m_c = tl.load(mall_ptr + sidx)
        m_n = tl.load(mall_ptr + sidx + 1)
        m_row = tl.load(mrow_ptr + bh * S + pos, mask=real, other=0.0)
        rden = tl.load(rden_ptr + bh * S + pos, mask=real, other=0.0)
        dden = tl.load(dden_ptr + bh * S + pos, mask=real, other=0.0)
        w_q = tl.where(cont & real, tl.exp(lb + m_c - m_row), 0.0) * scale  # weight of q_t on C_c
        w_dec = tl.where(has_reset, 0.0, tl.exp(g + m_c - m_n))
        qt = _tok(q_ptr, bh, S, c, pk, L, BK, DHQK, TMA).to(tl.float32)
        # dC_c = w_dec dC_{c+1} + sum_t w_q,t q_t (dh_t / denom_t)^T: 1/denom folded into the q side so that
        # the dh tile goes to the tensor cores as loaded
        dC = dC * w_dec + mm(tl.trans(qt * (w_q * rden)[:, None]), _tok(dh_ptr, bh, S, c, pv, L, BV, DHV, TMA), DT,
                             EMU)
        dn = dn * w_dec + tl.sum(qt * (w_q * dden)[:, None], 0)
    sidx = bh * (NC + 1)
    tl.store(dC0_ptr + bh * DHQK * DHV + st_off, dC, mask=mkv)
    if pv == 0:
        tl.store(dnall_ptr + sidx * DHQK + ok, dn, mask=mk)


_bw_recurrent = _autotuned(_bw_recurrent_kernel, _REC_CONFIGS)
_bw_recurrent_tma = _autotuned(_bw_recurrent_kernel, _REC_TMA_CONFIGS)


@triton.jit
def _bw_dqk_kernel(q_ptr, k_ptr, v_ptr, dh_ptr, lf_ptr, ig_ptr, rs_ptr, Call_ptr, nall_ptr, mall_ptr, dCall_ptr,
                   dnall_ptr, rden_ptr, dden_ptr, dmrow_ptr, dq_ptr, dk_ptr, di_ptr, dlf_ptr, ra_ptr, rl_ptr,
                   chunk_ptr, S, NC, NH, BH, scale, DHQK: tl.constexpr, DHV: tl.constexpr, L: tl.constexpr,
                   BK: tl.constexpr, BV: tl.constexpr, HAS_RESET: tl.constexpr, EMU: tl.constexpr, TMA: tl.constexpr,
                   KEY_DT: tl.constexpr):
    """One program per (b*head, chunk). The two L x L matmuls (Q K^T, dh V^T) run first with only per-token
    vectors live; the L x L gate tiles are built after them and reduced to dS (the one L x L tile live in
    the dq / dk loop) and row / column sums."""
    bh = tl.program_id(0).to(tl.int64)
    c = tl.program_id(1)
    bidx = bh // NH
    DT = q_ptr.dtype if TMA else q_ptr.dtype.element_ty
    t, pos, real, b, ig, seg, lb, in_last, log_a, g, cont, has_reset = _chunk_vec(
        lf_ptr, ig_ptr, rs_ptr, bh, bidx, c, S, L, HAS_RESET)
    sidx = bh * (NC + 1) + c
    m_c = tl.load(mall_ptr + sidx)
    m_n = tl.load(mall_ptr + sidx + 1)
    rden = tl.load(rden_ptr + bh * S + pos, mask=real, other=0.0)
    dden = tl.load(dden_ptr + bh * S + pos, mask=real, other=0.0)
    dmrow = tl.load(dmrow_ptr + bh * S + pos, mask=real, other=0.0)

    s_qk = _qk(q_ptr, k_ptr, bh, S, c, L, DHQK, BK, DT, EMU, TMA)
    dP = tl.zeros([L, L], dtype=tl.float32)  # d (sum_s P_ts v_s) / d P: dh_t . v_s / denom_t (+ the den path)
    for vv in range(0, tl.cdiv(DHV, BV)):
        dP += mm(_tok(dh_ptr, bh, S, c, vv, L, BV, DHV, TMA), tl.trans(_tok(v_ptr, bh, S, c, vv, L, BV, DHV, TMA)), DT,
                 EMU)
    dP = dP * rden[:, None] + dden[:, None]

    same, valid, logD = _chunk_tiles(t, real, b, ig, seg, HAS_RESET)
    log_init, amax_d, m_row = _row_max(logD, lb, cont, m_c)
    # routing of d m_row (torch semantics: maximum(log_init, amax(logD)))
    r_init = tl.where(log_init > amax_d, 1.0, tl.where(log_init == amax_d, 0.5, 0.0))
    is_max = valid & (logD == amax_d[:, None])
    cnt = tl.maximum(tl.sum(is_max.to(tl.float32), 1), 1.0)
    dS = dP * tl.where(valid, tl.exp(logD - m_row[:, None]), 0.0)
    dlogD = dS * s_qk * scale + tl.where(is_max, ((1.0 - r_init) / cnt * dmrow)[:, None], 0.0)
    # Everything that does not need the dq / dk loop is finished and stored now, so that only dS and a few
    # vectors stay live through it: the column / row sums of dlogD go to the di / dlf buffers (read back
    # below), the m_{c+1} routing (torch semantics: maximum(u, amax(log_a)), u = carried decay or reset
    # floor) is stored as it is.
    tok = bh * NC * L + c * L + t
    col = tl.sum(dlogD, 0)
    tl.store(di_ptr + tok, col)
    tl.store(dlf_ptr + tok, tl.sum(dlogD, 1) - col)
    amax_a = tl.max(log_a, 0)
    u = tl.where(has_reset, g, g + m_c)
    r_u = tl.where(u > amax_a, 1.0, tl.where(u == amax_a, 0.5, 0.0))
    is_max_a = in_last & real & (log_a == amax_a)
    cnt_a = tl.maximum(tl.sum(is_max_a.to(tl.float32), 0), 1.0)
    ra = tl.where(is_max_a, (1.0 - r_u) / cnt_a, 0.0)
    tl.store(ra_ptr + tok, ra)
    tl.store(rl_ptr + tok, tl.cumsum(ra, 0) - ra + tl.where(in_last, r_u, 0.0))
    cidx = (bh * NC + c) * 4
    tl.store(chunk_ptr + cidx + 3, tl.where(has_reset, 0.0, r_u))
    w_init = tl.where(cont, tl.exp(log_init - m_row), 0.0)
    dmrow_init = r_init * dmrow
    w_s = tl.exp(log_a - m_n)

    dwi = tl.zeros([L], dtype=tl.float32)
    A = tl.zeros([L], dtype=tl.float32)
    gsum = tl.zeros([BK], dtype=tl.float32)
    for kk in range(0, tl.cdiv(DHQK, BK)):
        ok = kk * BK + tl.arange(0, BK)
        mk = ok < DHQK
        X = tl.zeros([L, BK], dtype=tl.float32)  # X_t = C_c dh_t (times 1/denom_t below)
        Y = tl.zeros([L, BK], dtype=tl.float32)  # Y_s = dC_{c+1} v_s
        for vv in range(0, tl.cdiv(DHV, BV)):
            Ct = _st(Call_ptr, bh * NC + c, kk, vv, BK, BV, DHQK, DHV, TMA)  # C_c
            dCt = _st(dCall_ptr, bh * NC + c, kk, vv, BK, BV, DHQK, DHV, TMA)  # dC_{c+1}
            X += mm(_tok(dh_ptr, bh, S, c, vv, L, BV, DHV, TMA), tl.trans(Ct), DT, EMU)
            Y += mm(_tok(v_ptr, bh, S, c, vv, L, BV, DHV, TMA), tl.trans(dCt), DT, EMU)
            gsum += tl.sum(Ct.to(tl.float32) * dCt.to(tl.float32), 1)
        nt = tl.load(nall_ptr + sidx * DHQK + ok, mask=mk, other=0.0)
        dnt = tl.load(dnall_ptr + (sidx + 1) * DHQK + ok, mask=mk, other=0.0)
        gsum += nt * dnt
        Xn = X * rden[:, None] + dden[:, None] * nt[None, :]
        Yn = Y + dnt[None, :]
        qt = _tok(q_ptr, bh, S, c, kk, L, BK, DHQK, TMA)
        kt = _tok(k_ptr, bh, S, c, kk, L, BK, DHQK, TMA)
        dq = mm(dS, kt, DT, EMU) + w_init[:, None] * Xn
        dk = mm(tl.trans(dS), qt, DT, EMU) * scale + w_s[:, None] * Yn
        dwi += tl.sum(qt.to(tl.float32) * Xn, 1) * scale
        A += w_s * tl.sum(kt.to(tl.float32) * Yn, 1)
        _store_tok(dq_ptr, dq * scale, bh, S, c, kk, L, BK, DHQK, TMA)
        _store_tok(dk_ptr, dk, bh, S, c, kk, L, BK, DHQK, TMA)

    # gate gradients with m held fixed, plus the m_row routing (all local to the chunk)
    w_dec = tl.where(has_reset, 0.0, tl.exp(g + m_c - m_n))
    gw = tl.where(has_reset, 0.0, w_dec * tl.sum(gsum, 0))  # d/d(g + m_c) through the carried state
    dlog_init = w_init * dwi + dmrow_init
    r_sum = tl.sum(tl.where(cont, dlog_init, 0.0), 0)  # goes to m_c
    dlb = dlog_init + tl.where(t == L - 1, gw, 0.0)
    sum_a = tl.sum(A, 0)
    # the stores of col / rows - col above came from other threads (another layout): a CTA barrier, and .cg
    # loads (from L2, not a possibly stale L1 line)
    tl.debug_barrier()
    di = tl.load(di_ptr + tok, cache_modifier=".cg") + A
    db = tl.load(dlf_ptr + tok, cache_modifier=".cg") - A + tl.where(t == L - 1, sum_a, 0.0)
    if HAS_RESET:  # lb_t sums lf over t's segment: dlf_s += sum of dlb_t over t >= s in s's segment
        in_seg = (t[None, :] <= t[:, None]) & (seg[None, :] == seg[:, None])  # same_ts, rebuilt here
        dlf = tl.cumsum(db, 0, reverse=True) + tl.sum(tl.where(in_seg, dlb[:, None], 0.0), 0)
    else:
        dlf = tl.cumsum(db + dlb, 0, reverse=True)
    tl.debug_barrier()  # every thread has read di / dlf before they are overwritten
    tl.store(di_ptr + tok, di)
    tl.store(dlf_ptr + tok, dlf)
    tl.store(chunk_ptr + cidx, gw)
    tl.store(chunk_ptr + cidx + 1, sum_a)
    tl.store(chunk_ptr + cidx + 2, r_sum)


_bw_dqk = _autotuned(_bw_dqk_kernel, _DQK_CONFIGS)
_DQK_TMA_CONFIGS = _tma_configs(_DQK_CONFIGS)
_bw_dqk_tma = _autotuned(_bw_dqk_kernel, _DQK_TMA_CONFIGS)


@triton.jit
def _bw_dv_kernel(q_ptr, k_ptr, dh_ptr, lf_ptr, ig_ptr, rs_ptr, mall_ptr, dCall_ptr, rden_ptr, dv_ptr, S, NC, NH, BH,
                  scale, DHQK: tl.constexpr, DHV: tl.constexpr, L: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
                  HAS_RESET: tl.constexpr, EMU: tl.constexpr, TMA: tl.constexpr, KEY_DT: tl.constexpr):
    """One program per (b*head, chunk): P once, then dv_s = sum_t P_ts dh_t / denom_t + w_s dC_{c+1}^T k_s
    tile by tile over DHV."""
    bh = tl.program_id(0).to(tl.int64)
    c = tl.program_id(1)
    bidx = bh // NH
    DT = q_ptr.dtype if TMA else q_ptr.dtype.element_ty
    P, pos, real, log_a, log_init, cont, m_row, sidx = _intra_weights(
        q_ptr, k_ptr, lf_ptr, ig_ptr, rs_ptr, mall_ptr, bh, bidx, c, S, NC, scale, L, DHQK, BK, HAS_RESET, DT, EMU,
        TMA)
    w_s = tl.exp(log_a - tl.load(mall_ptr + sidx + 1))
    Pr = P * tl.load(rden_ptr + bh * S + pos, mask=real, other=0.0)[:, None]  # 1/denom_t on P's rows
    for vv in range(0, tl.cdiv(DHV, BV)):
        Z = tl.zeros([L, BV], dtype=tl.float32)  # Z_s = dC_{c+1}^T k_s
        for kk in range(0, tl.cdiv(DHQK, BK)):
            Z += mm(_tok(k_ptr, bh, S, c, kk, L, BK, DHQK, TMA),
                    _st(dCall_ptr, bh * NC + c, kk, vv, BK, BV, DHQK, DHV, TMA), DT, EMU)
        dv = mm(tl.trans(Pr), _tok(dh_ptr, bh, S, c, vv, L, BV, DHV, TMA), DT, EMU) + w_s[:, None] * Z
        _store_tok(dv_ptr, dv, bh, S, c, vv, L, BV, DHV, TMA)


_bw_dv = _autotuned(_bw_dv_kernel, _PAR_CONFIGS)
_bw_dv_tma = _autotuned(_bw_dv_kernel, _PAR_TMA_CONFIGS)


@triton.jit
def _bw_mchain(di_ptr, dlf_ptr, ra_ptr, rl_ptr, chunk_ptr, dmN_ptr, di_out_ptr, dlf_out_ptr, dm0_ptr, NC,
               L: tl.constexpr):
    bh = tl.program_id(0).to(tl.int64)
    t = tl.arange(0, L)
    dm = tl.load(dmN_ptr + bh)
    for cc in range(NC):
        c = NC - 1 - cc
        cidx = (bh * NC + c) * 4
        gw = tl.load(chunk_ptr + cidx)
        sum_a = tl.load(chunk_ptr + cidx + 1)
        r_sum = tl.load(chunk_ptr + cidx + 2)
        r_dec = tl.load(chunk_ptr + cidx + 3)
        x = dm - gw - sum_a  # total gradient into m_{c+1} through its definition as a max
        tok = bh * NC * L + c * L + t
        tl.store(di_out_ptr + tok, tl.load(di_ptr + tok) + x * tl.load(ra_ptr + tok))
        tl.store(dlf_out_ptr + tok, tl.load(dlf_ptr + tok) + x * tl.load(rl_ptr + tok))
        dm = r_sum + gw + r_dec * x
    tl.store(dm0_ptr + bh, dm)


# ---------------------------------------------------------------------------------------------------
# launch helpers
# ---------------------------------------------------------------------------------------------------
def _meta(DHQK: int, DHV: int) -> dict:
    """Fixed block sizes under the interpreter (the autotuner picks them on a GPU)."""
    if not INTERPRET:
        return {}
    return {"BK": pow2_block(DHQK), "BV": pow2_block(DHV)}


@functools.lru_cache(maxsize=None)
def _has_tma(device: torch.device) -> bool:
    # ROCm reports its GPUs as "cuda" devices too (an MI300 as capability 9.4): TMA is NVIDIA's
    return device.type == "cuda" and torch.version.hip is None and torch.cuda.get_device_capability(device)[0] >= 9


def _use_tma(L: int, *tensors) -> bool:
    """Whether a launch reads and writes its tiles through tensor descriptors (``TMA_LOADS``): TMA needs
    16-byte aligned base addresses and row strides, boxes of at most 256 rows, and a descriptor cannot describe
    an empty tensor (a batch of 0 or a sequence of length 0 runs the pointer path, which launches nothing)."""
    if TMA_LOADS is False or os.environ.get("XLSTM_MLSTM_TMA", "1") == "0":
        return False
    if TMA_LOADS is None and (tensors[0].element_size() != 2 or not _has_tma(tensors[0].device)):
        return False
    return L <= 256 and all(t.numel() > 0 and t.is_contiguous() and t.data_ptr() % 16 == 0
                            and t.shape[-1] * t.element_size() % 16 == 0 for t in tensors)


def _sources(tma: bool, meta: dict, **tensors) -> list:
    """A launch's tile sources in argument order: the tensors, or (``tma``) 3-D tensor descriptors of them,
    (B*NH, S, D) for token tensors and (B*NH*NC, DHQK, DHV) for per-chunk states. On a GPU each autotune config
    sets the block shapes (``_set_tma_blocks``); under the interpreter ``meta`` holds the fixed tiles."""
    if not tma:
        return list(tensors.values())
    out = {}
    for name, t in tensors.items():
        rows, cols = t.shape[-2], t.shape[-1]
        out[name] = TensorDescriptor(t, [t.numel() // (rows * cols), rows, cols], [rows * cols, cols, 1], [1, 16, 16])
    if INTERPRET:
        _set_tma_blocks({**out, **meta})
    return list(out.values())


def _chunk_states(k, v, lf, ig, rs, C0, n0, m0, L):
    """The state before every chunk and the final one: C_all (BH, NC, DHQK, DHV) in ``state_dtype``, the final
    C (BH, DHQK, DHV) fp32, n_all (BH, NC+1, DHQK) and m_all (BH, NC+1) fp32 (index NC: the final n, m)."""
    B, NH, S, DHQK = k.shape
    DHV = v.shape[-1]
    BH = B * NH
    NC = triton.cdiv(S, L)
    dev = k.device
    f32 = torch.float32
    C_all = torch.empty(BH, NC, DHQK, DHV, dtype=state_dtype(k.dtype), device=dev)
    CN = torch.empty(BH, DHQK, DHV, dtype=f32, device=dev)
    n_all = torch.empty(BH, NC + 1, DHQK, dtype=f32, device=dev)
    m_all = torch.empty(BH, NC + 1, dtype=f32, device=dev)
    has_reset = rs is not None
    meta = _meta(DHQK, DHV)
    tma = _use_tma(L, k, v, C_all)
    k_src, v_src, C_src = _sources(tma, dict(meta, L=L), k_ptr=k, v_ptr=v, Call_ptr=C_all)
    grid = lambda M: (BH, triton.cdiv(DHQK, M["BK"]), triton.cdiv(DHV, M["BV"]))  # noqa: E731
    (_fw_recurrent_tma if tma else _fw_recurrent)[grid](
        k_src, v_src, lf, ig, rs if has_reset else lf, C0, n0, m0, C_src, CN, n_all, m_all, S, NC, NH, tune_bucket(BH),
        DHQK=DHQK, DHV=DHV, L=L, HAS_RESET=has_reset, EMU=INTERPRET, TMA=tma, KEY_DT=str(k.dtype), **meta)
    return C_all, CN, n_all, m_all


def _forward(q, k, v, lf, ig, rs, C0, n0, m0, eps, L):
    B, NH, S, DHQK = q.shape
    DHV = v.shape[-1]
    BH = B * NH
    NC = triton.cdiv(S, L)
    dev = q.device
    f32 = torch.float32
    C_all, CN, n_all, m_all = _chunk_states(k, v, lf, ig, rs, C0, n0, m0, L)
    h = torch.empty(B, NH, S, DHV, dtype=v.dtype, device=dev)
    m_row = torch.empty(BH, S, dtype=f32, device=dev)
    den = torch.empty(BH, S, dtype=f32, device=dev)
    has_reset = rs is not None
    rs_arg = rs if has_reset else lf
    emu = INTERPRET
    meta = _meta(DHQK, DHV)
    tma = _use_tma(L, q, k, v, C_all, h)
    q_s, k_s, v_s, C_s, h_s = _sources(tma, dict(meta, L=L), q_ptr=q, k_ptr=k, v_ptr=v, Call_ptr=C_all, h_ptr=h)
    (_fw_output_tma if tma else _fw_output)[(BH, NC)](
        q_s, k_s, v_s, lf, ig, rs_arg, C_s, n_all, m_all, h_s, m_row, den, S, NC, NH, tune_bucket(BH), DHQK**-0.5, eps,
        DHQK=DHQK, DHV=DHV, L=L, HAS_RESET=has_reset, EMU=emu, TMA=tma, KEY_DT=str(k.dtype), **meta)
    return h, C_all, CN, n_all, m_all, m_row, den


def _backward(q, k, v, lf, ig, rs, C_all, n_all, m_all, m_row, den, h, dh, dCN, dnN, dmN, eps, L):
    B, NH, S, DHQK = q.shape
    DHV = v.shape[-1]
    BH = B * NH
    NC = triton.cdiv(S, L)
    dev = q.device
    f32 = torch.float32
    scale = DHQK**-0.5
    # 0. per-token scalars: denom = max(|den|, exp(-m_row)) + eps, h = num / denom
    rden = torch.empty(BH, S, dtype=f32, device=dev)
    dden = torch.empty_like(rden)
    dmrow = torch.empty_like(rden)
    _bw_prep[(BH, triton.cdiv(S, 64))](dh, h, den, m_row, rden, dden, dmrow, S, eps, DHV=DHV, BT=64,
                                        BV=pow2_block(DHV, hi=128))
    has_reset = rs is not None
    rs_arg = rs if has_reset else lf
    emu = INTERPRET
    meta = _meta(DHQK, DHV)
    dC_all = torch.empty(BH, NC, DHQK, DHV, dtype=C_all.dtype, device=dev)  # dC_{c+1} at c: C_c's dtype
    dC0 = torch.empty(BH, DHQK, DHV, dtype=f32, device=dev)
    dn_all = torch.empty(BH, NC + 1, DHQK, dtype=f32, device=dev)
    tma = _use_tma(L, q, k, v, dh, C_all, dC_all)
    mt = dict(meta, L=L)
    q_s, dh_s, dC_s = _sources(tma, mt, q_ptr=q, dh_ptr=dh, dCall_ptr=dC_all)
    grid = lambda M: (BH, triton.cdiv(DHQK, M["BK"]), triton.cdiv(DHV, M["BV"]))  # noqa: E731
    (_bw_recurrent_tma if tma else _bw_recurrent)[grid](
        q_s, dh_s, lf, ig, rs_arg, m_all, m_row, rden, dden, dCN, dnN, dC_s, dC0, dn_all, S, NC, NH, tune_bucket(BH),
        scale, DHQK=DHQK, DHV=DHV, L=L, HAS_RESET=has_reset, EMU=emu, TMA=tma, KEY_DT=str(k.dtype), **meta)
    dq = torch.empty_like(q)
    dk = torch.empty_like(k)
    dv = torch.empty_like(v)
    di_loc = torch.empty(BH, NC * L, dtype=f32, device=dev)
    dlf_loc = torch.empty_like(di_loc)
    ra = torch.empty_like(di_loc)
    rl = torch.empty_like(di_loc)
    chunk = torch.empty(BH, NC, 4, dtype=f32, device=dev)
    q_s, k_s, v_s, dh_s, C_s, dC_s, dq_s, dk_s = _sources(
        tma, mt, q_ptr=q, k_ptr=k, v_ptr=v, dh_ptr=dh, Call_ptr=C_all, dCall_ptr=dC_all, dq_ptr=dq, dk_ptr=dk)
    (_bw_dqk_tma if tma else _bw_dqk)[(BH, NC)](
        q_s, k_s, v_s, dh_s, lf, ig, rs_arg, C_s, n_all, m_all, dC_s, dn_all, rden, dden, dmrow, dq_s, dk_s,
        di_loc, dlf_loc, ra, rl, chunk, S, NC, NH, tune_bucket(BH), scale,
        DHQK=DHQK, DHV=DHV, L=L, HAS_RESET=has_reset, EMU=emu, TMA=tma, KEY_DT=str(k.dtype), **meta)
    q_s, k_s, dh_s, dC_s, dv_s = _sources(tma, mt, q_ptr=q, k_ptr=k, dh_ptr=dh, dCall_ptr=dC_all, dv_ptr=dv)
    (_bw_dv_tma if tma else _bw_dv)[(BH, NC)](
        q_s, k_s, dh_s, lf, ig, rs_arg, m_all, dC_s, rden, dv_s, S, NC, NH, tune_bucket(BH), scale,
        DHQK=DHQK, DHV=DHV, L=L, HAS_RESET=has_reset, EMU=emu, TMA=tma, KEY_DT=str(k.dtype), **meta)
    di = torch.empty_like(di_loc)
    dlf = torch.empty_like(di_loc)
    dm0 = torch.empty(BH, dtype=f32, device=dev)
    _bw_mchain[(BH,)](di_loc, dlf_loc, ra, rl, chunk, dmN, di, dlf, dm0, NC, L=L)
    return dq, dk, dv, di[:, :S], dlf[:, :S], dC0, dn_all[:, 0], dm0


class _MLSTMChunkwiseTriton(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, i, f, C0, n0, m0, reset, eps, L):
        B, NH, S, DHQK = q.shape
        DHV = v.shape[-1]
        BH = B * NH
        q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
        lf = F.logsigmoid(f.float()).reshape(BH, S).contiguous()
        ig = i.float().reshape(BH, S).contiguous()
        rs = None if reset is None else reset.to(torch.int32).contiguous()
        C0c = C0.float().reshape(BH, DHQK, DHV).contiguous()
        n0c = n0.float().reshape(BH, DHQK).contiguous()
        m0c = m0.float().reshape(BH).contiguous()
        h, C_all, CN, n_all, m_all, m_row, den = _forward(q, k, v, lf, ig, rs, C0c, n0c, m0c, eps, L)
        NC = C_all.shape[1]
        C = CN.reshape(B, NH, DHQK, DHV)
        n = n_all[:, NC].reshape(B, NH, DHQK).clone()
        m = m_all[:, NC].reshape(B, NH, 1).clone()
        if RECOMPUTE_STATES_IN_BACKWARD:
            del C_all, n_all  # recomputed in backward from (C0, n0, m0)
            states = (C0c, n0c, m0c)
        else:
            states = (C_all, n_all, m_all)
        ctx.save_for_backward(q, k, v, f, lf, ig, rs, *states, m_row, den, h)
        ctx.eps, ctx.L, ctx.recompute = eps, L, RECOMPUTE_STATES_IN_BACKWARD
        ctx.in_dtypes = (i.dtype, f.dtype, C0.dtype, n0.dtype, m0.dtype)
        return h, C, n, m

    @staticmethod
    def backward(ctx, dh, dC, dn, dm):
        q, k, v, f, lf, ig, rs, *states, m_row, den, h = ctx.saved_tensors
        if ctx.recompute:
            C_all, CN, n_all, m_all = _chunk_states(k, v, lf, ig, rs, *states, ctx.L)
            del CN  # the final C: the forward returned it
        else:
            C_all, n_all, m_all = states
        B, NH, S, DHQK = q.shape
        DHV = v.shape[-1]
        BH = B * NH
        f32 = torch.float32
        dh = torch.zeros_like(h) if dh is None else dh.contiguous()
        dCN = torch.zeros(BH, DHQK, DHV, dtype=f32, device=q.device) if dC is None else dC.float().reshape(BH, DHQK, DHV).contiguous()
        dnN = torch.zeros(BH, DHQK, dtype=f32, device=q.device) if dn is None else dn.float().reshape(BH, DHQK).contiguous()
        dmN = torch.zeros(BH, dtype=f32, device=q.device) if dm is None else dm.float().reshape(BH).contiguous()
        dq, dk, dv, di, dlf, dC0, dn0, dm0 = _backward(q, k, v, lf, ig, rs, C_all, n_all, m_all, m_row, den, h, dh,
                                                       dCN, dnN, dmN, ctx.eps, ctx.L)
        i_dt, f_dt, C_dt, n_dt, m_dt = ctx.in_dtypes
        df = dlf.reshape(B, NH, S) * torch.sigmoid(-f.float())
        return (dq, dk, dv, di.reshape(B, NH, S).to(i_dt), df.to(f_dt), dC0.reshape(B, NH, DHQK, DHV).to(C_dt),
                dn0.reshape(B, NH, DHQK).to(n_dt), dm0.reshape(B, NH, 1).to(m_dt), None, None, None)


def mlstm_chunkwise_triton(
    q, k, v, i, f, initial_state=None, reset=None, return_final_state: bool = False, eps: float = 1e-6,
    chunk_size: int = 64,
):
    """Triton chunkwise mLSTM: same signature and function as ``chunkwise.mlstm_chunkwise``."""
    check_inputs(q, k, v, i, f, initial_state, reset)
    B, NH, S, DHQK = q.shape
    DHV = v.shape[-1]
    L = chunk_plan(S, chunk_size, TL_DOT_MIN_CHUNK).length  # the package's one rule; tl.dot needs >= 16
    if q.dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise TypeError(f"mLSTM triton: q/k/v must be fp32, bf16 or fp16, got {q.dtype}")
    if k.dtype != q.dtype or v.dtype != q.dtype:
        raise TypeError(f"mLSTM triton: q, k, v must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if initial_state is None:
        C0 = torch.zeros(B, NH, DHQK, DHV, dtype=torch.float32, device=q.device)
        n0 = torch.zeros(B, NH, DHQK, dtype=torch.float32, device=q.device)
        m0 = torch.zeros(B, NH, 1, dtype=torch.float32, device=q.device)
    else:
        C0, n0, m0 = initial_state
    h, C, n, m = _MLSTMChunkwiseTriton.apply(q, k, v, i, f, C0, n0, m0, reset, float(eps), L)
    if not return_final_state:
        return h
    return h, (C, n, m)


def flops_fwbw(B: int, NH: int, S: int, DHQK: int, DHV: int, L: int) -> float:
    """Rough matmul FLOPs of one forward + backward (for TFLOP/s reports; gates and elementwise ignored)."""
    NC = math.ceil(S / L)
    T = NC * L
    fw = 2 * T * DHQK * DHV * 2 + 2 * T * L * DHQK + 2 * T * L * DHV  # state update + q C, QK^T, PV
    bw = (2 * T * DHQK * DHV  # dC recurrence
          + 2 * T * L * DHQK * 3 + 2 * T * L * DHV  # S (x2), dS K, dS^T Q ; dP
          + 2 * T * DHQK * DHV * 2  # X, Y
          + 2 * T * L * DHQK + 2 * T * L * DHV + 2 * T * DHQK * DHV)  # S in dv, P^T dnum, Z
    return float(B * NH * (fw + bw))
