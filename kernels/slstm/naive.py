"""Pure-PyTorch sLSTM recurrence (the reference the Triton kernel is checked against).

Conventions:
- ``wx``: (B, S, 4, NH, DH) gate pre-activations from the input, gate order (i, f, z, o).
- ``R``: (4, NH, DH, DH) block-diagonal recurrent weights: gate g of head h adds ``y_{t-1}[h] @ R[g, h]``.
- ``b``: (4, NH, DH) gate biases.
- state = (y, c, n, m), each (B, NH, DH), fp32 (fp64 for fp64 inputs); missing = zeros.
- ``reset``: optional bool (B, S), True at the first token of a document (state zeroed before it).

Step (exponential input gate, sigmoid forget gate, stabiliser m):
    m_t = i~ where n_{t-1} == 0 (a fresh state has no stabiliser yet) else max(i~, log σ(f~) + m_{t-1})
    i' = min(exp(i~ - m_t), 1);  f' = min(exp(log σ(f~) + m_{t-1} - m_t), 1)
    c_t = f' c + i' tanh(z~);  n_t = f' n + i';  y_t = σ(o~) c_t / n_t
m carries no gradient (y is invariant to it; the paper's App. A.2 and the official CUDA backward).
The official vanilla backend tests ``n == 0`` over the whole tensor, the CUDA one per element: they
agree whenever a state is either all-zero or all-positive, which is every state it can produce; we
test per element, which is what per-document resets need.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

SLSTMState = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


def slstm_zero_state(B: int, NH: int, DH: int, dtype=torch.float32, device=None) -> SLSTMState:
    return tuple(torch.zeros(B, NH, DH, dtype=dtype, device=device) for _ in range(4))


def slstm_step(wx_t, R, b, state: SLSTMState):
    """wx_t: (B, 4, NH, DH). Returns (y_t, new_state)."""
    y, c, n, m = state
    raw = wx_t.to(c.dtype) + torch.einsum("bhd,ghde->bghe", y, R.to(c.dtype)) + b.to(c.dtype)
    i, f, z, o = raw.unbind(1)
    log_f = F.logsigmoid(f)
    with torch.no_grad():
        m_new = torch.where(n == 0, i, torch.maximum(i, log_f + m))
    i_act = torch.exp(i - m_new).clamp(max=1.0)
    f_act = torch.exp(log_f + m - m_new).clamp(max=1.0)
    c = f_act * c + i_act * torch.tanh(z)
    n = f_act * n + i_act
    y = torch.sigmoid(o) * c / n
    return y, (y, c, n, m_new)


def starting_state(initial_state: SLSTMState | None, wx, B: int, NH: int, DH: int) -> SLSTMState:
    """The state a recurrence starts from, in the compute dtype (fp32, fp64 for fp64 inputs): zeros if None."""
    cdt = torch.promote_types(wx.dtype, torch.float32)
    if initial_state is None:
        return slstm_zero_state(B, NH, DH, cdt, wx.device)
    state = tuple(s.to(cdt) for s in initial_state)
    if any(tuple(s.shape) != (B, NH, DH) for s in state):
        raise ValueError(f"sLSTM: initial state tensors must be (B, NH, DH) = {(B, NH, DH)}")
    return state


def check_inputs(wx, R, b, reset=None) -> tuple[int, int, int, int]:
    """(B, S, NH, DH) of an sLSTM call, or a ValueError naming the shapes that disagree (every backend)."""
    B, S, G, NH, DH = wx.shape
    if G != 4 or tuple(R.shape) != (4, NH, DH, DH) or tuple(b.shape) != (4, NH, DH):
        raise ValueError(f"sLSTM: wx {tuple(wx.shape)}, R {tuple(R.shape)}, b {tuple(b.shape)} do not agree "
                         f"(want wx (B,S,4,NH,DH), R (4,NH,DH,DH), b (4,NH,DH))")
    if reset is not None and tuple(reset.shape) != (B, S):
        raise ValueError(f"sLSTM: reset must be (B, S) = {(B, S)}, got {tuple(reset.shape)}")
    return B, S, NH, DH


def slstm_recurrent(wx, R, b, initial_state: SLSTMState | None = None, reset: torch.Tensor | None = None,
                    return_final_state: bool = False):
    B, S, NH, DH = check_inputs(wx, R, b, reset)
    state = starting_state(initial_state, wx, B, NH, DH)
    cdt = state[0].dtype
    # Steps are taken with unbind, not wx[:, t]: the backward of an indexing op fills a full-size
    # zero tensor per step (O(S^2) work); unbind's backward stacks the S gradients once.
    keeps = [None] * S if reset is None else (~reset).to(cdt)[:, :, None, None].unbind(1)
    ys = []
    for wx_t, keep in zip(wx.unbind(1), keeps):
        if keep is not None:
            state = tuple(s * keep for s in state)
        y, state = slstm_step(wx_t, R, b, state)
        ys.append(y)
    y = torch.stack(ys, dim=1).to(wx.dtype)  # (B, S, NH, DH)
    return (y, state) if return_final_state else y
