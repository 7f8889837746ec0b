"""Pure-PyTorch mLSTM references: the quadratic parallel form and the recurrent (step / sequence) form.

Conventions shared by every mLSTM implementation in this package (torch, triton, ...):

- q, k: (B, NH, S, DHQK); v: (B, NH, S, DHV); i, f: (B, NH, S) gate *pre-activations*
  (exponential input gate, sigmoid forget gate: log f = logsigmoid(f~)).
- The 1/sqrt(DHQK) scale is applied to q; states hold unscaled k (the mlstm_kernels / xLSTM-7B / HF
  convention), so states are interchangeable with ``transformers`` xLSTM caches.
- State = (C (B, NH, DHQK, DHV), n (B, NH, DHQK), m (B, NH, 1)), kept in fp32 (fp64 for fp64 inputs).
  A missing initial state is the zero state (C = 0, n = 0, m = 0).
- ``reset``: optional bool (B, S), True at the first token of each packed document. The state before
  that token is replaced by the zero state (0, 0, 0), so a packed sequence gives exactly what running
  its documents one by one from the zero state gives.
- h_t = C_t^T q̂_t / (max(|n_t^T q̂_t|, exp(-m_t)) + eps), with q̂ = q / sqrt(DHQK) and stabilised
  (C, n) (i.e. scaled by exp(-m_t)); eps is added in the stabilised scale as in the official code.

All forms compute the same function (the stabiliser m_t is identical across forms: it is the running
max of the recurrence, floored by the zero state's m = 0), so they agree to rounding error.
Gates, log-forget sums, m and n are computed in fp32 (or fp64) whatever the input dtype.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

MLSTMState = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """fp32 for half inputs, fp64 for fp64 inputs."""
    return torch.promote_types(dtype, torch.float32)


def zero_state(B: int, NH: int, DHQK: int, DHV: int, dtype=torch.float32, device=None) -> MLSTMState:
    return (
        torch.zeros(B, NH, DHQK, DHV, dtype=dtype, device=device),
        torch.zeros(B, NH, DHQK, dtype=dtype, device=device),
        torch.zeros(B, NH, 1, dtype=dtype, device=device),
    )


def check_inputs(q, k, v, i, f, initial_state, reset) -> None:
    B, NH, S, DHQK = q.shape
    DHV = v.shape[-1]
    if k.shape != q.shape or v.shape[:3] != (B, NH, S):
        raise ValueError(f"mLSTM: q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)} do not agree")
    if i.shape != (B, NH, S) or f.shape != (B, NH, S):
        raise ValueError(f"mLSTM: gates must be (B, NH, S) = {(B, NH, S)}, got i {tuple(i.shape)}, f {tuple(f.shape)}")
    if reset is not None and tuple(reset.shape) != (B, S):
        raise ValueError(f"mLSTM: reset must be (B, S) = {(B, S)}, got {tuple(reset.shape)}")
    check_state(initial_state, B, NH, DHQK, DHV)


def check_state(state, B, NH, DHQK, DHV) -> None:
    if state is not None:
        C, n, m = state
        want = ((B, NH, DHQK, DHV), (B, NH, DHQK), (B, NH, 1))
        got = (tuple(C.shape), tuple(n.shape), tuple(m.shape))
        if got != want:
            raise ValueError(f"mLSTM: initial state shapes (C, n, m) must be {want}, got {got}")


def _prepare(q, k, v, i, f, initial_state):
    B, NH, S, DHQK = q.shape
    DHV = v.shape[-1]
    cdt = compute_dtype(q.dtype)
    q, k, v = q.to(cdt), k.to(cdt), v.to(cdt)
    log_f = F.logsigmoid(f.to(cdt))
    i = i.to(cdt)
    if initial_state is None:
        initial_state = zero_state(B, NH, DHQK, DHV, cdt, q.device)
    else:
        initial_state = tuple(s.to(cdt) for s in initial_state)
    return q, k, v, i, log_f, initial_state


def mlstm_parallel(
    q, k, v, i, f, initial_state: MLSTMState | None = None, reset: torch.Tensor | None = None,
    return_final_state: bool = False, eps: float = 1e-6,
):
    """Quadratic (S x S) stabilised parallel form: the readable reference."""
    check_inputs(q, k, v, i, f, initial_state, reset)
    out_dtype = v.dtype
    B, NH, S, DHQK = q.shape
    q, k, v, i, log_f, (C0, n0, m0) = _prepare(q, k, v, i, f, initial_state)
    device = q.device

    # Document index of each token: 0 = the document that continues the initial state.
    seg = (torch.zeros(B, S, dtype=torch.long, device=device) if reset is None else reset.long().cumsum(-1))[:, None]
    causal = torch.ones(S, S, dtype=torch.bool, device=device).tril()
    valid = causal & (seg[..., :, None] == seg[..., None, :])  # (B, 1, S, S): s <= t in the same document

    # log_F[t, s] = sum_{r=s+1..t} log f_r, built by summing (never by differencing a long cumsum).
    strictly_below = torch.ones(S, S, dtype=torch.bool, device=device).tril(-1)
    log_F = torch.where(strictly_below, log_f[..., :, None], 0.0).cumsum(-2)
    log_D = torch.where(valid, log_F + i[..., None, :], float("-inf"))  # log weight of input s in h_t

    # Log weight of the state the document started from: its m plus the forgets since the document began.
    # For the first document that is the initial state; later ones start from the zero state (m = 0).
    first_doc = seg == 0  # (B, 1, S)
    log_f_since_start = torch.where(valid, log_f[..., None, :], 0.0).sum(-1)
    log_init = log_f_since_start + torch.where(first_doc, m0, 0.0)

    m = torch.maximum(log_init, log_D.amax(-1))  # (B, NH, S)
    D = torch.exp(log_D - m[..., None])
    scale = DHQK**-0.5
    q_hat = q * scale
    S_qk = (q_hat @ k.transpose(-1, -2)) * D
    w_init = torch.where(first_doc, torch.exp(log_init - m), 0.0)
    num = S_qk @ v + w_init[..., None] * (q_hat @ C0)
    den = S_qk.sum(-1) + w_init * (q_hat @ n0[..., None])[..., 0]
    h = num / (torch.maximum(den.abs(), torch.exp(-m)) + eps)[..., None]
    h = h.to(out_dtype)
    if not return_final_state:
        return h
    w_last = D[..., -1, :]  # weights of every input in the final state, already divided by exp(m_S)
    C = w_init[..., -1, None, None] * C0 + (k * w_last[..., None]).transpose(-1, -2) @ v
    n = w_init[..., -1, None] * n0 + (k * w_last[..., None]).sum(-2)
    return h, (C, n, m[..., -1:])


def mlstm_step(q, k, v, i, f, state: MLSTMState, eps: float = 1e-6):
    """One recurrent step. q, k: (B, NH, DHQK); v: (B, NH, DHV); i, f: (B, NH). Returns (h, new_state)."""
    C, n, m = state
    cdt = C.dtype
    out_dtype = v.dtype
    q, k, v = q.to(cdt), k.to(cdt), v.to(cdt)
    log_f = F.logsigmoid(f.to(cdt))[..., None]
    i = i.to(cdt)[..., None]
    m_new = torch.maximum(log_f + m, i)
    f_act = torch.exp(log_f + m - m_new)
    i_act = torch.exp(i - m_new)
    C = f_act[..., None] * C + i_act[..., None] * (k[..., :, None] * v[..., None, :])
    n = f_act * n + i_act * k
    q_hat = q * q.shape[-1] ** -0.5
    num = (q_hat[..., None, :] @ C)[..., 0, :]
    den = (q_hat * n).sum(-1, keepdim=True)
    h = num / (torch.maximum(den.abs(), torch.exp(-m_new)) + eps)
    return h.to(out_dtype), (C, n, m_new)


def mlstm_recurrent(
    q, k, v, i, f, initial_state: MLSTMState | None = None, reset: torch.Tensor | None = None,
    return_final_state: bool = False, eps: float = 1e-6,
):
    """The step form looped over the sequence (linear memory in S; used for generation)."""
    check_inputs(q, k, v, i, f, initial_state, reset)
    B, NH, S, DHQK = q.shape
    DHV = v.shape[-1]
    cdt = compute_dtype(q.dtype)
    state = zero_state(B, NH, DHQK, DHV, cdt, q.device) if initial_state is None else tuple(s.to(cdt) for s in initial_state)
    # unbind rather than x[:, :, t]: an indexing op's backward fills a full-size zero tensor per step.
    keeps = [None] * S if reset is None else (~reset).to(cdt)[:, :, None].unbind(1)  # (B, 1): 0 at a doc start
    hs = []
    for q_t, k_t, v_t, i_t, f_t, keep in zip(q.unbind(2), k.unbind(2), v.unbind(2), i.unbind(2), f.unbind(2), keeps):
        if keep is not None:
            state = (state[0] * keep[..., None, None], state[1] * keep[..., None], state[2] * keep[..., None])
        h, state = mlstm_step(q_t, k_t, v_t, i_t, f_t, state, eps)
        hs.append(h)
    h = torch.stack(hs, dim=2)
    return (h, state) if return_final_state else h
