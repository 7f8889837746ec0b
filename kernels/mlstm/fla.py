"""mLSTM on flash-linear-attention's simple-GLA chunk kernel (``backend="fla"``).

Computes the same function as ``naive.mlstm_parallel`` / ``chunkwise.mlstm_chunkwise`` (conventions in
``naive.py``: q scaled by DHQK^-0.5, unscaled k in the states, fp32 state (C, n, m), resets restart from
the zero state (0, 0, 0), h_t = C_t^T q̂_t / (max(|n_t^T q̂_t|, exp(-m_t)) + eps)), with the matmul work
done by ``fla.ops.simple_gla.chunk_simple_gla`` (https://github.com/fla-org/flash-linear-attention,
MIT; an optional dependency, ``pip install 'xlstm-pretrain[fla]'``). The gate and stabiliser bookkeeping
is ours, in PyTorch, O(B*NH*S), and autograd differentiates it.

Mapping onto scalar-gated linear attention. Simple GLA computes, per head, with a scalar log decay g_t,
  S_t = exp(g_t) S_{t-1} + k_t v_t^T,   o_t = scale * S_t^T q_t.
The mLSTM recurrence *in its stabilised form* is exactly that (per head, m_t the stabiliser):
  m_t = max(logsigmoid(f~_t) + m_{t-1}, i~_t)                      (the recurrent form's running max)
  C~_t = exp(lf_t + m_{t-1} - m_t) C~_{t-1} + exp(i~_t - m_t) k_t v_t^T,   n~_t likewise with k_t,
so we feed   g'_t = lf_t + m_{t-1} - m_t (<= 0),   k'_t = k_t exp(i~_t - m_t) (factor <= 1),
and run the kernel twice: with v (initial state C~0) for num~_t, and with a block of ones as values
(initial state n~0 in every column) for den~_t = n~_t^T q̂_t, the normaliser. Then
  h_t = num~_t / (max(|den~_t|, exp(-m_t)) + eps)
is the reference formula term for term, eps included (same eps convention as the torch reference for
both model families), and the final kernel state is the reference's final (C, n) with m = m_S.

Why the stabilised form rather than the unstabilised C_t = f_t C_{t-1} + exp(i~_t) v_t k_t^T with
max(|n^T q|, 1): every exponent fed to the kernel is <= 0, so nothing overflows whatever the gates (the
paper family's uncapped input gate included; no gate limit, no fallback needed), the initial / final
states need no exp(+-m) rescaling (which overflows for m > ~88), and eps enters exactly as in the
reference. Underflow happens exactly where the reference underflows (exp(i~ - m) < 1e-38).
Cost of the stabiliser: m_t = b_t + max(m_start, max_{s<=t} (i~_s - b_s)) with b the segment-local
cumsum of lf, evaluated with cumsum / cummax in fp64 (no sequential loop; fp64 keeps the cumsum
differences exact to ~1e-12 at any length). It matters only through eps: any m would give the same
function with eps = 0, and the telescoping sums of g' cancel errors in m.

Document resets (varlen). The B rows are flattened into one sequence of B*S tokens cut at every row
start and every reset (``cu_seqlens``, FLA's varlen layout, batch 1, from ``boundaries.document_segments``);
the trainer builds that layout once per micro-batch from the loader's host copy of the mask
(``xlstm_kernels.register_document_boundaries``), so no layer synchronises with the device. The initial
state of a segment
that starts a row is that row's initial state (the zero state if the row also resets at t = 0), of a
segment starting at a reset the zero state (C, n, m) = 0; the final state of a row is the final state
of its last segment. Without ``reset`` the batched (non-varlen) path is used. For a mask nobody
registered the reset positions are copied from the device (one sync per call).

Precision notes. FLA runs q, k', v' in the input dtype with fp32 accumulation; the outputs num~, den~
come back in the input dtype (bf16 for bf16 inputs) before the division, and FLA stores the per-chunk
states of the forward in the input dtype, so bf16 errors are ~2-3x those of our Triton kernel (same
order as bf16 rounding). On a GPU, fp32 inputs go through FLA's tl.dot with Triton's default TF32
precision (~1e-3 relative); under the Triton interpreter the products are exact fp32. FLA sums g'
within a chunk and exponentiates differences of those sums (like our Triton kernel, unlike the torch
reference, which sums the log-forget matrix directly). fp64 inputs use the torch chunkwise reference.
Single-token calls (S == 1, generation) use the torch recurrent step, as ``backend="torch"`` does.
The configured ``chunk_size`` must be one of ``FLA_CHUNK_SIZES`` (else a ValueError); FLA runs with the
chunk length of the shared rule (``chunking.chunk_plan`` with the tl.dot floor of 16, as our Triton
kernel: the configured size, shorter only for sequences shorter than it; it changes rounding only;
FLA masks the ragged last chunk). Gradients flow into
q, k, v, i, f and the initial state (C, n, m) (FLA returns dh0; m0 enters through g' and m).

Triton interpreter (TRITON_INTERPRET=1, CPU tensors). FLA 0.6.0 runs there after two small shims that
``fla_runtime.import_fla`` applies (only there; on a GPU nothing is patched; see that module). bf16 is wrong under the interpreter (its tl.dot mis-handles bf16; FLA has no emulation path, unlike our
kernels): the self-check of ``backend="fla"`` catches it and falls back to torch. numpy "overflow
encountered in exp2" warnings there come from FLA's masked (upper-triangle) entries, which ``tl.where``
discards; on a GPU the same entries are computed and discarded the same way.
"""

from __future__ import annotations

import threading

import torch
import torch.nn.functional as F

from ..boundaries import document_segments
from ..chunking import TL_DOT_MIN_CHUNK, chunk_plan
from ..fla_runtime import import_fla
from .naive import MLSTMState, check_inputs, compute_dtype, mlstm_recurrent

_lock = threading.Lock()
_chunk_simple_gla = None


def _load():
    """``chunk_simple_gla``, imported once through ``fla_runtime.import_fla`` (install hint, interpreter shims)."""
    global _chunk_simple_gla
    with _lock:
        if _chunk_simple_gla is None:
            _chunk_simple_gla = import_fla("fla.ops.simple_gla", needed_by="the 'fla' mLSTM backend").chunk_simple_gla
    return _chunk_simple_gla


def stabiliser(log_f: torch.Tensor, i: torch.Tensor, starts: torch.Tensor, m_start: torch.Tensor) -> torch.Tensor:
    """m_t of the recurrent form, (B, NH, S), in the dtype of the inputs (call it with fp64).

    starts: (B, S) bool, True where a segment starts (t = 0 and every reset); m_start: (B, NH, S), the m of
    the state each segment starts from (read at segment starts only). Within a segment starting at s0,
    m_t = bs_t + max(m_start, max_{s0<=s<=t} (i_s - bs_s)) with bs the segment-local cumsum of log_f.
    """
    B, NH, S = i.shape
    pos = torch.arange(S, device=i.device)
    start_idx = torch.where(starts, pos, 0).cummax(-1).values  # (B, S): where the token's segment starts
    b = log_f.cumsum(-1)
    base = (b - log_f).gather(-1, start_idx[:, None, :].expand(B, NH, S))  # cumsum before the segment
    bs = b - base
    z = i - bs
    z = torch.where(starts[:, None, :], torch.maximum(z, m_start), z)
    # segmented running max: lift each segment above all earlier ones by seg * big (big > spread of z;
    # fp64 keeps m exact to ~1e-16 * segments * big, e.g. ~1e-9 for 100 segments with |log f| sums of 1e5)
    seg = starts.long().cumsum(-1)[:, None, :].to(z.dtype)  # (B, 1, S), 1-based
    with torch.no_grad():
        zf = torch.where(torch.isfinite(z), z, 0.0)
        big = (zf.amax(-1, keepdim=True) - zf.amin(-1, keepdim=True)) + 1.0
    lift = seg * big
    return bs + ((z + lift).cummax(-1).values - lift)


# Width of the ones block whose values give the normaliser (tl.dot needs >= 16 along every dim).
NORMALISER_V = 16
FLA_CHUNK_SIZES = (16, 32, 64, 128)


def fla_chunk_size(seq_len: int, chunk_size: int) -> int:
    """The chunk length FLA's kernels run with: the shared rule (``chunking.chunk_plan`` with the tl.dot
    floor, as our Triton kernel) for a configured ``chunk_size`` FLA supports, else a clear error (never a
    silent clamp of the configured size)."""
    if chunk_size not in FLA_CHUNK_SIZES:
        raise ValueError(f"backend 'fla': chunk_size={chunk_size} is not supported by flash-linear-attention's "
                         f"chunk kernels; use one of {FLA_CHUNK_SIZES} (model.chunk_size)")
    return chunk_plan(seq_len, chunk_size, TL_DOT_MIN_CHUNK).length


def mlstm_fla(
    q, k, v, i, f, *, initial_state: MLSTMState | None = None, reset: torch.Tensor | None = None,
    return_final_state: bool = False, eps: float = 1e-6, chunk_size: int = 64, form: str = "chunkwise",
):
    """mLSTM through FLA's ``chunk_simple_gla`` (see the module docstring); signature of the torch backend."""
    if form != "chunkwise":
        raise ValueError(f"the fla mLSTM backend computes the chunkwise form only, got form={form!r}")
    check_inputs(q, k, v, i, f, initial_state, reset)
    B, NH, S, DHQK = q.shape
    DHV = v.shape[-1]
    if q.dtype == torch.float64 or S == 1:
        if S == 1:  # generation: one recurrent step, like backend="torch"
            return mlstm_recurrent(q, k, v, i, f, initial_state=initial_state, reset=reset,
                                   return_final_state=return_final_state, eps=eps)
        from .chunkwise import mlstm_chunkwise

        return mlstm_chunkwise(q, k, v, i, f, initial_state=initial_state, reset=reset,
                               return_final_state=return_final_state, eps=eps, chunk_size=chunk_size)
    chunk_simple_gla = _load()
    device = q.device
    cdt = compute_dtype(q.dtype)  # fp32: states, h arithmetic
    if initial_state is None:
        C0 = n0 = m0 = None
    else:
        C0, n0, m0 = (s.to(cdt) for s in initial_state)

    # ---- stabiliser and gates (fp64, O(B*NH*S)) ---------------------------------------------------
    log_f = F.logsigmoid(f.double())
    ig = i.double()
    if reset is None:
        starts = torch.zeros(B, S, dtype=torch.bool, device=device)
        starts[:, 0] = True
        cu = cu_cpu = None
    else:
        starts, cu, cu_cpu, first_seg, last_seg = document_segments(reset)  # registered by the trainer
        reset = reset.to(device=device, dtype=torch.bool)
    # m of the state each segment starts from: the row's m0 at t = 0 (unless the row resets there), else
    # the zero state's m = 0
    m_start = torch.zeros(B, NH, S, dtype=torch.float64, device=device)
    if m0 is not None:
        keep = torch.ones(B, 1, 1, dtype=torch.bool, device=device) if reset is None else ~reset[:, None, :1]
        first = torch.zeros(B, 1, S, dtype=torch.bool, device=device)
        first[..., 0] = True
        m_start = torch.where(first & keep, m0.double(), m_start)
    m = stabiliser(log_f, ig, starts, m_start)  # (B, NH, S)
    m_prev = torch.where(starts[:, None, :], m_start, F.pad(m[..., :-1], (1, 0)))
    g = (log_f + m_prev - m).float()  # <= 0 up to rounding
    w_k = torch.exp(ig - m).to(cdt)  # <= 1

    # ---- FLA inputs: [B, T, H, D] layout ---------------------------------------------------------
    # Two calls with the same q, k', g: the numerator with v as it is (DHV stays the model's aligned
    # head dim) and the normaliser n~^T q with a block of ones as values (NORMALISER_V columns, the
    # narrowest tile tl.dot takes; column 0 is used). Appending the ones column to v instead would
    # make DHV + 1 (unaligned rows and one more V tile for every head at 7B).
    def bthd(x):
        return x.transpose(1, 2)

    dt = q.dtype
    qf = bthd(q)
    kf = bthd((k.to(cdt) * w_k[..., None]).to(dt))
    vf = bthd(v.to(dt))
    ones = torch.ones(B, S, NH, NORMALISER_V, dtype=dt, device=device)
    gf = bthd(g)
    h0 = h0_den = None
    if C0 is not None:  # scaled by exp(-m0), as the stabilised recurrence carries them
        h0, h0_den = C0, n0[..., None].expand(B, NH, DHQK, NORMALISER_V)
    kwargs = dict(scale=DHQK**-0.5, output_final_state=return_final_state, chunk_size=fla_chunk_size(S, chunk_size))
    if cu is not None:
        qf, kf, vf, ones, gf = (x.reshape(1, B * S, *x.shape[2:]) for x in (qf, kf, vf, ones, gf))
        if h0 is not None:  # per segment: the row's state for a row's first segment, else zeros
            N = cu.numel() - 1
            src = torch.full((N,), B, dtype=torch.long, device=device)
            rows = torch.arange(B, device=device)
            src[first_seg.to(device)] = torch.where(reset[:, 0], B, rows)  # a reset at t = 0 drops the state
            h0, h0_den = (torch.cat([x, x.new_zeros(1, *x.shape[1:])])[src] for x in (h0, h0_den))
        kwargs.update(cu_seqlens=cu, cu_seqlens_cpu=cu_cpu)
    qf, kf, gf = qf.contiguous(), kf.contiguous(), gf.contiguous()
    num, ht = chunk_simple_gla(qf, kf, vf.contiguous(), gf, initial_state=None if h0 is None else h0.contiguous(),
                               **kwargs)
    den, ht_den = chunk_simple_gla(qf, kf, ones, gf, initial_state=None if h0_den is None else h0_den.contiguous(),
                                   **kwargs)

    # ---- outputs ----------------------------------------------------------------------------------
    num = num.reshape(B, S, NH, DHV).transpose(1, 2).to(cdt)  # (B, NH, S, DHV)
    den = den.reshape(B, S, NH, NORMALISER_V)[..., 0].transpose(1, 2).to(cdt)  # (B, NH, S)
    m32 = m.to(cdt)
    h = num / (torch.maximum(den.abs(), torch.exp(-m32)) + eps)[..., None]
    h = h.to(v.dtype)
    if not return_final_state:
        return h
    if cu is not None:
        ht, ht_den = ht[last_seg.to(device)], ht_den[last_seg.to(device)]
    return h, (ht.to(cdt), ht_den[..., 0].to(cdt), m32[..., -1:])
