"""The three torch mLSTM forms compute one function: fp64 agreement to 1e-10 (outputs, final states,
gradients incl. initial state), state passing, document resets, fp32 tolerances, extreme gates."""

import pytest
import torch

from xlstm_kernels import mlstm_chunkwise, mlstm_parallel, mlstm_recurrent

FORMS = {
    "parallel": mlstm_parallel,
    "recurrent": mlstm_recurrent,
    **{f"chunkwise{L}": (lambda L: lambda *a, **k: mlstm_chunkwise(*a, chunk_size=L, **k))(L) for L in (1, 4, 16, 64)},
}


def make_inputs(B=2, NH=3, S=37, DHQK=8, DHV=12, dtype=torch.float64, f_offset=3.0, with_state=True, p_reset=0.0,
                requires_grad=True):
    q, k = torch.randn(2, B, NH, S, DHQK, dtype=dtype)
    v = torch.randn(B, NH, S, DHV, dtype=dtype)
    i = torch.randn(B, NH, S, dtype=dtype)
    f = f_offset + torch.randn(B, NH, S, dtype=dtype)
    tensors = [q, k, v, i, f]
    state = None
    if with_state:
        state = [torch.randn(B, NH, DHQK, DHV, dtype=dtype), torch.randn(B, NH, DHQK, dtype=dtype),
                 torch.randn(B, NH, 1, dtype=dtype)]
        tensors += state
    for t in tensors:
        t.requires_grad_(requires_grad)
    reset = (torch.rand(B, S) < p_reset) if p_reset else None
    return (q, k, v, i, f), state, reset, tensors


def run(form, inputs, state, reset, tensors, loss_weights):
    h, (C, n, m) = FORMS[form](*inputs, initial_state=state, reset=reset, return_final_state=True)
    outs = [h, C, n, m]
    loss = sum((o * w).sum() for o, w in zip(outs, loss_weights))
    grads = torch.autograd.grad(loss, tensors)
    return [o.detach() for o in outs], grads


@pytest.mark.parametrize("S", [1, 13, 64, 100])
@pytest.mark.parametrize("with_state", [False, True])
@pytest.mark.parametrize("p_reset", [0.0, 0.1])
def test_forms_agree_fp64(S, with_state, p_reset):
    inputs, state, reset, tensors = make_inputs(S=S, with_state=with_state, p_reset=p_reset)
    ref_outs, _ = run("parallel", inputs, state, reset, tensors, [1, 1, 1, 1])
    weights = [torch.randn_like(o) for o in ref_outs]
    ref_outs, ref_grads = run("parallel", inputs, state, reset, tensors, weights)
    for form in FORMS:
        outs, grads = run(form, inputs, state, reset, tensors, weights)
        # each tensor to 1e-10 of its own largest entry (worst seen: 4e-14)
        for name, a, b in zip(["h", "C", "n", "m"], outs, ref_outs):
            assert (a - b).abs().max() <= 1e-10 * b.abs().max(), (form, name)
        names = ["dq", "dk", "dv", "di", "df", "dC0", "dn0", "dm0"]
        for name, a, b in zip(names, grads, ref_grads):
            assert (a - b).abs().max() <= 1e-10 * b.abs().max(), (form, name, (a - b).abs().max())


def test_gradients_match_finite_differences():
    """The reference itself: autograd gradients (incl. through the normaliser and m0) vs gradcheck."""
    inputs, state, reset, _ = make_inputs(B=1, NH=1, S=6, DHQK=3, DHV=2, p_reset=0.2)

    def fn(q, k, v, i, f, C0, n0, m0):
        h, (C, n, m) = mlstm_parallel(q, k, v, i, f, initial_state=(C0, n0, m0), reset=reset, return_final_state=True)
        return h, C, n, m

    assert torch.autograd.gradcheck(fn, (*inputs, *state), eps=1e-6, atol=1e-7)


@pytest.mark.parametrize("form", ["parallel", "recurrent", "chunkwise4", "chunkwise16"])
def test_state_passing_equals_one_pass(form):
    inputs, state, _, _ = make_inputs(S=50, requires_grad=False)
    h_full, st_full = FORMS[form](*inputs, initial_state=state, return_final_state=True)
    st, hs = state, []
    for a, b in [(0, 7), (7, 32), (32, 33), (33, 50)]:
        piece = [x[:, :, a:b] for x in inputs]
        h, st = FORMS[form](*piece, initial_state=st, return_final_state=True)
        hs.append(h)
    torch.testing.assert_close(torch.cat(hs, 2), h_full, atol=1e-12, rtol=1e-12)
    for a, b in zip(st, st_full):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("form", ["parallel", "recurrent", "chunkwise8"])
def test_document_reset_equals_separate_documents(form):
    if form == "chunkwise8":
        fn = lambda *a, **k: mlstm_chunkwise(*a, chunk_size=8, **k)  # noqa: E731
    else:
        fn = FORMS[form]
    inputs, state, _, _ = make_inputs(B=1, S=40, requires_grad=False)
    starts = [0, 5, 8, 9, 23, 40]  # boundaries inside, at and across chunk edges; back-to-back documents
    reset = torch.zeros(1, 40, dtype=torch.bool)
    reset[0, starts[1:-1]] = True
    h_packed, st_packed = fn(*inputs, initial_state=state, reset=reset, return_final_state=True)
    hs, st = [], None
    for doc, (a, b) in enumerate(zip(starts[:-1], starts[1:])):
        piece = [x[:, :, a:b] for x in inputs]
        h, st = fn(*piece, initial_state=state if doc == 0 else None, return_final_state=True)
        hs.append(h)
    torch.testing.assert_close(h_packed, torch.cat(hs, 2), atol=1e-12, rtol=1e-12)
    for a, b in zip(st_packed, st):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-12)


def _layernorm_loss(h, offset):
    """The official kernel tests' loss: sum((LN(h) + offset)^2)."""
    return ((torch.nn.functional.layer_norm(h, h.shape[-1:], eps=1e-5) + offset) ** 2).sum()


@pytest.mark.parametrize("form", ["parallel", "recurrent", "chunkwise64"])
def test_fp32_within_official_tolerances(form):
    """fp32 vs the fp64 reference, official tolerances (fw 1e-4/1e-3, grads 1e-3/1e-2), S=256 NH=2 DHQK=64 DHV=128."""
    torch.manual_seed(0)
    B, NH, S, DQ, DV = 1, 2, 256, 64, 128
    base = [torch.randn(B, NH, S, DQ), torch.randn(B, NH, S, DQ), torch.randn(B, NH, S, DV),
            torch.randn(B, NH, S), torch.randn(B, NH, S)]
    offset = torch.randn(B, NH, S, DV)
    results = {}
    for dtype in (torch.float64, torch.float32):
        xs = [x.to(dtype).requires_grad_() for x in base]
        fn = FORMS[form] if dtype == torch.float32 else mlstm_parallel
        h = fn(*xs)
        _layernorm_loss(h, offset.to(dtype)).backward()
        results[dtype] = (h.detach(), [x.grad for x in xs])
    h64, g64 = results[torch.float64]
    h32, g32 = results[torch.float32]
    torch.testing.assert_close(h32.double(), h64, atol=1e-4, rtol=1e-3)
    for name, a, b in zip("qkvif", g32, g64):
        torch.testing.assert_close(a.double(), b, atol=1e-3, rtol=1e-2, msg=lambda m: f"d{name}: {m}")


def test_half_inputs_keep_fp32_state():
    inputs, state, _, _ = make_inputs(S=20, dtype=torch.bfloat16, with_state=False, requires_grad=False)
    h, (C, n, m) = mlstm_chunkwise(*inputs, return_final_state=True, chunk_size=8)
    assert h.dtype == torch.bfloat16 and C.dtype == n.dtype == m.dtype == torch.float32
    ref = mlstm_parallel(*[x.double() for x in inputs])
    torch.testing.assert_close(h.double(), ref, atol=3e-2, rtol=3e-2)


def test_extreme_gates_stay_finite_and_accurate():
    """Gate pre-activations of +-1e4 (forget saturating both ways, huge input gates)."""
    inputs, _, _, _ = make_inputs(B=1, NH=2, S=96, with_state=False, requires_grad=False, dtype=torch.float32)
    q, k, v, i, f = inputs
    sign = torch.where(torch.rand_like(i) < 0.5, -1.0, 1.0)
    i, f = 1e4 * sign * torch.rand_like(i), 1e4 * torch.where(torch.rand_like(f) < 0.5, -1.0, 1.0)
    ref = mlstm_parallel(q.double(), k.double(), v.double(), i.double(), f.double())
    for fn in (mlstm_parallel, mlstm_recurrent, lambda *a: mlstm_chunkwise(*a, chunk_size=16)):
        h = fn(q, k, v, i, f)
        assert torch.isfinite(h).all()
        torch.testing.assert_close(h.double(), ref, atol=1e-3, rtol=1e-3)


def parallel_fp64_in_windows(q, k, v, i, f, reset, window):
    """An independent fp64 reference for long sequences: the quadratic parallel form (naive.py) over
    consecutive windows, each starting from the previous window's final state."""
    hs, state = [], None
    for start in range(0, q.shape[2], window):
        piece = [x[:, :, start:start + window].double() for x in (q, k, v, i, f)]
        h, state = mlstm_parallel(*piece, initial_state=state, reset=reset[:, start:start + window],
                                  return_final_state=True)
        hs.append(h)
    return torch.cat(hs, 2), state


def test_long_sequence_16k_chunkwise_matches_fp64_parallel_form():
    """16k tokens of fp32 chunkwise (256 chunk-to-chunk recurrence steps) against the fp64 parallel form:
    drift in the chunk recurrence or the stabiliser would show here. Worst seen: 7e-4 of |h|, 1.6e-7 on C."""
    torch.manual_seed(0)
    B, NH, S, D = 1, 1, 16384, 8
    q, k, v = torch.randn(3, B, NH, S, D)
    i, f = 3 * torch.randn(B, NH, S), 3 + 3 * torch.randn(B, NH, S)
    reset = torch.zeros(B, S, dtype=torch.bool)
    reset[0, ::3000] = True  # documents start inside windows and inside chunks
    h, state = mlstm_chunkwise(q, k, v, i, f, reset=reset, chunk_size=64, return_final_state=True)
    ref, ref_state = parallel_fp64_in_windows(q, k, v, i, f, reset, window=512)
    torch.testing.assert_close(h.double(), ref, atol=1e-3, rtol=2e-3)
    for name, a, b in zip("Cnm", state, ref_state):
        torch.testing.assert_close(a.double(), b, atol=1e-6, rtol=1e-5, msg=lambda m: f"final {name}: {m}")


def test_bad_shapes_raise_clear_errors():
    inputs, _, _, _ = make_inputs(S=8, with_state=False, requires_grad=False)
    q, k, v, i, f = inputs
    with pytest.raises(ValueError, match="gates must be"):
        mlstm_chunkwise(q, k, v, i[:, :, :4], f)
    with pytest.raises(ValueError, match="power of two"):
        mlstm_chunkwise(q, k, v, i, f, chunk_size=12)
    with pytest.raises(ValueError, match="initial state shapes"):
        mlstm_parallel(q, k, v, i, f, initial_state=(torch.zeros(1), torch.zeros(1), torch.zeros(1)))
