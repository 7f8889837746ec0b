"""The sLSTM recurrence in PyTorch with a hand-written backward (the torch backend's training path).

Same function as ``naive.slstm_recurrent`` (conventions and the step's equations in ``naive.py``), which
autograd differentiates step by step: ~20 recorded ops and backward nodes per token, whose bookkeeping,
not arithmetic, is most of the time at paper sizes. Here the forward loop runs without autograd (one
batched matmul and the gate arithmetic per step, writing into preallocated buffers) and the backward
walks the steps in reverse by the chain rule below; the recurrent weight's gradient is one batched
matmul over all steps at the end. Layout inside: heads first, (NH, B, ...), so that each step's
recurrent product is one ``baddbmm`` against R arranged as (NH, DH, 4*DH).

Backward of one step (per element; s = sigmoid(o~), dy the output's plus the next step's gradient):
    do~ = dy c/n s(1-s);  dc = dc' + dy s/n;  dn = dn' - dy y/n
    dz~ = dc i' (1 - tanh(z~)^2);  di~ = (dc tanh(z~) + dn) i';  df~ = (dc c_prev + dn n_prev) f' sigmoid(-f~)
    (i' and f' pass gradient where they are not clamped at 1), carried: dc f', dn f', (d raw) R^T.
m takes no gradient beyond the initial state's (as in ``naive.py``: the stabiliser is computed under
no_grad). ``tests/test_slstm_cell.py`` checks this against the naive recurrence and by gradcheck.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from .naive import SLSTMState, check_inputs, starting_state


class _SLSTMRecurrence(torch.autograd.Function):
    @staticmethod
    def forward(ctx, wx, R, y0, c0, n0, m0, keep):
        """wx (S, NH, B, 4*DH) input pre-activations + bias (compute dtype); R (NH, DH, 4*DH); states
        (NH, B, DH); keep (S, 1, B, 1) or None: 0 where a document starts (state zeroed before the step).
        Returns y of every step (S, NH, B, DH) and the last c, n, m."""
        S, NH, B, G = wx.shape
        DH = G // 4
        raw = torch.empty_like(wx)  # gate pre-activations of every step (saved for backward)
        acts = wx.new_empty(S, 4, NH, B, DH)  # i', exp(log f + m - m_new), tanh(z~), sigmoid(o~) (saved)
        # the state before each step (before a reset's zeroing: ys[1:] are the outputs), then the last one
        ys, cs, ns = (wx.new_empty(S + 1, NH, B, DH) for _ in range(3))
        y, c, n, m = y0, c0, n0, m0
        for t in range(S):
            ys[t], cs[t], ns[t] = y, c, n
            if keep is not None:
                y, c, n, m = y * keep[t], c * keep[t], n * keep[t], m * keep[t]
            torch.baddbmm(wx[t], y, R, out=raw[t])
            i, f, z, o = raw[t].view(NH, B, 4, DH).unbind(2)
            i_act, f_exp, tz, so = acts[t].unbind(0)
            log_f = F.logsigmoid(f)
            m_new = torch.where(n == 0, i, torch.maximum(i, log_f + m))
            torch.exp(i - m_new, out=i_act).clamp_(max=1.0)
            torch.exp(log_f + m - m_new, out=f_exp)
            f_act = f_exp.clamp(max=1.0)
            torch.tanh(z, out=tz)
            torch.sigmoid(o, out=so)
            c = f_act * c + i_act * tz
            n = f_act * n + i_act
            y = so * c / n
            m = m_new
        ys[S], cs[S], ns[S] = y, c, n
        ctx.save_for_backward(R, raw, acts, ys, cs, ns, keep)
        ctx.mark_non_differentiable(m)
        # the last c, n: copies, so that a caller keeping the state (generation) does not keep the buffers
        return ys[1:], cs[S].clone(), ns[S].clone(), m

    @staticmethod
    @once_differentiable
    def backward(ctx, d_ys, d_c, d_n, _d_m):
        R, raw, acts, ys, cs, ns, keep = ctx.saved_tensors
        S, NH, B, G = raw.shape
        DH = G // 4
        R_t = R.transpose(-1, -2)
        d_raw = torch.empty_like(raw)
        zero = torch.zeros_like(ys[0])
        d_y_next = zero  # gradient reaching y_t through step t+1's recurrent product
        dc = zero if d_c is None else d_c
        dn = zero if d_n is None else d_n
        for t in range(S - 1, -1, -1):
            f = raw[t].view(NH, B, 4, DH)[:, :, 1]
            c_prev, n_prev, c, n = cs[t], ns[t], cs[t + 1], ns[t + 1]
            if keep is not None:  # the state the step saw
                c_prev, n_prev = c_prev * keep[t], n_prev * keep[t]
            i_act, f_exp, tz, so = acts[t].unbind(0)  # i' is never clamped: m_new >= i
            f_act = f_exp.clamp(max=1.0)  # clamped at 1 only where n == 0 (m_new = i~); no gradient passes it
            inv_n = 1.0 / n
            dy = d_y_next if d_ys is None else d_ys[t] + d_y_next
            d_i, d_f, d_z, d_o = d_raw[t].view(NH, B, 4, DH).unbind(2)
            dy_c_n = dy * c * inv_n
            torch.mul(dy_c_n, so * (1 - so), out=d_o)
            dc = dc + dy * so * inv_n
            dn = dn - dy_c_n * so * inv_n
            torch.mul(dc * i_act, 1 - tz * tz, out=d_z)
            torch.mul(dc * tz + dn, i_act, out=d_i)
            # d(log f + m - m_new), the exponent of f' (zero where f' is clamped at 1)
            d_f_exp = torch.where(f_exp <= 1.0, (dc * c_prev + dn * n_prev) * f_act, 0.0)
            torch.mul(d_f_exp, torch.sigmoid(-f), out=d_f)
            dc, dn = dc * f_act, dn * f_act
            d_y_next = torch.bmm(d_raw[t], R_t)
            if keep is not None:
                d_y_next, dc, dn, d_f_exp = (x * keep[t] for x in (d_y_next, dc, dn, d_f_exp))
        d_m0 = d_f_exp  # m enters f' = exp(log f + m - m_new); only the initial m is differentiable
        # R: the sum over steps of y_prev^T d_raw, one batched matmul over all steps
        y_prev = ys[:S] if keep is None else ys[:S] * keep
        y_prev = y_prev.permute(1, 3, 0, 2).reshape(NH, DH, S * B)
        d_R = torch.bmm(y_prev, d_raw.transpose(0, 1).reshape(NH, S * B, G))
        return d_raw, d_R, d_y_next, dc, dn, d_m0, None


def slstm_recurrent_manual_backward(wx, R, b, initial_state: SLSTMState | None = None,
                                    reset: torch.Tensor | None = None, return_final_state: bool = False):
    """``naive.slstm_recurrent`` with the hand-written backward: same arguments, same results."""
    B, S, NH, DH = check_inputs(wx, R, b, reset)
    cdt = torch.promote_types(wx.dtype, torch.float32)
    state = starting_state(initial_state, wx, B, NH, DH)
    if S == 0:
        y = wx.new_empty(B, 0, NH, DH)
        return (y, state) if return_final_state else y
    # heads first: (S, NH, B, 4 * DH) with the bias folded in, R as (NH, DH, 4 * DH), states (NH, B, DH)
    wx_h = (wx.to(cdt) + b.to(cdt)).permute(1, 3, 0, 2, 4).reshape(S, NH, B, 4 * DH)
    R_h = R.to(cdt).permute(1, 2, 0, 3).reshape(NH, DH, 4 * DH)
    y0, c0, n0, m0 = (s.transpose(0, 1) for s in state)
    keep = None if reset is None else (~reset).to(cdt).t()[:, None, :, None]  # (S, 1, B, 1)
    ys, c, n, m = _SLSTMRecurrence.apply(wx_h, R_h, y0, c0, n0, m0, keep)
    y = ys.permute(2, 0, 1, 3)  # (B, S, NH, DH)
    out = y.to(wx.dtype)
    if not return_final_state:
        return out
    # y[:, -1] is a copy too (not a view of the whole output), for the same reason
    return out, (y[:, -1].clone(), c.transpose(0, 1), n.transpose(0, 1), m.transpose(0, 1))
