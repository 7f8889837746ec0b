"""Chunkwise mLSTM in pure PyTorch (the training path of the "torch" backend).

Same function as ``naive.mlstm_parallel`` (see its module docstring for conventions), computed in
chunks of L tokens:

1. per chunk, in parallel: the intra-chunk log-weight matrix and the chunk's contribution to the
   end-of-chunk state (a locally stabilised C, n and their log-scale);
2. a sequential recurrence over the NC chunks on state-sized tensors only (the associative combine of
   xlstm_pretrain/REFERENCE.md §1: ``m' = max(logF + m_a, m_s)``, ``C' = e^{logF + m_a - m'} C_a + e^{m_s - m'} C_s``);
3. per chunk, in parallel: outputs from the intra-chunk part plus the state before the chunk.

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
from .naive import MLSTMState, check_inputs, compute_dtype, zero_state


def mlstm_chunkwise(
    q, k, v, i, f, initial_state: MLSTMState | None = None, reset: torch.Tensor | None = None,
    return_final_state: bool = False, eps: float = 1e-6, chunk_size: int = 64,
):
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
    if reset is None:
        reset = torch.zeros(B, S, dtype=torch.bool, device=device)
    if pad:
        q, k, v = (F.pad(x, (0, 0, 0, pad)) for x in (q, k, v))
        log_f = F.pad(log_f, (0, pad), value=0.0)  # padding forgets nothing ...
        i = F.pad(i, (0, pad), value=float("-inf"))  # ... and writes nothing
        reset = F.pad(reset, (0, pad), value=False)
    C0, n0, m0 = zero_state(B, NH, DHQK, DHV, cdt, device) if initial_state is None else (s.to(cdt) for s in initial_state)

    q = q.view(B, NH, NC, L, DHQK)
    k = k.view(B, NH, NC, L, DHQK)
    v = v.view(B, NH, NC, L, DHV)
    log_f = log_f.view(B, NH, NC, L)
    i = i.view(B, NH, NC, L)
    seg = reset.view(B, 1, NC, L).long().cumsum(-1)  # 0 = continues the state carried into the chunk

    # ---- 1. intra-chunk log weights (all chunks at once) -----------------------------------------
    causal = torch.ones(L, L, dtype=torch.bool, device=device).tril()
    strictly_below = torch.ones(L, L, dtype=torch.bool, device=device).tril(-1)
    valid = causal & (seg[..., :, None] == seg[..., None, :])  # (B, 1, NC, L, L)
    log_F = torch.where(strictly_below, log_f[..., :, None], 0.0).cumsum(-2)  # sum_{r=s+1..t} log f_r
    log_D = torch.where(valid, log_F + i[..., None, :], float("-inf"))  # (B, NH, NC, L, L)
    # sum of log f from the start of the token's segment (chunk start or its reset) up to the token
    log_b = torch.where(valid, log_f[..., None, :], 0.0).sum(-1)  # (B, NH, NC, L)

    # ---- chunk summaries: what each chunk alone adds to its end-of-chunk state -------------------
    log_a = log_D[..., -1, :]  # (B, NH, NC, L): log weight of input s in the end-of-chunk state
    log_a_max = log_a.amax(-1)
    log_a_max = torch.where(torch.isfinite(log_a_max), log_a_max, 0.0)
    w_a = torch.exp(log_a - log_a_max[..., None])
    kw = k * w_a[..., None]
    C_chunk = kw.transpose(-1, -2) @ v  # (B, NH, NC, DHQK, DHV), scaled by exp(-log_a_max)
    n_chunk = kw.sum(-2)  # (B, NH, NC, DHQK)
    has_reset = seg[..., -1] > 0  # (B, 1, NC)
    log_g = log_b[..., -1]  # log forget over the chunk's last segment
    # carried state decays by exp(log_g), or is dropped by a reset; a reset injects the zero state (m = 0)
    log_carry = torch.where(has_reset, float("-inf"), log_g)
    log_floor = torch.where(has_reset, log_g, float("-inf"))

    # ---- 2. inter-chunk recurrence (sequential over chunks, state-sized work only) ---------------
    # Chunks are taken with unbind, not C_chunk[:, :, c]: the backward of an indexing op fills a
    # full-size zero tensor per chunk (O(NC^2) work); unbind's backward stacks the NC gradients once.
    C, n, m = C0, n0, m0[..., 0]
    C_before, n_before, m_before = [], [], []
    per_chunk = zip(C_chunk.unbind(2), n_chunk.unbind(2), log_carry.unbind(-1), log_floor.unbind(-1),
                    log_a_max.unbind(-1))
    for C_c, n_c, carry_c, floor_c, a_max_c in per_chunk:
        C_before.append(C)
        n_before.append(n)
        m_before.append(m)
        decay = carry_c + m
        m_new = torch.maximum(torch.maximum(decay, floor_c.expand_as(m)), a_max_c)
        w_old = torch.exp(decay - m_new)
        w_new = torch.exp(a_max_c - m_new)
        C = w_old[..., None, None] * C + w_new[..., None, None] * C_c
        n = w_old[..., None] * n + w_new[..., None] * n_c
        m = m_new
    C_b = torch.stack(C_before, 2)  # (B, NH, NC, DHQK, DHV): state before each chunk
    n_b = torch.stack(n_before, 2)
    m_b = torch.stack(m_before, 2)  # (B, NH, NC)

    # ---- 3. outputs (all chunks at once) ---------------------------------------------------------
    continues = seg == 0  # token still sees the carried state
    log_init = log_b + torch.where(continues, m_b[..., None], 0.0)
    m_row = torch.maximum(log_init, log_D.amax(-1))  # (B, NH, NC, L)
    D = torch.exp(log_D - m_row[..., None])
    q_hat = q * DHQK**-0.5
    S_qk = (q_hat @ k.transpose(-1, -2)) * D
    w_init = torch.where(continues, torch.exp(log_init - m_row), 0.0)
    num = S_qk @ v + w_init[..., None] * (q_hat @ C_b)
    den = S_qk.sum(-1) + w_init * (q_hat @ n_b[..., None])[..., 0]
    h = num / (torch.maximum(den.abs(), torch.exp(-m_row)) + eps)[..., None]
    h = h.reshape(B, NH, NC * L, DHV)[:, :, :S].to(out_dtype)
    if not return_final_state:
        return h
    return h, (C, n, m[..., None])
