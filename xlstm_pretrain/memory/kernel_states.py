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


def mlstm_torch_chunkwise(H: int, B: int, S: int, L: int, NC: int, Q: int, V: int, a: int, reset: bool) -> Terms:
    """``kernels/mlstm/chunkwise.py``: everything in fp32 whatever the input dtype.

    Autograd keeps the chunk summaries' inputs (k weighted, v), the chunk states (C | n) and their
    scaled summaries; the output step (``chunk_outputs.py``) saves q-hat, k, v, the states before each
    chunk, D and P (L x L per chunk), the carried-state term Y, h and a few per-token vectors.
    """
    T = NC * L
    tok = H * T * F32
    return [
        ("gates (f in, logsigmoid buffer)", 2 * H * S * F32),
        ("reset masks and segment ids", B * NC * L * (3 * BOOL + 8) if reset else L * BOOL),
        ("k, v fp32 (chunked copies)", tok * (Q + V)),
        ("k weighted and v for the chunk summaries", tok * (Q + V)),
        ("q-hat (output step)", tok * Q),
        ("D, P (L x L per chunk)", 2 * H * NC * L * L * F32),
        ("(C | n): chunk summaries, states before each chunk", 2 * H * NC * Q * (V + 1) * F32),
        ("Y = q-hat (C | n) before the chunk", tok * (V + 1)),
        ("h fp32 (the output step's and the output norm's input)", tok * V),
        ("per-token: log weights, cumsums, w, denominators, m, argmax (int64), masks", 9 * tok + 2 * H * T * BOOL),
        ("per-chunk scalars", 12 * H * NC * F32),
        ("h in the input dtype, upcast to fp32 by the output norm", H * S * V * F32 if a != F32 else 0),
    ]


def mlstm_triton_chunkwise(H: int, B: int, S: int, L: int, NC: int, Q: int, V: int, a: int,
                           reset: bool) -> Terms:
    """``kernels/mlstm/chunkwise_triton.py`` ``_MLSTMChunkwiseTriton.forward`` with
    RECOMPUTE_STATES_IN_BACKWARD (the default): save_for_backward(q, k, v, f, lf, ig, rs, C0, n0, m0, m_row,
    den, h). q, k, v are contiguous copies of the heads views (input dtype); only the fp32 initial state is
    kept, the per-chunk states are recomputed in backward (``mlstm_triton_backward_states``; without
    recomputation it would also keep ``mlstm_triton_chunk_states``)."""
    return [
        ("q, k, v (contiguous copies)", H * S * (2 * Q + V) * a),
        ("f, log f, i, m_row, den", H * S * (a + 4 * F32)),
        ("reset (int32)", B * S * I32 if reset else 0),
        ("initial C, n, m (fp32)", H * (Q * V + Q + 1) * F32),
        ("h", H * S * V * a),
        ("h upcast to fp32 by the output norm", H * S * V * F32 if a != F32 else 0),
    ]


def mlstm_triton_state_bytes(a: int) -> int:
    """Bytes per element of the Triton mLSTM's per-chunk states C_all and dC_all (``chunkwise_triton.state_dtype``):
    bf16 for bf16 cell inputs, fp32 otherwise. Here ``a`` = 2 means bf16 (the training precisions are fp32 and
    bf16; fp16 cell inputs, which keep fp32 states, are not one of them)."""
    return 2 if a == 2 else F32


def mlstm_triton_chunk_states(H: int, NC: int, Q: int, V: int, a: int = F32) -> float:
    """The per-chunk states the Triton mLSTM materialises (``chunkwise_triton._chunk_states``): C before every
    chunk (C_all: NC states of Q x V, in the state dtype of ``mlstm_triton_state_bytes``), n and m before every
    chunk and after the last (n_all, m_all: NC + 1 of Q + 1, fp32). The forward's final C is a separate fp32
    output (returned, not counted here)."""
    return H * (NC * Q * V * mlstm_triton_state_bytes(a) + (NC + 1) * (Q + 1) * F32)


def mlstm_triton_backward_states(H: int, NC: int, Q: int, V: int, a: int = F32) -> float:
    """Backward transient of the Triton mLSTM, live together while ``_bw_dqk`` runs: the chunk states recomputed
    for the one layer being differentiated (``mlstm_triton_chunk_states``), their gradients dC_all (NC states,
    the state dtype: dC_{c+1} next to C_c) and dn_all (NC + 1 of Q, fp32), and the fp32 dC0 (Q x V).
    ``a``: bytes of the cell inputs (2 = bf16: bf16 states); the fp32 default is the upper bound."""
    grads = NC * Q * V * mlstm_triton_state_bytes(a) + (NC + 1) * Q * F32 + Q * V * F32
    return mlstm_triton_chunk_states(H, NC, Q, V, a) + H * grads


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
        return mlstm_torch_chunkwise(**kw)
    if backend == "triton":
        return mlstm_triton_chunkwise(**kw)
    if backend == "fla":
        return mlstm_fla_chunk(**kw)
    raise ValueError(f"no memory model for mLSTM backend {backend!r}")


# ---- sLSTM cell -------------------------------------------------------------------------------------


def slstm_torch_recurrent(B: int, S: int, NH: int, DH: int, a: int) -> Terms:
    """``kernels/slstm/recurrent.py`` ``_SLSTMRecurrence``: save_for_backward(R, raw, acts, ys, cs, ns, keep):
    R arranged (NH, DH, 4 DH), the raw gates and the four activations of every step, y, c, n before every
    step and the last (all fp32)."""
    unit = B * NH * DH * F32
    return [
        ("R arranged for the per-step matmul", 4 * NH * DH * DH * F32),
        ("raw gates and their activations, every step", 8 * S * unit),
        ("y, c, n before every step and the last", 3 * (S + 1) * unit),
        ("reset keep mask", S * B * F32),
        ("y in the input dtype, upcast by the group norm", S * unit if a != F32 else 0),
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


__all__ = ["causal_conv", "conv_output_copies", "mlstm_cell", "mlstm_triton_backward_states",
           "mlstm_triton_chunk_states", "mlstm_triton_state_bytes", "slstm_cell", "total"]
