"""What the recurrent cells and the causal conv save for backward, per backend, in bytes per rank.

Each function returns ``[(name, bytes), ...]`` for ONE layer and one micro-batch, read off the code it models
(the file and the tensors are named in each docstring). When a kernel changes what it saves, change the
matching function here: tests/test_memory_model.py compares every sum with a saved-tensor count and says
which (family, backend, precision) disagrees.

Symbols: H = B * NH_local (batch x heads on this rank), S tokens, T = NC * L (padded to whole chunks),
Q / V = qk / v head dims; fp32 = 4 bytes. ``a`` = bytes of the cell inputs (q, k, v: the dtype of the
projections' output).
"""

from __future__ import annotations

F32, F64, BOOL, I32 = 4, 8, 1, 4

Terms = list[tuple[str, float]]


# ---- mLSTM cell -------------------------------------------------------------------------------------


def mlstm_torch_chunkwise(H: int, B: int, S: int, L: int, NC: int, Q: int, V: int, a: int) -> Terms:
    """``kernels/mlstm/chunkwise.py`` under autograd: everything in fp32 whatever the input dtype.

    Per chunk it keeps three state-sized tensors (the chunk summary C_chunk, the running C that each
    chunk's update reads, the stacked C_b the outputs read) and the L x L matrices (log_D, D, q k^T
    before and after the decay); per token: q-hat three times (one copy per matmul), k and v copies.
    """
    T = NC * L
    tok = H * T * F32
    return [
        ("gates (f in, logsigmoid buffer)", 2 * H * S * F32),
        ("chunk masks (valid, continues, causal)", B * NC * L * L * BOOL + B * NC * L * BOOL + 2 * L * L * BOOL),
        ("log_D, D, q k^T (x2) (L x L per chunk)", 4 * H * NC * L * L * F32),
        ("k fp32", H * S * Q * F32),
        ("k copies (k^T for the summary, k^T for q k^T)", 2 * tok * Q),
        ("v copies (summary, S v)", 2 * tok * V),
        ("q-hat copies (q k^T, q C, q n)", 3 * tok * Q),
        ("C per chunk: summary, running, stacked", 3 * H * NC * Q * V * F32),
        ("n per chunk: summary, running, stacked", 3 * H * NC * Q * F32),
        ("per-token gate weights and normaliser", 10 * tok),
        ("per-chunk scalars", 8 * H * NC * F32),
        ("q C and numerator", 2 * tok * V),
        ("h fp32 (read by the output norm)", H * S * V * F32),
    ]


def mlstm_triton_chunkwise(H: int, B: int, S: int, L: int, NC: int, Q: int, V: int, a: int,
                           reset: bool) -> Terms:
    """``kernels/mlstm/chunkwise_triton.py`` ``_MLSTMChunkwiseTriton.forward`` with
    RECOMPUTE_STATES_IN_BACKWARD (the default): save_for_backward(q, k, v, f, lf, ig, rs, C0, n0, m0, m_row,
    den, h). q, k, v are contiguous copies of the heads views (input dtype); only the fp32 initial state is
    kept, the per-chunk states are recomputed in backward (``mlstm_triton_backward_states``)."""
    return [
        ("q, k, v (contiguous copies)", H * S * (2 * Q + V) * a),
        ("f, log f, i, m_row, den", H * S * (a + 4 * F32)),
        ("reset (int32)", B * S * I32 if reset else 0),
        ("initial C, n, m (fp32)", H * (Q * V + Q + 1) * F32),
        ("h", H * S * V * a),
        ("h upcast to fp32 by the output norm", H * S * V * F32 if a != F32 else 0),
    ]


def mlstm_triton_backward_states(H: int, NC: int, Q: int, V: int) -> float:
    """Backward transient of the Triton mLSTM: the fp32 (C, n, m) before every chunk, recomputed for the one
    layer being differentiated (C_all, n_all, m_all: NC + 1 states), plus their gradients dC_all, dn_all."""
    return 2 * H * (NC + 1) * (Q * V + Q + 1) * F32


def mlstm_fla_chunk(H: int, B: int, S: int, L: int, NC: int, Q: int, V: int, a: int, reset: bool) -> Terms:
    """``kernels/mlstm/fla.py`` around FLA's ``chunk_simple_gla`` (which saves its q, k, v, g and recomputes the
    chunk states in backward), called twice: the numerator with v, the normaliser with a block of ones
    (NORMALISER_V = 16 columns); q, k' = k exp(i - m) and g are shared by both calls. Plus the fp64 stabiliser
    bookkeeping, the fp32 numerator and normaliser, and the division."""
    ones = 16  # kernels/mlstm/fla.py NORMALISER_V
    return [
        ("stabiliser and gates (fp64)", 8 * H * S * F64),
        ("g, w_k, m (fp32)", 3 * H * S * F32),
        ("k fp32", H * S * Q * F32),
        ("q, k', v (kernel inputs)", H * S * (2 * Q + V) * a),
        ("ones (normaliser values)", H * S * ones * a),
        ("numerator fp32 and normaliser", H * S * (V + 4) * F32),
        ("h", H * S * V * a),
        ("h upcast to fp32 by the output norm", H * S * V * F32 if a != F32 else 0),
    ]


def mlstm_cell(backend: str, **kw) -> Terms:
    if backend == "torch":
        kw.pop("reset", None)
        return mlstm_torch_chunkwise(**kw)
    if backend == "triton":
        return mlstm_triton_chunkwise(**kw)
    if backend == "fla":
        return mlstm_fla_chunk(**kw)
    raise ValueError(f"no memory model for mLSTM backend {backend!r}")


# ---- sLSTM cell -------------------------------------------------------------------------------------


def slstm_torch_recurrent(B: int, S: int, NH: int, DH: int, a: int) -> Terms:
    """``kernels/slstm/naive.py``: a Python loop over S steps; each step keeps ~15 (B, NH, DH) fp32 tensors
    (gates, activations, c, n, y) and a permuted copy of R made by the einsum (4 NH DH^2 fp32)."""
    unit = B * NH * DH * F32
    return [
        ("per-step gate and state tensors", 15 * S * unit),
        ("per-step copy of R (einsum)", S * 4 * NH * DH * DH * F32),
        ("y stacked (fp32)", B * S * NH * DH * F32),
    ]


def slstm_triton_recurrent(B: int, S: int, NH: int, DH: int, a: int) -> Terms:
    """``kernels/slstm/recurrent_triton.py`` ``_SLSTMTriton``: save_for_backward(wx, R, b, s0, rs, hs, gs): hs the
    (y, c, n, m) after every step and gs the raw gates, both fp32 (B, S, 4, NH, DH)."""
    d = NH * DH
    return [
        ("wx (input dtype)", B * S * 4 * d * a),
        ("states after every step (fp32)", B * S * 4 * d * F32),
        ("raw gates (fp32)", B * S * 4 * d * F32),
        ("y upcast to fp32 by the group norm", B * S * d * F32 if a != F32 else 0),
    ]


def slstm_cell(backend: str, **kw) -> Terms:
    if backend == "torch":
        return slstm_torch_recurrent(**kw)
    if backend in ("triton", "fla"):  # "fla" has no sLSTM: the Triton kernel runs
        return slstm_triton_recurrent(**kw)
    raise ValueError(f"no memory model for sLSTM backend {backend!r}")


# ---- causal conv ------------------------------------------------------------------------------------


def causal_conv(B: int, S: int, C: int, K: int, a: int, reset: bool) -> Terms:
    """``model/components.py`` ``CausalConv1d`` (torch path). Without resets F.conv1d saves its padded input
    (B, S + K - 1, C); with resets ``DocumentMaskedConv`` saves the same padded input and an int32 document
    index per position (its backward rebuilds the masks). Both: the output (+ bias) that the SiLU after it
    saves."""
    return [
        ("conv input (padded)", B * (S + K - 1) * C * a),
        ("document index (int32)", B * (S + K - 1) * I32 if reset else 0),
        ("conv output", B * S * C * a),
    ]


def conv_output_copies(reset: bool) -> int:
    """F.conv1d's output is a transposed (non-contiguous) view, so each headwise projection reading it
    copies it; ``DocumentMaskedConv``'s output (resets) is contiguous and is read in place."""
    return 0 if reset else 1


def total(terms: Terms) -> float:
    return float(sum(b for _, b in terms))


__all__ = ["causal_conv", "conv_output_copies", "mlstm_cell", "mlstm_triton_backward_states", "slstm_cell", "total"]
