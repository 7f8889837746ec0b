"""Step 3 of the torch chunkwise mLSTM (``chunkwise.py``): every chunk's outputs from its own tokens and the
state carried into it, with a hand-written backward.

Per chunk (L tokens; t the query row, s the key column; cs = cumsum of log f within the chunk):

    log_D[t, s] = cs_t - cs_s + i_s          where valid[t, s] (causal, same document), else -inf
    log_init_t  = log_b_t + m_b              (log_b_t + 0 after a reset: the zero state's m)
    m_t   = max(log_init_t, max_s log_D[t, s])
    P     = (q_hat k^T) * exp(log_D - m)                     w_t = exp(log_init_t - m_t) (0 after a reset)
    num   = P v + w * (q_hat C_b)                           den = sum_s P[t, s] + w * (q_hat n_b)
    h     = num / (max(|den|, exp(-m)) + eps)

Autograd through these records ~20 (L x L)-sized elementwise ops per chunk (masking, broadcast
differences, the row max, the division) and as many in backward; the backward below needs five: dP,
dP * D, dP * P and its row and column sums. The row max routes its gradient to its argmax only (the
stabiliser enters h only through eps and the exp(-m) floor, so that gradient is tiny but kept exact).
``tests/test_chunk_outputs.py`` checks it against autograd through the formulas above and by gradcheck.
"""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable


def _log_weights(cs, i, valid):
    return (cs[..., :, None] - (cs - i)[..., None, :]).masked_fill(~valid, float("-inf"))


class _ChunkOutputs(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q_hat, k, v, cs, i, log_b, m_b, Cn_b, valid, continues, eps):
        DHV = v.shape[-1]
        log_D = _log_weights(cs, i, valid)
        row_max, arg = log_D.max(-1)
        m_carry = m_b[..., None] if continues is None else torch.where(continues, m_b[..., None], 0.0)
        log_init = log_b + m_carry
        m = torch.maximum(log_init, row_max)
        init_wins = log_init >= row_max
        D = torch.exp(log_D.sub_(m[..., None]))  # log_D is not needed again: reuse its storage
        P = (q_hat @ k.transpose(-1, -2)).mul_(D)
        w = torch.exp(log_init - m)
        if continues is not None:
            w = torch.where(continues, w, 0.0)  # a token after a reset does not see the carried state
        Y = q_hat @ Cn_b  # (..., L, DHV + 1): the carried state's numerator | denominator
        Y_num, Y_den = Y[..., :DHV], Y[..., DHV]
        num = torch.addcmul(P @ v, w[..., None], Y_num)
        den = P.sum(-1) + w * Y_den
        floor = torch.exp(-m)
        den_wins = den.abs() > floor
        denom = torch.where(den_wins, den.abs(), floor) + eps
        h = num / denom[..., None]
        ctx.save_for_backward(q_hat, k, v, Cn_b, D, P, Y, w, h, denom, den, m, init_wins, arg, den_wins, continues)
        ctx.eps = eps
        return h

    @staticmethod
    @once_differentiable
    def backward(ctx, dh):
        q_hat, k, v, Cn_b, D, P, Y, w, h, denom, den, m, init_wins, arg, den_wins, continues = ctx.saved_tensors
        DHV = v.shape[-1]
        # h = num / denom, denom = max(|den|, exp(-m)) + eps
        dnum = dh / denom[..., None]
        dh_h = (dh * h).sum(-1)  # = -d(loss)/d(denom) * denom
        dden = torch.where(den_wins, -dh_h / denom * torch.sign(den), 0.0)
        # d(exp(-m))/dm = -exp(-m), and exp(-m) / denom = 1 / (1 + eps e^m), finite for every m
        dm = torch.where(den_wins, 0.0, dh_h * torch.sigmoid(-(m + torch.log(torch.tensor(ctx.eps, dtype=m.dtype)))))
        # num = P v + w Y_num, den = sum(P) + w Y_den
        dP = (dnum @ v.transpose(-1, -2)).add_(dden[..., None])
        dv = P.transpose(-1, -2) @ dnum
        dw = (dnum * Y[..., :DHV]).sum(-1) + dden * Y[..., DHV]
        dY = dnum.new_empty(Y.shape)  # (d numerator | d denominator) of the carried state's term
        torch.mul(w[..., None], dnum, out=dY[..., :DHV])
        torch.mul(w, dden, out=dY[..., DHV])
        dCn_b = q_hat.transpose(-1, -2) @ dY
        dq = dY @ Cn_b.transpose(-1, -2)
        # P = QK * D: dQK = dP * D; D = exp(log_D - m): d(log_D - m) = dP * P
        dQK = dP * D
        dq.add_(dQK @ k)
        dk = dQK.transpose(-1, -2) @ q_hat
        dlogD = dP.mul_(P)  # dP is not needed again
        dlog_init = dw * w  # 0 where w is (after a reset)
        dm = dm - dlogD.sum(-1) - dlog_init
        # m = max(log_init, row max of log_D): its gradient goes to the winner (the row max: its argmax)
        dlog_init = dlog_init + torch.where(init_wins, dm, 0.0)
        drow = torch.where(init_wins, 0.0, dm)
        # log_D[t, s] = cs_t - cs_s + i_s
        col = dlogD.sum(-2).scatter_add_(-1, arg, drow)
        dcs = dlogD.sum(-1) + drow - col
        di = col
        dm_carry = dlog_init if continues is None else torch.where(continues, dlog_init, 0.0)
        dm_b = dm_carry.sum(-1)
        return dq, dk, dv, dcs, di, dlog_init, dm_b, dCn_b, None, None, None


def mlstm_chunk_outputs(q_hat, k, v, cs, i, log_b, m_b, Cn_b, valid, continues, eps):
    """q_hat (scaled), k (B, NH, NC, L, DHQK), v (B, NH, NC, L, DHV); cs, i, log_b (B, NH, NC, L); m_b (B, NH, NC);
    Cn_b (B, NH, NC, DHQK, DHV + 1) the (C | n) state before each chunk; valid (bool, broadcastable to
    (B, NH, NC, L, L)); continues (bool, broadcastable to (B, NH, NC, L), or None: no resets) -> h (B, NH, NC, L, DHV)."""
    return _ChunkOutputs.apply(q_hat, k, v, cs, i, log_b, m_b, Cn_b, valid, continues, eps)


def mlstm_chunk_outputs_reference(q_hat, k, v, cs, i, log_b, m_b, Cn_b, valid, continues, eps):
    """The same formulas through autograd (what the hand-written backward is tested against)."""
    DHV = v.shape[-1]
    log_D = torch.where(valid, (cs[..., :, None] - cs[..., None, :]) + i[..., None, :], float("-inf"))
    log_init = log_b + (m_b[..., None] if continues is None else torch.where(continues, m_b[..., None], 0.0))
    m = torch.maximum(log_init, log_D.amax(-1))
    P = (q_hat @ k.transpose(-1, -2)) * torch.exp(log_D - m[..., None])
    w = torch.exp(log_init - m)
    if continues is not None:
        w = torch.where(continues, w, 0.0)
    Y = w[..., None] * (q_hat @ Cn_b)
    num = P @ v + Y[..., :DHV]
    den = P.sum(-1) + Y[..., DHV]
    return num / (torch.maximum(den.abs(), torch.exp(-m)) + eps)[..., None]
