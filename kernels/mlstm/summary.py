"""The mLSTM state a sequence produces on its own: what context parallelism sends between shards.

From an *empty* start (no contribution at all, not even the zero state's m = 0 floor), the state after
S tokens is, in the stabilised form of ``naive.py`` (log f = logsigmoid(f~)):

    log_a_s = i_s + sum_{r=s+1}^{S-1} log f_r          (weight of token s in the final state)
    m       = max(floor, max_s log_a_s)
    C = sum_s exp(log_a_s - m) k_s v_s^T,   n = sum_s exp(log_a_s - m) k_s

over the tokens s of the last document (at or after the last reset). A reset at p replaces the state
by the zero state, whose m = 0 decays to floor = sum_{r>=p} log f_r; without a reset floor = -inf.
That is one weighted matmul (2*S*DHQK*DHV FLOPs per head) instead of running the whole cell, and
autograd differentiates it (one backward of the same size). The suffix sums are taken from the end
(reverse cumsum), so the weights that matter, those of recent tokens, come from short sums.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .naive import compute_dtype

# m of an empty summary (no token contributes): finite, so exp(EMPTY_M - m) is exactly 0 downstream.
EMPTY_M = -1e30


def mlstm_final_state(k, v, i, f, reset: torch.Tensor | None = None):
    """k (B, NH, S, DHQK), v (B, NH, S, DHV), i, f (B, NH, S) pre-activations, reset (B, S) bool ->
    (C (B, NH, DHQK, DHV), n (B, NH, DHQK), m (B, NH, 1)) of the sequence alone, from an empty start."""
    if torch.amp.is_autocast_available(k.device.type) and torch.is_autocast_enabled(k.device.type):
        with torch.autocast(k.device.type, enabled=False):  # the state is fp32 whatever autocast says
            return mlstm_final_state(k, v, i, f, reset)
    cdt = compute_dtype(k.dtype)
    log_f = F.logsigmoid(f.to(cdt))
    # sum_{r > s} log f_r, accumulated from the end
    after = log_f.flip(-1).cumsum(-1).flip(-1) - log_f
    log_a = i.to(cdt) + after
    floor = torch.full(log_a.shape[:-1] + (1,), EMPTY_M, dtype=cdt, device=k.device)
    if reset is not None:
        S = reset.shape[-1]
        pos = torch.arange(S, device=k.device)
        last = torch.where(reset, pos, -1).amax(-1)[:, None, None]  # (B, 1, 1): last reset, -1 if none
        log_a = torch.where(pos >= last, log_a, float("-inf"))  # earlier documents are cut off
        has_reset = last >= 0
        from_reset = after + log_f  # sum_{r >= s} log f_r: the zero state's m = 0 entering before token s
        floor_at = from_reset.gather(-1, last.clamp(min=0).expand(*log_a.shape[:-1], 1))
        floor = torch.where(has_reset, floor_at, floor)
    m = torch.maximum(floor, log_a.amax(-1, keepdim=True))  # (B, NH, 1)
    w = torch.exp(log_a - m)  # (B, NH, S), 0 for cut-off tokens
    kw = k.to(cdt) * w[..., None]
    return kw.transpose(-1, -2) @ v.to(cdt), kw.sum(-2), m


def mlstm_sequence_summary(k, v, i, f, reset: torch.Tensor | None = None):
    """(log F (B, NH, 1), C, n, m): what context parallelism exchanges per shard. log F is the sequence's
    total log forget (-inf if a document starts in it: nothing before it reaches past it); C, n, m are
    ``mlstm_final_state``. A chunkwise cell given ``initial_state=fn`` calls ``fn`` with this summary."""
    C, n, m = mlstm_final_state(k, v, i, f, reset)
    log_F = F.logsigmoid(f.to(compute_dtype(k.dtype))).sum(-1, keepdim=True)
    if reset is not None:
        log_F = torch.where(reset.any(-1)[:, None, None], float("-inf"), log_F)
    return log_F, C, n, m
