"""Fused recurrent sLSTM in Triton: forward and backward kernels behind a ``torch.autograd.Function``.

Computes the same function as ``naive.slstm_recurrent`` (conventions there: wx (B, S, 4, NH, DH) gate
pre-activations in the order (i, f, z, o), block-diagonal R (4, NH, DH, DH), b (4, NH, DH), fp32 state
(y, c, n, m), per-element ``n == 0`` test for a fresh state, document reset = state zeroed before the
token). Gradients are those of the reference's autograd: m is computed without gradient, but the
previous m enters ``f' = min(exp(log σ(f~) + m_{t-1} - m_t), 1)`` with gradient, so the initial m gets a
gradient at the first step (later m's are gradient-free), and ``clamp(max=1)`` passes the gradient where
the value is <= 1, like torch.

Three kernel pairs, one chosen per call. For DH <= 64 one program per (batch tile of BB rows, head) loops
over time, with the head's recurrent weights (4 x DH x DH) loaded once before the loop and kept on chip
(registers) together with the state. Larger heads do not fit (4 x 128 x 128 fp32 is 256 KiB): the "blocked"
kernels tile the step over column blocks of BN, re-read the R tiles every step (L2-resident) and keep the
carried state in global memory (the per-step state the backward needs anyway, plus a small double-buffered
scratch in the backward), with a CTA barrier between steps. On a GPU, where that (batch tiles x heads) grid
would leave most SMs idle, the "split" kernels spread each head's columns over several programs that keep
their R slice on chip and meet at a group barrier every step (section below; ``split_plan`` picks the tile;
every shipped run uses them). The forward stores the per-step states and raw gates for the backward; the
backward runs the reverse recurrence (gate gradients, dy through R^T, dc, dn) and writes the gate gradients
of every step; dR and db are then one batched matmul / sum in torch (parallel over time instead of a
loop-carried DH x DH accumulator).
Inputs are bf16 / fp16 / fp32 (fp64 is handled by the torch reference). For half inputs the recurrent
matmuls round y and R to the input dtype (tensor cores, fp32 accumulation), like the official CUDA
kernel; fp32 inputs use exact fp32 products.
"""

from __future__ import annotations

import contextlib
import os

import torch
import triton
import triton.language as tl

from ..triton_utils import INTERPRET, logsigmoid, maybe_autotune, mm, tanh

BB = 16  # batch rows per program: tl.dot's minimum, and the tensor cores' (mma m16): below 16 rows the idle rows
# cost no time in these latency-bound steps; parallelism for small batches comes from the split kernels
_CONFIGS = [triton.Config({}, num_warps=w, num_stages=1) for w in (8, 4, 2)]  # [0]: default (no spills at DH 64)


@triton.jit
def _load_r(R_ptr, h, NH, od, md, DH: tl.constexpr):
    off = (h * DH + od[:, None]) * DH + od[None, :]
    msk = md[:, None] & md[None, :]
    gs = NH * DH * DH
    Ri = tl.load(R_ptr + off, mask=msk, other=0.0).to(tl.float32)
    Rf = tl.load(R_ptr + gs + off, mask=msk, other=0.0).to(tl.float32)
    Rz = tl.load(R_ptr + 2 * gs + off, mask=msk, other=0.0).to(tl.float32)
    Ro = tl.load(R_ptr + 3 * gs + off, mask=msk, other=0.0).to(tl.float32)
    return Ri, Rf, Rz, Ro


@triton.jit
def _cell_fw(ri, rf, rz, ro, cp, np_, mp):
    """One step of the sLSTM cell from the gate pre-activations and the previous (c, n, m): (y, c, n, m)."""
    lf = logsigmoid(rf)
    m_new = tl.where(np_ == 0.0, ri, tl.maximum(ri, lf + mp))
    ia = tl.minimum(tl.exp(ri - m_new), 1.0)
    fa = tl.minimum(tl.exp(lf + mp - m_new), 1.0)
    c = fa * cp + ia * tanh(rz)
    n = fa * np_ + ia
    return tl.sigmoid(ro) * c / n, c, n, m_new


@triton.jit
def _store4(ptr, off, stride, a, b, c, d, mask):
    tl.store(ptr + off, a, mask=mask)
    tl.store(ptr + off + stride, b, mask=mask)
    tl.store(ptr + off + 2 * stride, c, mask=mask)
    tl.store(ptr + off + 3 * stride, d, mask=mask)


@triton.jit
def _cell_bw(dy, dc, dn, ri, rf, rz, ro, ct, nt, mt, cp, np_, mp, m2):
    """Reverse of ``_cell_fw`` given dy (total), the carried dc, dn and the step's gates / states: the gate
    gradients (d_i, d_f, d_z, d_o), d log f (the previous m's gradient) and dc, dn for the previous step
    (before the reset mask)."""
    lf = logsigmoid(rf)
    ia_raw = tl.exp(ri - mt)
    fa_raw = tl.exp(lf + mp - mt)
    ia = tl.minimum(ia_raw, 1.0)
    fa = tl.minimum(fa_raw, 1.0)
    tz = tanh(rz)
    so = tl.sigmoid(ro)
    r_n = 1.0 / nt
    dc = dc + dy * so * r_n
    dn = dn - dy * so * ct * r_n * r_n
    d_o = tl.where(m2, dy * ct * r_n * so * (1.0 - so), 0.0)
    dfa = dc * cp + dn * np_
    dia = dc * tz + dn
    d_z = tl.where(m2, dc * ia * (1.0 - tz * tz), 0.0)
    d_i = tl.where(m2 & (ia_raw <= 1.0), dia * ia_raw, 0.0)
    dlf = tl.where(m2 & (fa_raw <= 1.0), dfa * fa_raw, 0.0)
    d_f = dlf * tl.sigmoid(-rf)
    return d_i, d_f, d_z, d_o, dlf, dc * fa, dn * fa


@triton.jit
def _fw_step(t, y, c, n, m, Ri, Rf, Rz, Ro, bi, bf, bz, bo, wx_ptr, rs_ptr, y_ptr, hs_ptr, gs_ptr, ob, od, mb, m2,
             h, S, NH, DH: tl.constexpr, HAS_RESET: tl.constexpr, EMU: tl.constexpr):
    DT = wx_ptr.dtype.element_ty
    if HAS_RESET:
        r = tl.load(rs_ptr + ob.to(tl.int64) * S + t, mask=mb, other=0)
        keep = tl.where(r != 0, 0.0, 1.0)[:, None]
        y = y * keep
        c = c * keep
        n = n * keep
        m = m * keep
    row = ob.to(tl.int64) * S + t  # (b, t)
    gate = (row[:, None] * 4 * NH + h) * DH + od[None, :]  # wx[b, t, 0, h, :]
    gstride = NH * DH
    ri = tl.load(wx_ptr + gate, mask=m2, other=0.0).to(tl.float32) + mm(y, Ri, DT, EMU) + bi[None, :]
    rf = tl.load(wx_ptr + gate + gstride, mask=m2, other=0.0).to(tl.float32) + mm(y, Rf, DT, EMU) + bf[None, :]
    rz = tl.load(wx_ptr + gate + 2 * gstride, mask=m2, other=0.0).to(tl.float32) + mm(y, Rz, DT, EMU) + bz[None, :]
    ro = tl.load(wx_ptr + gate + 3 * gstride, mask=m2, other=0.0).to(tl.float32) + mm(y, Ro, DT, EMU) + bo[None, :]
    y, c, n, m_new = _cell_fw(ri, rf, rz, ro, c, n, m)
    y = tl.where(m2, y, 0.0)
    tl.store(y_ptr + (row[:, None] * NH + h) * DH + od[None, :], y.to(y_ptr.dtype.element_ty), mask=m2)
    _store4(hs_ptr, gate, gstride, y, c, n, m_new, m2)
    _store4(gs_ptr, gate, gstride, ri, rf, rz, ro, m2)
    return y, c, n, m_new


@maybe_autotune(_CONFIGS, key=["DH"])
@triton.jit
def _slstm_fw(wx_ptr, R_ptr, b_ptr, s0_ptr, rs_ptr, y_ptr, hs_ptr, gs_ptr, B, S, NH,
              DH: tl.constexpr, DHP: tl.constexpr, BB: tl.constexpr, HAS_RESET: tl.constexpr, EMU: tl.constexpr):
    pb = tl.program_id(0)
    h = tl.program_id(1)
    ob = pb * BB + tl.arange(0, BB)
    od = tl.arange(0, DHP)
    mb = ob < B
    md = od < DH
    m2 = mb[:, None] & md[None, :]
    bi = tl.load(b_ptr + h * DH + od, mask=md, other=0.0).to(tl.float32)
    bf = tl.load(b_ptr + (NH + h) * DH + od, mask=md, other=0.0).to(tl.float32)
    bz = tl.load(b_ptr + (2 * NH + h) * DH + od, mask=md, other=0.0).to(tl.float32)
    bo = tl.load(b_ptr + (3 * NH + h) * DH + od, mask=md, other=0.0).to(tl.float32)
    st = (ob.to(tl.int64)[:, None] * NH + h) * DH + od[None, :]
    BND = B * NH * DH
    y = tl.load(s0_ptr + st, mask=m2, other=0.0)
    c = tl.load(s0_ptr + BND + st, mask=m2, other=0.0)
    n = tl.load(s0_ptr + 2 * BND + st, mask=m2, other=0.0)
    m = tl.load(s0_ptr + 3 * BND + st, mask=m2, other=0.0)
    Ri, Rf, Rz, Ro = _load_r(R_ptr, h, NH, od, md, DH)
    for t in range(S):
        y, c, n, m = _fw_step(t, y, c, n, m, Ri, Rf, Rz, Ro, bi, bf, bz, bo, wx_ptr, rs_ptr, y_ptr, hs_ptr, gs_ptr,
                              ob, od, mb, m2, h, S, NH, DH, HAS_RESET, EMU)


@triton.jit
def _saved_step(gs_ptr, hs_ptr, gate, gstride, m2):
    """What the forward saved for a step, at offsets ``gate``: the raw gates (i, f, z, o) and the state (c, n, m)
    after it (n = 1 outside the mask: no division by zero in the masked lanes)."""
    ri = tl.load(gs_ptr + gate, mask=m2, other=0.0)
    rf = tl.load(gs_ptr + gate + gstride, mask=m2, other=0.0)
    rz = tl.load(gs_ptr + gate + 2 * gstride, mask=m2, other=0.0)
    ro = tl.load(gs_ptr + gate + 3 * gstride, mask=m2, other=0.0)
    c = tl.load(hs_ptr + gate + gstride, mask=m2, other=0.0)
    n = tl.load(hs_ptr + gate + 2 * gstride, mask=m2, other=1.0)
    m = tl.load(hs_ptr + gate + 3 * gstride, mask=m2, other=0.0)
    return ri, rf, rz, ro, c, n, m


@triton.jit
def _bw_step(t, dy_rec, dc, dn, dm_p, Ri, Rf, Rz, Ro, dy_ptr, rs_ptr, hs_ptr, gs_ptr, s0_ptr, dg_ptr, ob, od, mb,
             m2, h, B, S, NH, DH: tl.constexpr, HAS_RESET: tl.constexpr, EMU: tl.constexpr):
    DT = dy_ptr.dtype.element_ty
    row = ob.to(tl.int64) * S + t
    gate = (row[:, None] * 4 * NH + h) * DH + od[None, :]
    gstride = NH * DH
    # state before the step (after the reset of this token)
    if t > 0:
        prev = gate - 4 * NH * DH  # hs[b, t-1]
        yp = tl.load(hs_ptr + prev, mask=m2, other=0.0)
        cp = tl.load(hs_ptr + prev + gstride, mask=m2, other=0.0)
        np_ = tl.load(hs_ptr + prev + 2 * gstride, mask=m2, other=0.0)
        mp = tl.load(hs_ptr + prev + 3 * gstride, mask=m2, other=0.0)
    else:
        st = (ob.to(tl.int64)[:, None] * NH + h) * DH + od[None, :]
        BND = B * NH * DH
        yp = tl.load(s0_ptr + st, mask=m2, other=0.0)
        cp = tl.load(s0_ptr + BND + st, mask=m2, other=0.0)
        np_ = tl.load(s0_ptr + 2 * BND + st, mask=m2, other=0.0)
        mp = tl.load(s0_ptr + 3 * BND + st, mask=m2, other=0.0)
    keep = tl.zeros([1, 1], dtype=tl.float32) + 1.0
    if HAS_RESET:
        r = tl.load(rs_ptr + ob.to(tl.int64) * S + t, mask=mb, other=0)
        keep = tl.where(r != 0, 0.0, 1.0)[:, None]
        yp = yp * keep
        cp = cp * keep
        np_ = np_ * keep
        mp = mp * keep
    ri, rf, rz, ro, ct, nt, mt = _saved_step(gs_ptr, hs_ptr, gate, gstride, m2)
    dy = tl.load(dy_ptr + (row[:, None] * NH + h) * DH + od[None, :], mask=m2, other=0.0).to(tl.float32) + dy_rec
    d_i, d_f, d_z, d_o, dlf, dc, dn = _cell_bw(dy, dc, dn, ri, rf, rz, ro, ct, nt, mt, cp, np_, mp, m2)
    _store4(dg_ptr, gate, gstride, d_i, d_f, d_z, d_o, m2)
    dyp = (mm(d_i, tl.trans(Ri), DT, EMU) + mm(d_f, tl.trans(Rf), DT, EMU) + mm(d_z, tl.trans(Rz), DT, EMU)
           + mm(d_o, tl.trans(Ro), DT, EMU))
    dy_rec = dyp * keep
    dc = dc * keep
    dn = dn * keep
    dm_p = dlf * keep
    return dy_rec, dc, dn, dm_p


@maybe_autotune(_CONFIGS, key=["DH"])
@triton.jit
def _slstm_bw(dy_ptr, R_ptr, hs_ptr, gs_ptr, s0_ptr, rs_ptr, dsN_ptr, dg_ptr, ds0_ptr, B, S, NH,
              DH: tl.constexpr, DHP: tl.constexpr, BB: tl.constexpr, HAS_RESET: tl.constexpr, EMU: tl.constexpr):
    pb = tl.program_id(0)
    h = tl.program_id(1)
    ob = pb * BB + tl.arange(0, BB)
    od = tl.arange(0, DHP)
    mb = ob < B
    md = od < DH
    m2 = mb[:, None] & md[None, :]
    st = (ob.to(tl.int64)[:, None] * NH + h) * DH + od[None, :]
    BND = B * NH * DH
    dy_rec = tl.load(dsN_ptr + st, mask=m2, other=0.0)
    dc = tl.load(dsN_ptr + BND + st, mask=m2, other=0.0)
    dn = tl.load(dsN_ptr + 2 * BND + st, mask=m2, other=0.0)
    dm_p = tl.zeros([BB, DHP], dtype=tl.float32)
    Ri, Rf, Rz, Ro = _load_r(R_ptr, h, NH, od, md, DH)
    for tt in range(S):
        dy_rec, dc, dn, dm_p = _bw_step(S - 1 - tt, dy_rec, dc, dn, dm_p, Ri, Rf, Rz, Ro, dy_ptr, rs_ptr, hs_ptr,
                                        gs_ptr, s0_ptr, dg_ptr, ob, od, mb, m2, h, B, S, NH, DH, HAS_RESET, EMU)
    tl.store(ds0_ptr + st, dy_rec, mask=m2)
    tl.store(ds0_ptr + BND + st, dc, mask=m2)
    tl.store(ds0_ptr + 2 * BND + st, dn, mask=m2)
    tl.store(ds0_ptr + 3 * BND + st, dm_p, mask=m2)


@triton.jit
def _y_times_r(ysrc, keep, R_ptr, h, NH, mb, oc, mc, DH: tl.constexpr, BB: tl.constexpr, BN: tl.constexpr,
               BK: tl.constexpr, DT: tl.constexpr, EMU: tl.constexpr):
    """y_{t-1} @ R_g[:, oc] for the 4 gates in row blocks of BK, R re-read (from L2) every step. ``ysrc``: [BB, 1]
    pointers to the rows of y_{t-1} (written by other threads or programs: L2 loads, not L1)."""
    acc_i = tl.zeros([BB, BN], dtype=tl.float32)
    acc_f = tl.zeros([BB, BN], dtype=tl.float32)
    acc_z = tl.zeros([BB, BN], dtype=tl.float32)
    acc_o = tl.zeros([BB, BN], dtype=tl.float32)
    RG = NH * DH * DH
    for kb in range(0, tl.cdiv(DH, BK)):
        ok = kb * BK + tl.arange(0, BK)
        mk = ok < DH
        yk = tl.load(ysrc + ok[None, :], mask=mb[:, None] & mk[None, :], other=0.0, cache_modifier=".cg") * keep
        roff = (h * DH + ok[:, None]) * DH + oc[None, :]
        rm = mk[:, None] & mc[None, :]
        acc_i += mm(yk, tl.load(R_ptr + roff, mask=rm, other=0.0), DT, EMU)
        acc_f += mm(yk, tl.load(R_ptr + RG + roff, mask=rm, other=0.0), DT, EMU)
        acc_z += mm(yk, tl.load(R_ptr + 2 * RG + roff, mask=rm, other=0.0), DT, EMU)
        acc_o += mm(yk, tl.load(R_ptr + 3 * RG + roff, mask=rm, other=0.0), DT, EMU)
    return acc_i, acc_f, acc_z, acc_o


# ---------------------------------------------------------------------------------------------------
# blocked kernels (DH > 64): column blocks of BN, state carried through global memory
# ---------------------------------------------------------------------------------------------------
# [0] is the default (XLSTM_TRITON_AUTOTUNE=0): no spills in the sm_90 AOT report at DH 128..512 bf16
# (tools/bench/kernels.py --aot-check). The backward holds more per column block (state, gates and their
# gradients): BN 64 spills there, BN 32 with 8 warps does not.
_BLOCKED_CONFIGS = [triton.Config({"BN": bn}, num_warps=w, num_stages=1) for bn, w in ((64, 8), (32, 4), (64, 4), (32, 8))]
_BLOCKED_BW_CONFIGS = [_BLOCKED_CONFIGS[3]] + _BLOCKED_CONFIGS[:3]


@maybe_autotune(_BLOCKED_CONFIGS, key=["DH"])
@triton.jit
def _slstm_fw_blocked(wx_ptr, R_ptr, b_ptr, s0_ptr, rs_ptr, y_ptr, hs_ptr, gs_ptr, B, S, NH,
                      DH: tl.constexpr, BB: tl.constexpr, BN: tl.constexpr, HAS_RESET: tl.constexpr,
                      EMU: tl.constexpr):
    pb = tl.program_id(0)
    h = tl.program_id(1)
    ob = pb * BB + tl.arange(0, BB)
    mb = ob < B
    rowb = ob.to(tl.int64)
    DT = wx_ptr.dtype.element_ty
    BND = B * NH * DH
    gstride = NH * DH
    for t in range(S):
        keep = tl.zeros([BB, 1], dtype=tl.float32) + 1.0
        if HAS_RESET:
            r = tl.load(rs_ptr + rowb * S + t, mask=mb, other=0)
            keep = tl.where(r != 0, 0.0, 1.0)[:, None]
        row = rowb * S + t
        if t > 0:  # rows of y_{t-1}
            ysrc = hs_ptr + (row - 1)[:, None] * 4 * NH * DH + h * DH
        else:
            ysrc = s0_ptr + rowb[:, None] * NH * DH + h * DH
        for jb in range(0, tl.cdiv(DH, BN)):
            oc = jb * BN + tl.arange(0, BN)
            mc = oc < DH
            m2 = mb[:, None] & mc[None, :]
            gate = (row[:, None] * 4 * NH + h) * DH + oc[None, :]
            if t > 0:
                prev = gate - 4 * NH * DH
                cp = tl.load(hs_ptr + prev + gstride, mask=m2, other=0.0)
                np_ = tl.load(hs_ptr + prev + 2 * gstride, mask=m2, other=0.0)
                mp = tl.load(hs_ptr + prev + 3 * gstride, mask=m2, other=0.0)
            else:
                st = (rowb[:, None] * NH + h) * DH + oc[None, :]
                cp = tl.load(s0_ptr + BND + st, mask=m2, other=0.0)
                np_ = tl.load(s0_ptr + 2 * BND + st, mask=m2, other=0.0)
                mp = tl.load(s0_ptr + 3 * BND + st, mask=m2, other=0.0)
            cp = cp * keep
            np_ = np_ * keep
            mp = mp * keep
            acc_i, acc_f, acc_z, acc_o = _y_times_r(ysrc, keep, R_ptr, h, NH, mb, oc, mc, DH, BB, BN, BN, DT, EMU)
            ri = (tl.load(wx_ptr + gate, mask=m2, other=0.0).to(tl.float32) + acc_i
                  + tl.load(b_ptr + h * DH + oc, mask=mc, other=0.0).to(tl.float32)[None, :])
            rf = (tl.load(wx_ptr + gate + gstride, mask=m2, other=0.0).to(tl.float32) + acc_f
                  + tl.load(b_ptr + (NH + h) * DH + oc, mask=mc, other=0.0).to(tl.float32)[None, :])
            rz = (tl.load(wx_ptr + gate + 2 * gstride, mask=m2, other=0.0).to(tl.float32) + acc_z
                  + tl.load(b_ptr + (2 * NH + h) * DH + oc, mask=mc, other=0.0).to(tl.float32)[None, :])
            ro = (tl.load(wx_ptr + gate + 3 * gstride, mask=m2, other=0.0).to(tl.float32) + acc_o
                  + tl.load(b_ptr + (3 * NH + h) * DH + oc, mask=mc, other=0.0).to(tl.float32)[None, :])
            y, c, n, m_new = _cell_fw(ri, rf, rz, ro, cp, np_, mp)
            y = tl.where(m2, y, 0.0)
            tl.store(y_ptr + (row[:, None] * NH + h) * DH + oc[None, :], y.to(y_ptr.dtype.element_ty), mask=m2)
            _store4(hs_ptr, gate, gstride, y, c, n, m_new, m2)
            _store4(gs_ptr, gate, gstride, ri, rf, rz, ro, m2)
        tl.debug_barrier()  # this step's state (global memory) is read by every thread of the next step


@maybe_autotune(_BLOCKED_BW_CONFIGS, key=["DH"])
@triton.jit
def _slstm_bw_blocked(dy_ptr, R_ptr, hs_ptr, gs_ptr, s0_ptr, rs_ptr, scr_ptr, dg_ptr, ds0_ptr, B, S, NH,
                      DH: tl.constexpr, BB: tl.constexpr, BN: tl.constexpr, HAS_RESET: tl.constexpr,
                      EMU: tl.constexpr):
    # scr: (2 buffers, 3 = (dy, dc, dn), B, NH, DH); step t reads buffer t % 2 and writes the other one
    pb = tl.program_id(0)
    h = tl.program_id(1)
    ob = pb * BB + tl.arange(0, BB)
    mb = ob < B
    rowb = ob.to(tl.int64)
    DT = dy_ptr.dtype.element_ty
    BND = B * NH * DH
    gstride = NH * DH
    RG = NH * DH * DH
    for tt in range(S):
        t = S - 1 - tt
        rd = scr_ptr + (t % 2) * 3 * BND
        wr = scr_ptr + ((t + 1) % 2) * 3 * BND
        keep = tl.zeros([BB, 1], dtype=tl.float32) + 1.0
        if HAS_RESET:
            r = tl.load(rs_ptr + rowb * S + t, mask=mb, other=0)
            keep = tl.where(r != 0, 0.0, 1.0)[:, None]
        row = rowb * S + t
        # phase 1: gate gradients and the carried dc, dn, column block by column block
        for jb in range(0, tl.cdiv(DH, BN)):
            oc = jb * BN + tl.arange(0, BN)
            mc = oc < DH
            m2 = mb[:, None] & mc[None, :]
            gate = (row[:, None] * 4 * NH + h) * DH + oc[None, :]
            st = (rowb[:, None] * NH + h) * DH + oc[None, :]
            if t > 0:
                prev = gate - 4 * NH * DH
                cp = tl.load(hs_ptr + prev + gstride, mask=m2, other=0.0)
                np_ = tl.load(hs_ptr + prev + 2 * gstride, mask=m2, other=0.0)
                mp = tl.load(hs_ptr + prev + 3 * gstride, mask=m2, other=0.0)
            else:
                cp = tl.load(s0_ptr + BND + st, mask=m2, other=0.0)
                np_ = tl.load(s0_ptr + 2 * BND + st, mask=m2, other=0.0)
                mp = tl.load(s0_ptr + 3 * BND + st, mask=m2, other=0.0)
            cp = cp * keep
            np_ = np_ * keep
            mp = mp * keep
            ri, rf, rz, ro, ct, nt, mt = _saved_step(gs_ptr, hs_ptr, gate, gstride, m2)
            dy = (tl.load(dy_ptr + (row[:, None] * NH + h) * DH + oc[None, :], mask=m2, other=0.0).to(tl.float32)
                  + tl.load(rd + st, mask=m2, other=0.0))
            dc = tl.load(rd + BND + st, mask=m2, other=0.0)
            dn = tl.load(rd + 2 * BND + st, mask=m2, other=0.0)
            d_i, d_f, d_z, d_o, dlf, dc, dn = _cell_bw(dy, dc, dn, ri, rf, rz, ro, ct, nt, mt, cp, np_, mp, m2)
            _store4(dg_ptr, gate, gstride, d_i, d_f, d_z, d_o, m2)
            dc = dc * keep
            dn = dn * keep
            tl.store(wr + BND + st, dc, mask=m2)
            tl.store(wr + 2 * BND + st, dn, mask=m2)
            if t == 0:
                tl.store(ds0_ptr + BND + st, dc, mask=m2)
                tl.store(ds0_ptr + 2 * BND + st, dn, mask=m2)
                tl.store(ds0_ptr + 3 * BND + st, dlf * keep, mask=m2)
        tl.debug_barrier()  # phase 2 reads the gate gradients of every column block
        # phase 2: dy_prev = sum_g dgate_g R_g^T, tiled over output blocks
        for kb in range(0, tl.cdiv(DH, BN)):
            ok = kb * BN + tl.arange(0, BN)
            mk = ok < DH
            acc = tl.zeros([BB, BN], dtype=tl.float32)
            for jb in range(0, tl.cdiv(DH, BN)):
                oc = jb * BN + tl.arange(0, BN)
                mc = oc < DH
                m2 = mb[:, None] & mc[None, :]
                gate = (row[:, None] * 4 * NH + h) * DH + oc[None, :]
                rT = (h * DH + ok[None, :]) * DH + oc[:, None]  # R_g[ok, oc] as a (BN_j, BN_k) tile
                rm = mc[:, None] & mk[None, :]
                acc += mm(tl.load(dg_ptr + gate, mask=m2, other=0.0), tl.load(R_ptr + rT, mask=rm, other=0.0), DT, EMU)
                acc += mm(tl.load(dg_ptr + gate + gstride, mask=m2, other=0.0),
                          tl.load(R_ptr + RG + rT, mask=rm, other=0.0), DT, EMU)
                acc += mm(tl.load(dg_ptr + gate + 2 * gstride, mask=m2, other=0.0),
                          tl.load(R_ptr + 2 * RG + rT, mask=rm, other=0.0), DT, EMU)
                acc += mm(tl.load(dg_ptr + gate + 3 * gstride, mask=m2, other=0.0),
                          tl.load(R_ptr + 3 * RG + rT, mask=rm, other=0.0), DT, EMU)
            dyp = acc * keep
            stk = (rowb[:, None] * NH + h) * DH + ok[None, :]
            mk2 = mb[:, None] & mk[None, :]
            tl.store(wr + stk, dyp, mask=mk2)
            if t == 0:
                tl.store(ds0_ptr + stk, dyp, mask=mk2)
        tl.debug_barrier()  # the next step reads this step's scratch


# ---------------------------------------------------------------------------------------------------
# split kernels (DH > 64 and a grid the blocked kernel leaves mostly idle): a head's columns over programs
# ---------------------------------------------------------------------------------------------------
# The blocked kernels run one program per (batch tile, head): 4 programs for the 125M model at micro-batch
# 16 on a 132-SM GPU, each re-reading its head's whole R (4 x DH x DH) from L2 every step. Here program p of
# a group (batch tile, head) owns the columns [p*BN, (p+1)*BN) of the state: the step's matmul y_{t-1} @ R
# is split by output columns (the official CUDA kernel and FlashRNN split a head the same way), each program
# keeps only its R slice (4 x DH x BN) and, where that fits (``R_RESIDENT_BYTES``), keeps it on chip for the
# whole sequence. The programs of a group exchange the step's y (forward) or gate gradients
# (backward) through global memory and meet at a group barrier once per step: an atomic counter per group
# that each program increments (release) after its stores and polls (acquire) until all NSPLIT arrived.
# A spin barrier needs every program of the launch resident at once: the launcher keeps the grid within
# the SM count (one program per SM always fits). Under the interpreter (programs run one after another) each
# step (each backward phase) gets its own launch instead, the launch boundary being the barrier, so the same
# step code is what the CPU tests check; a group of one program needs no barrier and runs the one-launch code.
# The R slice is loaded once before the time loop up to this size (the compiler keeps the loop-invariant tile
# in shared memory: 227 KiB per block on sm_90, the rest is the step's operand staging); larger slices are
# re-read from L2 every step in row blocks of SPLIT_BK.
R_RESIDENT_BYTES = 128 * 1024
SPLIT_BK = 64  # row block of the y @ R product when the R slice is re-read every step
_SPLIT_WARPS = 8
# None: split_plan decides on a GPU (never under the interpreter); False: never split (the blocked kernels);
# (BN, resident): always split with that tile (the tests, under the interpreter and on a GPU). Users switch
# the split off with XLSTM_SLSTM_SPLIT=0.
SPLIT_OVERRIDE = None


@triton.jit
def _group_barrier(cnt_ptr, target):
    """Arrive at the group's counter and wait until it reaches ``target`` (= NSPLIT x steps done)."""
    tl.debug_barrier()  # every thread of this program has issued its stores of the step
    tl.atomic_add(cnt_ptr, 1, sem="release", scope="gpu")
    while tl.atomic_load(cnt_ptr, sem="acquire", scope="gpu") < target:
        pass
    tl.debug_barrier()


@triton.jit
def _split_program(B, DH: tl.constexpr, DHP: tl.constexpr, BB: tl.constexpr, BN: tl.constexpr):
    """Program (batch tile pb, head h, split p): its batch rows, its BN state columns oc, all DHP columns od."""
    pb = tl.program_id(0)
    h = tl.program_id(1)
    ob = pb * BB + tl.arange(0, BB)
    mb = ob < B
    oc = tl.program_id(2) * BN + tl.arange(0, BN)
    mc = oc < DH
    od = tl.arange(0, DHP)
    return pb, h, tl.num_programs(2), mb, ob.to(tl.int64), oc, mc, mb[:, None] & mc[None, :], od, od < DH


@triton.jit
def _load_r_rows_t(R_ptr, h, NH, od, md, oc, mc, DH: tl.constexpr):
    """R_g[oc, :]^T as [DHP, BN] tiles for the 4 gates, in the input dtype (the backward's dy R^T)."""
    off = (h * DH + oc[None, :]) * DH + od[:, None]
    msk = md[:, None] & mc[None, :]
    gs = NH * DH * DH
    return (tl.load(R_ptr + off, mask=msk, other=0.0), tl.load(R_ptr + gs + off, mask=msk, other=0.0),
            tl.load(R_ptr + 2 * gs + off, mask=msk, other=0.0), tl.load(R_ptr + 3 * gs + off, mask=msk, other=0.0))


@triton.jit
def _slstm_fw_split(wx_ptr, R_ptr, b_ptr, s0_ptr, rs_ptr, y_ptr, hs_ptr, gs_ptr, cnt_ptr, B, S, NH, T0, T1,
                    DH: tl.constexpr, DHP: tl.constexpr, BB: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
                    RESIDENT: tl.constexpr, SYNC: tl.constexpr, HAS_RESET: tl.constexpr, EMU: tl.constexpr):
    """Steps T0 .. T1-1 of the forward for the columns of program (batch tile, head, split)."""
    pb, h, nsplit, mb, rowb, oc, mc, m2, od, md = _split_program(B, DH, DHP, BB, BN)
    DT = wx_ptr.dtype.element_ty
    BND = B * NH * DH
    gstride = NH * DH
    RG = NH * DH * DH
    bi = tl.load(b_ptr + h * DH + oc, mask=mc, other=0.0).to(tl.float32)[None, :]
    bf = tl.load(b_ptr + (NH + h) * DH + oc, mask=mc, other=0.0).to(tl.float32)[None, :]
    bz = tl.load(b_ptr + (2 * NH + h) * DH + oc, mask=mc, other=0.0).to(tl.float32)[None, :]
    bo = tl.load(b_ptr + (3 * NH + h) * DH + oc, mask=mc, other=0.0).to(tl.float32)[None, :]
    if RESIDENT:
        # the 4 gates' slices side by side, [DHP, 4 * BN] (column g * BN + j is gate g, column p * BN + j): one
        # product per step with N = 4 * BN spreads over the warps (N = BN = 16 alone would replicate them)
        q4 = tl.arange(0, 4 * BN)
        j4 = tl.program_id(2) * BN + q4 % BN
        R4 = tl.load(R_ptr + (q4 // BN)[None, :] * RG + (h * DH + od[:, None]) * DH + j4[None, :],
                     mask=md[:, None] & (j4 < DH)[None, :], other=0.0)
    # this program's columns of (c, n, m) before step T0, then carried in registers
    if T0 > 0:
        src = hs_ptr + ((rowb * S + T0 - 1)[:, None] * 4 * NH + h) * DH + oc[None, :]
        sst = gstride
    else:
        src = s0_ptr + (rowb[:, None] * NH + h) * DH + oc[None, :]
        sst = BND
    c = tl.load(src + sst, mask=m2, other=0.0)
    n = tl.load(src + 2 * sst, mask=m2, other=0.0)
    m = tl.load(src + 3 * sst, mask=m2, other=0.0)
    for t in range(T0, T1):
        keep = tl.zeros([BB, 1], dtype=tl.float32) + 1.0
        if HAS_RESET:
            r = tl.load(rs_ptr + rowb * S + t, mask=mb, other=0)
            keep = tl.where(r != 0, 0.0, 1.0)[:, None]
        row = rowb * S + t
        # y_{t-1} over all DH columns: written by every program of the group (L2 loads, not L1)
        if t > 0:
            ysrc = hs_ptr + (row - 1)[:, None] * 4 * NH * DH + h * DH
        else:
            ysrc = s0_ptr + rowb[:, None] * NH * DH + h * DH
        if RESIDENT:
            # bf16: the product rounds y to bf16 anyway; narrowing at the load halves the operand's registers
            yk = tl.load(ysrc + od[None, :], mask=mb[:, None] & md[None, :], other=0.0, cache_modifier=".cg")
            yk = tl.where(keep != 0.0, yk, 0.0).to(tl.bfloat16 if DT == tl.bfloat16 else tl.float32)
            # [BB, 4 * BN] -> [BB, BN, 4] -> gate g = 2a + b at [..., a, b]: split b, then a
            acc4 = tl.reshape(tl.permute(tl.reshape(mm(yk, R4, DT, EMU), (BB, 4, BN)), (0, 2, 1)), (BB, BN, 2, 2))
            acc_iz, acc_fo = tl.split(acc4)
            acc_i, acc_z = tl.split(acc_iz)
            acc_f, acc_o = tl.split(acc_fo)
        else:
            acc_i, acc_f, acc_z, acc_o = _y_times_r(ysrc, keep, R_ptr, h, NH, mb, oc, mc, DH, BB, BN, BK, DT, EMU)
        gate = (row[:, None] * 4 * NH + h) * DH + oc[None, :]
        ri = tl.load(wx_ptr + gate, mask=m2, other=0.0).to(tl.float32) + acc_i + bi
        rf = tl.load(wx_ptr + gate + gstride, mask=m2, other=0.0).to(tl.float32) + acc_f + bf
        rz = tl.load(wx_ptr + gate + 2 * gstride, mask=m2, other=0.0).to(tl.float32) + acc_z + bz
        ro = tl.load(wx_ptr + gate + 3 * gstride, mask=m2, other=0.0).to(tl.float32) + acc_o + bo
        y, c, n, m = _cell_fw(ri, rf, rz, ro, c * keep, n * keep, m * keep)
        y = tl.where(m2, y, 0.0)
        tl.store(y_ptr + (row[:, None] * NH + h) * DH + oc[None, :], y.to(y_ptr.dtype.element_ty), mask=m2)
        _store4(hs_ptr, gate, gstride, y, c, n, m, m2)
        _store4(gs_ptr, gate, gstride, ri, rf, rz, ro, m2)
        if SYNC:
            _group_barrier(cnt_ptr + pb * NH + h, (t - T0 + 1) * nsplit)


@triton.jit
def _slstm_bw_split(dy_ptr, R_ptr, hs_ptr, gs_ptr, s0_ptr, rs_ptr, cur_ptr, dg_ptr, ds0_ptr, cnt_ptr, B, S, NH,
                    T0, T1, DH: tl.constexpr, DHP: tl.constexpr, BB: tl.constexpr, BN: tl.constexpr,
                    BK: tl.constexpr, RESIDENT: tl.constexpr, PHASES: tl.constexpr, SYNC: tl.constexpr,
                    HAS_RESET: tl.constexpr, EMU: tl.constexpr):
    """Reverse steps T1-1 .. T0 of the backward for the columns of program (batch tile, head, split).

    Per step, phase 1 (own columns): gate gradients from dy and the carried (dy_rec, dc, dn), stored for
    every program to read; phase 2 (after the group barrier): dy_rec = sum_g dgate_g R_g[oc, :]^T for the own
    columns. PHASES: 3 both (SYNC between them), 1 or 2 only that phase (a launch per phase). ``cur``
    (3, B, NH, DH) holds (dy_rec, dc, dn) between launches."""
    pb, h, nsplit, mb, rowb, oc, mc, m2, od, md = _split_program(B, DH, DHP, BB, BN)
    DT = dy_ptr.dtype.element_ty
    BND = B * NH * DH
    gstride = NH * DH
    RG = NH * DH * DH
    st = (rowb[:, None] * NH + h) * DH + oc[None, :]
    dy_rec = tl.load(cur_ptr + st, mask=m2, other=0.0)
    dc = tl.load(cur_ptr + BND + st, mask=m2, other=0.0)
    dn = tl.load(cur_ptr + 2 * BND + st, mask=m2, other=0.0)
    if RESIDENT and PHASES != 1:
        RTi, RTf, RTz, RTo = _load_r_rows_t(R_ptr, h, NH, od, md, oc, mc, DH)
    for tt in range(T1 - T0):
        t = T1 - 1 - tt
        keep = tl.zeros([BB, 1], dtype=tl.float32) + 1.0
        if HAS_RESET:
            r = tl.load(rs_ptr + rowb * S + t, mask=mb, other=0)
            keep = tl.where(r != 0, 0.0, 1.0)[:, None]
        row = rowb * S + t
        if PHASES != 2:
            gate = (row[:, None] * 4 * NH + h) * DH + oc[None, :]
            if t > 0:
                src = hs_ptr + gate - 4 * NH * DH
                sst = gstride
            else:
                src = s0_ptr + st
                sst = BND
            cp = tl.load(src + sst, mask=m2, other=0.0) * keep
            np_ = tl.load(src + 2 * sst, mask=m2, other=0.0) * keep
            mp = tl.load(src + 3 * sst, mask=m2, other=0.0) * keep
            ri, rf, rz, ro, ct, nt, mt = _saved_step(gs_ptr, hs_ptr, gate, gstride, m2)
            dy = tl.load(dy_ptr + (row[:, None] * NH + h) * DH + oc[None, :], mask=m2, other=0.0).to(tl.float32)
            d_i, d_f, d_z, d_o, dlf, dc, dn = _cell_bw(dy + dy_rec, dc, dn, ri, rf, rz, ro, ct, nt, mt, cp, np_, mp,
                                                        m2)
            _store4(dg_ptr, gate, gstride, d_i, d_f, d_z, d_o, m2)
            dc = dc * keep
            dn = dn * keep
            if t == 0:
                tl.store(ds0_ptr + BND + st, dc, mask=m2)
                tl.store(ds0_ptr + 2 * BND + st, dn, mask=m2)
                tl.store(ds0_ptr + 3 * BND + st, dlf * keep, mask=m2)
        if SYNC:
            _group_barrier(cnt_ptr + pb * NH + h, (tt + 1) * nsplit)
        if PHASES != 1:
            # every program's gate gradients of this step, all DH columns (L2 loads)
            gsrc = dg_ptr + row[:, None] * 4 * NH * DH + h * DH
            if RESIDENT:
                mfull = mb[:, None] & md[None, :]
                acc = mm(tl.load(gsrc + od[None, :], mask=mfull, other=0.0, cache_modifier=".cg"), RTi, DT, EMU)
                acc += mm(tl.load(gsrc + gstride + od[None, :], mask=mfull, other=0.0, cache_modifier=".cg"), RTf,
                          DT, EMU)
                acc += mm(tl.load(gsrc + 2 * gstride + od[None, :], mask=mfull, other=0.0, cache_modifier=".cg"),
                          RTz, DT, EMU)
                acc += mm(tl.load(gsrc + 3 * gstride + od[None, :], mask=mfull, other=0.0, cache_modifier=".cg"),
                          RTo, DT, EMU)
            else:
                acc = tl.zeros([BB, BN], dtype=tl.float32)
                for kb in range(0, tl.cdiv(DH, BK)):
                    ok = kb * BK + tl.arange(0, BK)
                    mk = ok < DH
                    mg = mb[:, None] & mk[None, :]
                    rT = (h * DH + oc[None, :]) * DH + ok[:, None]  # R_g[oc, ok]^T as a (BK, BN) tile
                    rm = mk[:, None] & mc[None, :]
                    acc += mm(tl.load(gsrc + ok[None, :], mask=mg, other=0.0, cache_modifier=".cg"),
                              tl.load(R_ptr + rT, mask=rm, other=0.0), DT, EMU)
                    acc += mm(tl.load(gsrc + gstride + ok[None, :], mask=mg, other=0.0, cache_modifier=".cg"),
                              tl.load(R_ptr + RG + rT, mask=rm, other=0.0), DT, EMU)
                    acc += mm(tl.load(gsrc + 2 * gstride + ok[None, :], mask=mg, other=0.0, cache_modifier=".cg"),
                              tl.load(R_ptr + 2 * RG + rT, mask=rm, other=0.0), DT, EMU)
                    acc += mm(tl.load(gsrc + 3 * gstride + ok[None, :], mask=mg, other=0.0, cache_modifier=".cg"),
                              tl.load(R_ptr + 3 * RG + rT, mask=rm, other=0.0), DT, EMU)
            dy_rec = acc * keep
            if t == 0:
                tl.store(ds0_ptr + st, dy_rec, mask=m2)
    tl.store(cur_ptr + st, dy_rec, mask=m2)
    tl.store(cur_ptr + BND + st, dc, mask=m2)
    tl.store(cur_ptr + 2 * BND + st, dn, mask=m2)


def split_plan(B: int, NH: int, DH: int, num_sms: int, elem_bytes: int):
    """(BN, resident) for the split kernels, or None where the blocked kernel already has enough programs.

    The smallest column block BN in (16, 32, 64) whose grid (batch tiles x heads x ceil(DH / BN)) fits on
    the SMs at once (the spin barrier needs every program resident), with at least two programs per group;
    the smallest BN makes each program's R slice (and the step's latency) smallest, and BN 16 is the tile that
    compiles without spills on sm_90 (``tools/bench/kernels.py --aot-check``; every shipped run's micro-batch is
    one batch tile, so its 4 heads x DH / 16 programs fit 132 SMs up to DH 512). ``resident``: the slice
    (4 x DHP x BN in the input dtype) fits ``R_RESIDENT_BYTES`` and stays on chip."""
    DHP = max(16, triton.next_power_of_2(DH))
    groups = triton.cdiv(B, BB) * NH
    for BN in (16, 32, 64):
        if BN < DHP and groups * triton.cdiv(DH, BN) <= num_sms:
            return BN, 4 * DHP * BN * elem_bytes <= R_RESIDENT_BYTES
    return None


def _split_choice(wx, DH):
    """The split plan for this call (``SPLIT_OVERRIDE``), by default only on a GPU for the column-blocked
    head sizes."""
    if SPLIT_OVERRIDE is not None:
        return SPLIT_OVERRIDE or None
    if INTERPRET or not _use_blocked(DH) or os.environ.get("XLSTM_SLSTM_SPLIT", "1") == "0":
        return None
    B, NH = wx.shape[0], wx.shape[3]
    sms = torch.cuda.get_device_properties(wx.device).multi_processor_count
    return split_plan(B, NH, DH, sms, wx.element_size())


def _split_launch(device, B, NH, DH, plan):
    """(grid, constexprs, one launch for all steps?). One launch needs every program of a group resident at once
    (the spin barrier): on a GPU the grid must fit the SMs (split_plan guarantees it; an override is checked).
    Under the interpreter programs run one after another: a launch per step (per backward phase) whose boundary
    is the barrier, except with one program per group (no barrier needed), which runs the one-launch code."""
    BN, resident = plan
    grid = (triton.cdiv(B, BB), NH, triton.cdiv(DH, BN))
    if not INTERPRET:
        sms = torch.cuda.get_device_properties(device).multi_processor_count
        if grid[0] * grid[1] * grid[2] > sms:
            raise ValueError(f"sLSTM split kernels: grid {grid} has more programs than the {sms} SMs; the per-step "
                             f"barrier needs them all resident (use split_plan, or XLSTM_SLSTM_SPLIT=0)")
    # num_stages=1 is required, not a tuning choice: software pipelining could issue the next step's loads of
    # other programs' data before the barrier
    kw = dict(DH=DH, DHP=max(16, triton.next_power_of_2(DH)), BB=BB, BN=BN, BK=SPLIT_BK, RESIDENT=resident,
              EMU=INTERPRET, num_warps=_SPLIT_WARPS, num_stages=1)
    if not INTERPRET and grid[2] > 1:
        # A cooperative launch: the driver schedules the whole grid at once or refuses the launch with an
        # error. A plain launch only fits the SMs when nothing else runs: kernels on other streams (NCCL's
        # all-reduce overlapping the backward) can hold SMs, leaving some programs of a group unscheduled while
        # the others spin at the barrier waiting for them.
        kw["launch_cooperative_grid"] = True
    return grid, kw, not INTERPRET or grid[2] == 1


@contextlib.contextmanager
def _refused_launch_hint(grid):
    """A cooperative launch the driver refuses (e.g. an MPS limit on the SMs this process may use) says so and
    names the switch, instead of a bare CUDA error."""
    try:
        yield
    except RuntimeError as e:
        if "cooperative" not in str(e).lower() and "too large" not in str(e).lower():
            raise
        raise RuntimeError(f"sLSTM split kernels: the GPU refused the cooperative launch of grid {grid} ({e}); "
                           f"XLSTM_SLSTM_SPLIT=0 runs the blocked kernel instead") from e


def _split_fw(wx, R, b, s0, rs, y, hs, gs, plan):
    B, S, _, NH, DH = wx.shape
    grid, kw, one_launch = _split_launch(wx.device, B, NH, DH, plan)
    cnt = torch.zeros(grid[0] * NH, dtype=torch.int32, device=wx.device)
    args = (wx, R, b, s0, rs if rs is not None else s0, y, hs, gs, cnt, B, S, NH)
    if one_launch:
        with _refused_launch_hint(grid):
            _slstm_fw_split[grid](*args, 0, S, SYNC=grid[2] > 1, HAS_RESET=rs is not None, **kw)
    else:
        for t in range(S):
            _slstm_fw_split[grid](*args, t, t + 1, SYNC=False, HAS_RESET=rs is not None, **kw)


def _split_bw(dy, R, hs, gs, s0, rs, dsN, dg, ds0, plan):
    B, S, _, NH, DH = hs.shape
    grid, kw, one_launch = _split_launch(dy.device, B, NH, DH, plan)
    cnt = torch.zeros(grid[0] * NH, dtype=torch.int32, device=dy.device)
    cur = dsN.contiguous().clone()
    args = (dy, R, hs, gs, s0, rs if rs is not None else s0, cur, dg, ds0, cnt, B, S, NH)
    if one_launch:
        with _refused_launch_hint(grid):
            _slstm_bw_split[grid](*args, 0, S, PHASES=3, SYNC=grid[2] > 1, HAS_RESET=rs is not None, **kw)
    else:
        for t in reversed(range(S)):
            for phase in (1, 2):
                _slstm_bw_split[grid](*args, t, t + 1, PHASES=phase, SYNC=False, HAS_RESET=rs is not None, **kw)


REG_MAX_DH = 64  # heads up to this size keep R and the state in registers


def _use_blocked(DH: int) -> bool:
    return max(16, triton.next_power_of_2(DH)) > REG_MAX_DH


def _reg_args(DH: int) -> dict:
    return dict(DH=DH, DHP=max(16, triton.next_power_of_2(DH)), BB=BB, EMU=INTERPRET)


def _blocked_args(DH: int) -> dict:
    args = dict(DH=DH, BB=BB, EMU=INTERPRET)
    if INTERPRET:
        args["BN"] = 32
    return args


class _SLSTMTriton(torch.autograd.Function):
    @staticmethod
    def forward(ctx, wx, R, b, y0, c0, n0, m0, reset):
        B, S, _, NH, DH = wx.shape
        dev = wx.device
        f32 = torch.float32
        wx = wx.contiguous()
        Rc = R.contiguous()
        bc = b.contiguous()
        s0 = torch.stack([y0, c0, n0, m0]).to(f32).contiguous()  # (4, B, NH, DH)
        rs = None if reset is None else reset.to(torch.int32).contiguous()
        y = torch.empty(B, S, NH, DH, dtype=wx.dtype, device=dev)
        hs = torch.empty(B, S, 4, NH, DH, dtype=f32, device=dev)  # (y, c, n, m) after every step
        gs = torch.empty(B, S, 4, NH, DH, dtype=f32, device=dev)  # raw gate pre-activations
        grid = (triton.cdiv(B, BB), NH)
        rs_arg = rs if rs is not None else s0
        plan = _split_choice(wx, DH)
        if plan is not None:
            _split_fw(wx, Rc, bc, s0, rs, y, hs, gs, plan)
        elif _use_blocked(DH):
            _slstm_fw_blocked[grid](wx, Rc, bc, s0, rs_arg, y, hs, gs, B, S, NH, HAS_RESET=rs is not None,
                                    **_blocked_args(DH))
        else:
            _slstm_fw[grid](wx, Rc, bc, s0, rs_arg, y, hs, gs, B, S, NH, HAS_RESET=rs is not None, **_reg_args(DH))
        ctx.save_for_backward(wx, Rc, bc, s0, rs, hs, gs)
        ctx.plan = plan
        ctx.dtypes = (wx.dtype, R.dtype, b.dtype, y0.dtype, c0.dtype, n0.dtype, m0.dtype)
        last = hs[:, S - 1]  # (B, 4, NH, DH)
        m_final = last[:, 3].clone()
        ctx.mark_non_differentiable(m_final)
        return y, last[:, 0].clone(), last[:, 1].clone(), last[:, 2].clone(), m_final

    @staticmethod
    def backward(ctx, dy, dyN, dcN, dnN, _dmN):
        wx, R, b, s0, rs, hs, gs = ctx.saved_tensors
        B, S, _, NH, DH = wx.shape
        dev = wx.device
        f32 = torch.float32
        dy = torch.zeros(B, S, NH, DH, dtype=wx.dtype, device=dev) if dy is None else dy.contiguous()
        z = torch.zeros(B, NH, DH, dtype=f32, device=dev)
        dsN = torch.stack([z if d is None else d.to(f32) for d in (dyN, dcN, dnN)])  # (3, B, NH, DH)
        dg = torch.empty(B, S, 4, NH, DH, dtype=f32, device=dev)
        ds0 = torch.empty(4, B, NH, DH, dtype=f32, device=dev)
        grid = (triton.cdiv(B, BB), NH)
        rs_arg = rs if rs is not None else s0
        plan = ctx.plan
        if plan is not None:
            _split_bw(dy, R, hs, gs, s0, rs, dsN, dg, ds0, plan)
        elif _use_blocked(DH):
            scr = torch.zeros(2, 3, B, NH, DH, dtype=f32, device=dev)
            scr[(S - 1) % 2] = dsN
            _slstm_bw_blocked[grid](dy, R, hs, gs, s0, rs_arg, scr, dg, ds0, B, S, NH, HAS_RESET=rs is not None,
                                    **_blocked_args(DH))
        else:
            _slstm_bw[grid](dy, R, hs, gs, s0, rs_arg, dsN.contiguous(), dg, ds0, B, S, NH,
                            HAS_RESET=rs is not None, **_reg_args(DH))
        # dR[g, h] = sum_{b, t} y_prev[b, t, h]^T dgate[b, t, g, h], with y_prev the (reset-masked) previous y
        y_prev = torch.cat([s0[0][:, None], hs[:, :-1, 0]], dim=1)  # (B, S, NH, DH)
        if rs is not None:
            y_prev = y_prev * (rs == 0).to(f32)[:, :, None, None]
        dR = torch.einsum("bshd,bsghe->ghde", y_prev, dg)
        db = dg.sum((0, 1))
        wx_dt, R_dt, b_dt, y_dt, c_dt, n_dt, m_dt = ctx.dtypes
        return (dg.to(wx_dt), dR.to(R_dt), db.to(b_dt), ds0[0].to(y_dt), ds0[1].to(c_dt), ds0[2].to(n_dt),
                ds0[3].to(m_dt), None)


def slstm_recurrent_triton(wx, R, b, initial_state=None, reset=None, return_final_state: bool = False):
    """Triton sLSTM: same signature and function as ``naive.slstm_recurrent``."""
    B, S, G, NH, DH = wx.shape
    if G != 4 or tuple(R.shape) != (4, NH, DH, DH) or tuple(b.shape) != (4, NH, DH):
        raise ValueError(f"sLSTM: wx {tuple(wx.shape)}, R {tuple(R.shape)}, b {tuple(b.shape)} do not agree "
                         f"(want wx (B,S,4,NH,DH), R (4,NH,DH,DH), b (4,NH,DH))")
    if reset is not None and tuple(reset.shape) != (B, S):
        raise ValueError(f"sLSTM: reset must be (B, S) = {(B, S)}, got {tuple(reset.shape)}")
    if wx.dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise TypeError(f"sLSTM triton: wx must be fp32, bf16 or fp16, got {wx.dtype}")
    if S < 1:
        raise ValueError("sLSTM triton: empty sequence")
    if initial_state is None:
        z = torch.zeros(B, NH, DH, dtype=torch.float32, device=wx.device)
        initial_state = (z, z, z, z)
    elif any(tuple(s.shape) != (B, NH, DH) for s in initial_state):
        raise ValueError(f"sLSTM: initial state tensors must be (B, NH, DH) = {(B, NH, DH)}")
    y, yN, cN, nN, mN = _SLSTMTriton.apply(wx, R, b, *initial_state, reset)
    return (y, (yN, cN, nN, mN)) if return_final_state else y


def flops_fwbw(B: int, S: int, NH: int, DH: int) -> float:
    """Recurrent matmul FLOPs of forward + backward (y R, dgates R^T, dR)."""
    return float(3 * 2 * B * S * NH * 4 * DH * DH)
