"""Chunkwise mLSTM in pure PyTorch (the training path of the "torch" backend).

Same function as ``naive.mlstm_parallel`` (see its module docstring for conventions), computed in
chunks of L tokens:

1. per chunk, in parallel: the intra-chunk log-weight matrix and the chunk's contribution to the
   end-of-chunk state (a locally stabilised C, n and their log-scale);
2. a recurrence over the NC chunks on state-sized tensors only (the associative combine of
   xlstm_pretrain/REFERENCE.md §1: ``m' = max(logF + m_a, m_s)``, ``C' = e^{logF + m_a - m'} C_a + e^{m_s - m'} C_s``):
   the scalar stabilisers first (a log-depth max-plus scan), then (C | n) by ``state_scan.linear_state_scan``
   (one fused multiply-add per chunk in forward and backward);
3. per chunk, in parallel: outputs from the intra-chunk part plus the state before the chunk
   (``chunk_outputs.mlstm_chunk_outputs``, with a hand-written backward).

``initial_state`` may also be a function of the sequence's own summary (context parallelism: a shard's
initial state is known only once every shard has sent its summary). The summary, (log F, C, n, m) of the
sequence alone from an empty start (``summary.mlstm_final_state`` plus the total log forget), is taken in
closed form from the chunk summaries of step 1, so the shard needs no second pass over its tokens.

The chunk length L is ``chunking.chunk_plan(S, chunk_size).length`` (the rule every backend shares).
Sequence lengths that are not a multiple of L are padded at the end with inputs that leave the state
untouched (log f = 0, i = -inf), so outputs and the final state are exact. Document resets inside a
chunk cut the state there: tokens after a reset see neither the carried state nor earlier tokens, and
the zero state (m = 0) they restart from enters the stabiliser exactly as in the recurrent form.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..chunking import chunk_plan
from .chunk_outputs import mlstm_chunk_outputs
from .naive import MLSTMState, check_inputs, check_state, compute_dtype, zero_state
from .state_scan import linear_state_scan
from .summary import EMPTY_M


def mlstm_chunkwise(
    q, k, v, i, f, initial_state: MLSTMState | None = None, reset: torch.Tensor | None = None,
    return_final_state: bool = False, eps: float = 1e-6, chunk_size: int = 64,
):
    state_from_summary = initial_state if callable(initial_state) else None
    if state_from_summary is not None:
        initial_state = None
    check_inputs(q, k, v, i, f, initial_state, reset)
    B, NH, S, DHQK = q.shape
    DHV = v.shape[-1]
    out_dtype = v.dtype
    cdt = compute_dtype(q.dtype)
    device = q.device
    plan = chunk_plan(S, chunk_size)  # the shared rule (kernels/chunking.py)
    L, NC, pad = plan.length, plan.count, plan.pad

    q, k, v = q.to(cdt), k.to(cdt), v.to(cdt)
    log_f = F.logsigmoid(f.to(cdt))
    i = i.to(cdt)
    if reset is not None and reset.device.type == "cpu" and not bool(reset.any()):
        reset = None  # the reset-free path skips the segment bookkeeping (on CPU: no device sync to find out)
    if pad:
        q, k, v = (F.pad(x, (0, 0, 0, pad)) for x in (q, k, v))
        log_f = F.pad(log_f, (0, pad), value=0.0)  # padding forgets nothing ...
        i = F.pad(i, (0, pad), value=float("-inf"))  # ... and writes nothing
        if reset is not None:
            reset = F.pad(reset, (0, pad), value=False)

    q = q.view(B, NH, NC, L, DHQK)
    k = k.view(B, NH, NC, L, DHQK)
    v = v.view(B, NH, NC, L, DHV)
    log_f = log_f.view(B, NH, NC, L)
    i = i.view(B, NH, NC, L)
    # ---- 1. per chunk: log forget sums and document segments (the L x L log weights are built in the
    # output step, chunk_outputs.py) ---------------------------------------------------------------
    cs = log_f.cumsum(-1)  # log forget from the chunk start through the token: sum_{r=s+1..t} = cs_t - cs_s
    causal = torch.ones(L, L, dtype=torch.bool, device=device).tril()
    if reset is None:
        valid, log_b, continues, has_reset = causal, cs, None, None
    else:
        rs = reset.view(B, 1, NC, L)
        seg = rs.long().cumsum(-1)  # 0 = continues the state carried into the chunk
        valid = causal & (seg[..., :, None] == seg[..., None, :])  # (B, 1, NC, L, L)
        # log forget from the start of the token's segment (its reset token included) through the token
        pos = torch.arange(L, device=device)
        start = torch.where(rs, pos, 0).cummax(-1).values.expand(B, NH, NC, L)
        log_b = cs - torch.where(seg > 0, (cs - log_f).gather(-1, start), 0.0)
        continues = seg == 0
        has_reset = seg[..., -1] > 0  # (B, 1, NC)

    # ---- chunk summaries: what each chunk alone adds to its end-of-chunk state -------------------
    # log weight of input s in the end-of-chunk state: the last row of the intra-chunk log weights
    log_a = ((cs[..., -1:] - cs) + i).masked_fill(~valid[..., -1, :], float("-inf"))  # (B, NH, NC, L)
    log_a_top = log_a.amax(-1)  # -inf for a chunk that writes nothing
    log_a_max = torch.where(torch.isfinite(log_a_top), log_a_top, 0.0)
    w_a = torch.exp(log_a - log_a_max[..., None])
    kw = k * w_a[..., None]
    # C and n travel together as one (DHQK, DHV + 1) matrix through the recurrence (n is C's column for a
    # value of 1); n is summed, not multiplied by ones, so the matmul FLOPs stay the official count's
    Cn_chunk = torch.cat([kw.transpose(-1, -2) @ v, kw.sum(-2)[..., None]], -1)  # scaled by exp(-log_a_max)
    log_g = log_b[..., -1]  # log forget over the chunk's last segment
    if has_reset is None:
        log_carry, log_floor = log_g, None
    else:  # carried state is dropped by a reset, which injects the zero state (m = 0) decayed by exp(log_g)
        log_carry = torch.where(has_reset, float("-inf"), log_g)
        log_floor = torch.where(has_reset, log_g, float("-inf"))

    if state_from_summary is not None:
        initial_state = state_from_summary(_sequence_summary(Cn_chunk, log_a_top, log_carry, log_floor, DHV))
        check_state(initial_state, B, NH, DHQK, DHV)
    C0, n0, m0 = zero_state(B, NH, DHQK, DHV, cdt, device) if initial_state is None else (s.to(cdt) for s in initial_state)

    # ---- 2. inter-chunk recurrence: the stabilisers (a scalar per head) then the states -----------
    # m after chunk c is max(log_carry_c + m before it, log_a_max_c, floor_c): compositions of max-plus maps,
    # scanned in log2(NC) doubling steps rather than NC sequential ones (exact up to the order of additions)
    reach = log_a_max if log_floor is None else torch.maximum(log_a_max, log_floor)
    carry_sum, reach_max = _max_plus_scan(log_carry, reach)
    m_after = torch.maximum(m0 + carry_sum, reach_max)  # (B, NH, NC): stabiliser after each chunk
    m_b = torch.cat([m0, m_after[..., :-1]], -1)  # ... and before it
    m = m_after[..., -1]
    w_old = torch.exp(log_carry + m_b - m_after)  # share of the carried state each chunk keeps
    w_new = torch.exp(log_a_max - m_after)
    Cn0 = torch.cat([C0, n0[..., None]], -1)
    Cn_b, Cn = linear_state_scan(Cn0, w_old, w_new[..., None, None] * Cn_chunk)  # state before each chunk, last

    # ---- 3. outputs (all chunks at once) ---------------------------------------------------------
    h = mlstm_chunk_outputs(q * DHQK**-0.5, k, v, cs, i, log_b, m_b, Cn_b, valid, continues, eps)
    h = h.reshape(B, NH, NC * L, DHV)
    h = (h[:, :, :S] if pad else h).to(out_dtype)
    if not return_final_state:
        return h
    return h, (Cn[..., :DHV], Cn[..., DHV], m[..., None])


def _max_plus_scan(A, M):
    """Inclusive scan over the last dim of the maps x -> max(x + A_c, M_c): returns (A', M') with
    x -> max(x + A'_c, M'_c) the composition of maps 0..c. Hillis-Steele: at each doubling step s, map c
    absorbs map c - s (composing earlier (A1, M1) with later (A2, M2) gives (A1 + A2, max(M1 + A2, M2)))."""
    s, NC = 1, A.shape[-1]
    while s < NC:
        A, M = (torch.cat([A[..., :s], A[..., :-s] + A[..., s:]], -1),
                torch.cat([M[..., :s], torch.maximum(M[..., :-s] + A[..., s:], M[..., s:])], -1))
        s *= 2
    return A, M


def _sequence_summary(Cn_chunk, log_a_top, log_carry, log_floor, DHV):
    """(log F, C, n, m) of the whole sequence from an empty start, from the chunk summaries: chunk c's
    contribution reaches the end decayed by the carries of the chunks after it (-inf past a reset), and a
    reset's zero state (m = 0) enters m as the floor, as in the recurrence of step 2 started at m = -inf.
    Equal to ``summary.mlstm_final_state`` (tests/test_cp_summary.py); costs NC state-sized weighted sums."""
    suffix = log_carry.flip(-1).cumsum(-1).flip(-1)  # sum_{c' >= c}: log_carry <= 0 or -inf, never +inf
    after = torch.cat([suffix[..., 1:], torch.zeros_like(suffix[..., :1])], -1)  # sum_{c' > c}
    log_w = log_a_top + after  # log weight of each chunk's (max-scaled) summary at the end; -inf: none
    m = log_w.amax(-1, keepdim=True)
    if log_floor is not None:
        m = torch.maximum(m, (log_floor + after).amax(-1, keepdim=True))
    m = torch.clamp(m, min=EMPTY_M)  # nothing written at all: the empty summary's m
    Cn = torch.einsum("bhc,bhcpq->bhpq", torch.exp(log_w - m), Cn_chunk)
    log_F = log_carry.sum(-1, keepdim=True)  # total log forget, -inf if a document starts in the sequence
    return log_F, Cn[..., :DHV], Cn[..., DHV], m
