"""backend="fla": the mLSTM on flash-linear-attention's chunk_simple_gla against the torch references.

Skipped when flash-linear-attention is not installed (pip install 'xlstm-pretrain[fla]'). On a CPU
machine FLA's Triton kernels run under the Triton interpreter (TRITON_INTERPRET=1, set by
tests/conftest.py and again below), with the two shims of kernels/fla_runtime.py; sizes are tiny. On a
GPU machine run with TRITON_INTERPRET=0. Every output and gradient (q, k, v, i, f and the initial state
C, n, m) is compared with autograd of the fp64 torch reference; max errors are printed (run with -s),
next to the error of the fp32 torch reference for scale.
"""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import importlib.util  # noqa: E402
import functools  # noqa: E402
import inspect  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

# find_spec, not importorskip: importing fla takes seconds (it imports transformers); the tests import it.
if importlib.util.find_spec("fla") is None or importlib.util.find_spec("triton") is None:
    pytest.skip("flash-linear-attention (and triton) not installed: pip install 'xlstm-pretrain[fla]'",
                allow_module_level=True)

import kernel_checks  # noqa: E402
import xlstm_kernels  # noqa: E402
from kernel_checks import F64, mlstm_problem, parallel_ref, rel_err, triton_test_device  # noqa: E402
from kernel_checks import fresh_selfcheck  # noqa: E402,F401  (autouse fixture)
from xlstm_kernels import boundaries, selfcheck  # noqa: E402
from xlstm_kernels.mlstm import fla as fla_mod  # noqa: E402
from xlstm_kernels.mlstm import mlstm_chunkwise, mlstm_recurrent  # noqa: E402

INTERPRET = os.environ["TRITON_INTERPRET"] == "1"
DEVICE = triton_test_device()

REPO = Path(__file__).resolve().parents[1]
run = functools.partial(kernel_checks.mlstm_run, device=DEVICE)
problem = mlstm_problem
OUT_NAMES = ["h", "C", "n", "m"]
GRAD_NAMES = ["dq", "dk", "dv", "di", "df", "dC0", "dn0", "dm0"]


CASES = {
    # name: (B, NH, S, DK, DV, problem kwargs, run kwargs, gradient tolerance)
    "ragged_reset_state": (2, 2, 37, 16, 24, {}, {}, 1e-4),  # varlen path, per-row initial states
    "large_family_softcap": (2, 2, 64, 32, 32, dict(gate_scale=4.0, cap=15.0, moff=5.0), dict(chunk_size=64), 1e-4),
    # soft-capped gates near the caps (log f down to -15 per token): FLA exponentiates differences of g sums
    # taken within a chunk (hundreds in magnitude here), as our Triton kernel does (2.4e-5 / 5.5e-5 on h / dq
    # at L=64), where the torch reference sums the log-forget matrix directly (5e-6)
    "large_family_heavy_forget": (2, 2, 64, 32, 32, dict(gate_scale=8.0, cap=15.0, moff=5.0), dict(chunk_size=64),
                                  3e-4),
    "floor_active": (2, 2, 37, 16, 24, dict(ioff=-6.0, foff=-2.0, moff=-6.0), {}, 1e-4),  # max(|den|, exp(-m))
    "large_m_big_eps": (2, 2, 37, 16, 24, dict(ioff=8.0, moff=8.0), dict(eps=1e-2), 1e-4),  # eps * exp(m) matters
    # paper family, uncapped gates far beyond fp32's exp range (exp(60) * exp(50) would overflow unstabilised):
    # fp32 torch itself is at ~2e-4 here; dm0 comes out of FLA's dg (reverse cumsum of q.dq - k.dk, cancellation)
    "paper_huge_gates": (2, 2, 45, 16, 16, dict(ioff=60.0, moff=50.0, gate_scale=4.0), {}, 1e-3),
    "no_state_no_reset": (2, 2, 40, 16, 16, dict(state=False, reset_p=0.0), {}, 1e-4),  # batched path
    "state_no_reset": (2, 2, 50, 32, 16, dict(reset_p=0.0), dict(chunk_size=64), 1e-4),  # batched path + h0
    "reset_at_t0": (2, 2, 20, 16, 16, dict(reset_at=(0, 9)), {}, 1e-4),  # initial state dropped: zero grads
    "odd_dv_short": (1, 2, 5, 16, 17, dict(reset_p=0.0), {}, 1e-4),
}


@pytest.mark.parametrize("case", list(CASES))
def test_mlstm_fla_matches_reference(case):
    B, NH, S, DK, DV, pkw, rkw, tol = CASES[case]
    xs, reset, weights = problem(B, NH, S, DK, DV, **pkw)
    ref_o, ref_g = run(parallel_ref, xs, reset, weights, dtype=F64, **rkw)
    fla_o, fla_g = run(fla_mod.mlstm_fla, xs, reset, weights, dtype=torch.float32, **rkw)
    t32_o, t32_g = run(mlstm_chunkwise, xs, reset, weights, dtype=torch.float32, **rkw)
    report = []
    for name, a, b in zip(OUT_NAMES, fla_o, ref_o):
        assert a.dtype == torch.float32 and torch.isfinite(a).all(), f"{case} {name}"
        torch.testing.assert_close(a.to(F64), b, atol=1e-4, rtol=1e-3, msg=lambda m: f"{case} {name}: {m}")
        report.append(f"{name} {rel_err(a, b):.1e}")
    names = GRAD_NAMES if len(xs) > 5 else GRAD_NAMES[:5]
    for name, a, b, c in zip(names, fla_g, ref_g, t32_g):
        assert torch.isfinite(a).all(), f"{case} {name}: non-finite"
        if b.abs().max() == 0:  # e.g. the initial state's gradients when every row resets at t = 0
            assert a.abs().max() == 0, f"{case} {name} should be zero"
            report.append(f"{name} 0")
            continue
        err, err32 = rel_err(a, b), rel_err(c, b)
        report.append(f"{name} {err:.1e} (torch32 {err32:.1e})")
        assert err < tol, f"{case} {name}: relative max error {err:.2e} (fp32 torch: {err32:.2e})"
    print(f"\n[mlstm fla fp32 vs fp64, rel. max err] {case}: " + ", ".join(report))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_mlstm_fla_half_inputs(dtype):
    if dtype == torch.bfloat16 and INTERPRET:
        pytest.skip("the Triton interpreter mis-computes bf16 tl.dot (FLA's kernels have no emulation path, "
                    "unlike ours in kernels/triton_utils.py); bf16 is checked on a GPU")
    xs, reset, weights = problem(2, 2, 37, 16, 32)
    xs = [x.to(dtype).float() if j < 3 else x for j, x in enumerate(xs)]  # the reference sees the rounded inputs
    ref_o, ref_g = run(parallel_ref, xs, reset, weights, dtype=F64)
    got_o, got_g = run(fla_mod.mlstm_fla, xs, reset, weights, dtype=dtype)
    assert got_o[0].dtype == dtype and got_g[0].dtype == dtype and got_o[1].dtype == torch.float32
    tol = 3e-2 if dtype == torch.bfloat16 else 1e-2
    report = []
    for name, a, b in zip(OUT_NAMES + GRAD_NAMES, got_o + got_g, ref_o + ref_g):
        err = rel_err(a, b)
        report.append(f"{name} {err:.1e}")
        assert err < tol, f"{dtype} {name}: {err:.2e}"
    print(f"\n[mlstm fla {dtype} vs fp64] " + ", ".join(report))


def test_mlstm_fla_state_passing():
    """Two halves with the state carried equal one pass, forward and backward (incl. the carried m)."""
    xs, reset, _ = problem(2, 2, 40, 16, 16, reset_p=0.05)
    kw = dict(chunk_size=16, return_final_state=True)
    full = [x.clone().requires_grad_() for x in xs]
    h, (C, n, m) = fla_mod.mlstm_fla(*full[:5], initial_state=tuple(full[5:]), reset=reset, **kw)
    split = [x.clone().requires_grad_() for x in xs]
    cut = 19
    h1, st = fla_mod.mlstm_fla(*(x[:, :, :cut] for x in split[:5]), initial_state=tuple(split[5:]),
                               reset=reset[:, :cut], **kw)
    h2, (C2, n2, m2) = fla_mod.mlstm_fla(*(x[:, :, cut:] for x in split[:5]), initial_state=st,
                                         reset=reset[:, cut:], **kw)
    torch.testing.assert_close(torch.cat([h1, h2], 2), h, atol=1e-5, rtol=1e-4)
    for a, b in ((C2, C), (n2, n), (m2, m)):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    g = torch.Generator().manual_seed(5)
    w, wm = torch.randn(h.shape, generator=g), torch.randn(m.shape, generator=g)
    gf = torch.autograd.grad((h * w).sum() + (m * wm).sum() + C.sum(), full)
    gs = torch.autograd.grad((torch.cat([h1, h2], 2) * w).sum() + (m2 * wm).sum() + C2.sum(), split)
    for a, b in zip(gs, gf):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-3)


# ---------------------------------------------------------------------------------------------------
# the pure-torch parts of the wrapper
# ---------------------------------------------------------------------------------------------------
def test_stabiliser_and_segments_match_the_recurrence():
    """m_t from cumsum / cummax equals the recurrent form's running max, resets and initial m included."""
    g = torch.Generator().manual_seed(3)
    B, NH, S = 3, 2, 50
    i = torch.randn(B, NH, S, generator=g, dtype=F64) * 5
    i[0, 0, 7] = float("-inf")  # padding-like input: writes nothing
    log_f = torch.nn.functional.logsigmoid(torch.randn(B, NH, S, generator=g, dtype=F64) * 3 + 1)
    reset = torch.rand(B, S, generator=g) < 0.1
    reset[1, 0] = True
    m0 = torch.randn(B, NH, 1, generator=g, dtype=F64) * 4
    starts, cu, cu_cpu, first_seg, last_seg = boundaries.document_segments(reset)
    assert cu.tolist() == cu_cpu.tolist() and cu_cpu[-1] == B * S
    assert torch.equal(starts[:, 0], torch.ones(B, dtype=torch.bool)) and torch.equal(starts[:, 1:], reset[:, 1:])
    flat = [b * S + t for b in range(B) for t in range(S) if t == 0 or reset[b, t]]
    assert cu_cpu[:-1].tolist() == flat
    assert cu_cpu[first_seg].tolist() == [b * S for b in range(B)]
    assert last_seg[-1] == len(flat) - 1 and all(cu_cpu[last_seg[b] + 1] == (b + 1) * S for b in range(B))
    m_start = torch.where(torch.arange(S) == 0, torch.where(reset[:, None, :1], 0.0, m0), 0.0)
    got = fla_mod.stabiliser(log_f, i, starts, m_start)
    want = torch.empty_like(got)
    m = m0[..., 0].clone()
    for t in range(S):
        m = torch.where(reset[:, None, t], 0.0, m)
        m = torch.maximum(log_f[..., t] + m, i[..., t])
        want[..., t] = m
    torch.testing.assert_close(got, want, atol=1e-12, rtol=0)


def test_step_and_fp64_use_the_torch_reference():
    xs, reset, _ = problem(2, 2, 1, 16, 16, reset_p=0.0)
    st = tuple(xs[5:])
    h, s = fla_mod.mlstm_fla(*xs[:5], initial_state=st, return_final_state=True)
    h_ref, s_ref = mlstm_recurrent(*xs[:5], initial_state=st, return_final_state=True)
    assert torch.equal(h, h_ref) and all(torch.equal(a, b) for a, b in zip(s, s_ref))
    x64 = [x.double() for x in problem(1, 2, 21, 16, 16, reset_p=0.0)[0][:5]]
    torch.testing.assert_close(fla_mod.mlstm_fla(*x64), mlstm_chunkwise(*x64))
    with pytest.raises(ValueError, match="chunkwise"):
        fla_mod.mlstm_fla(*xs[:5], form="parallel")


# ---------------------------------------------------------------------------------------------------
# dispatch
# ---------------------------------------------------------------------------------------------------
def test_fla_backend_dispatch_and_signature():
    assert "fla" in xlstm_kernels.MLSTM_BACKENDS and "fla" not in xlstm_kernels.MISSING_BACKENDS
    torch_sig = inspect.signature(xlstm_kernels.MLSTM_BACKENDS["torch"])
    for fn in (xlstm_kernels.MLSTM_BACKENDS["fla"], fla_mod.mlstm_fla):
        sig = inspect.signature(fn)
        assert list(sig.parameters) == list(torch_sig.parameters)
        assert {k: p.default for k, p in sig.parameters.items()} == {
            k: p.default for k, p in torch_sig.parameters.items()}
    xs, reset, _ = problem(1, 2, 21, 16, 16)
    fla_mod._load()  # import FLA first: its own import warns (transformers' deprecations), not our check
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # passes its self-check: no warning
        h, st = xlstm_kernels.mlstm(*xs[:5], backend="fla", initial_state=tuple(xs[5:]), reset=reset,
                                    return_final_state=True, chunk_size=16)
    assert selfcheck.result("mlstm_fla", "cpu" if INTERPRET else str(h.device), torch.float32,
                            DK=16, DV=16, chunk_size=16) is None
    ref, _ = mlstm_chunkwise(*xs[:5], initial_state=tuple(xs[5:]), reset=reset, return_final_state=True)
    torch.testing.assert_close(h, ref, atol=1e-4, rtol=1e-3)
    # FLA has no sLSTM: backend="fla" runs sLSTM blocks on our Triton kernel
    assert xlstm_kernels.SLSTM_BACKENDS["fla"] is xlstm_kernels.SLSTM_BACKENDS["triton"]


def test_fla_selfcheck_falls_back(monkeypatch):
    def wrong(q, k, v, i, f, **kwargs):
        out = mlstm_chunkwise(q, k, v, i, f, **kwargs)
        return (out[0] * 1.5, out[1]) if isinstance(out, tuple) else out * 1.5

    monkeypatch.setattr(fla_mod, "mlstm_fla", wrong)
    xs, reset, _ = problem(1, 2, 21, 16, 16)
    with pytest.warns(RuntimeWarning, match="mlstm_fla"):
        h = xlstm_kernels.mlstm(*xs[:5], backend="fla", reset=reset)
    torch.testing.assert_close(h, mlstm_chunkwise(*xs[:5], reset=reset))


def test_missing_fla_gives_install_hint():
    code = ("import sys; sys.modules['fla'] = None\n"
            "import torch, xlstm_kernels\n"
            "assert 'fla' not in xlstm_kernels.MLSTM_BACKENDS, xlstm_kernels.MLSTM_BACKENDS\n"
            "q = torch.randn(1, 2, 7, 8)\n"
            "try:\n"
            "    xlstm_kernels.mlstm(q, q, q, q[..., 0], q[..., 0], backend='fla')\n"
            "except ValueError as e:\n"
            "    assert 'pip install flash-linear-attention' in str(e), e\n"
            "    print('ok')\n"
            "from xlstm_pretrain.model.config import ModelConfig\n"
            "try:\n"
            "    ModelConfig(backend='fla').validate()\n"
            "except Exception as e:\n"
            "    assert 'flash-linear-attention' in str(e), e\n"
            "    print('ok')\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert out.returncode == 0 and out.stdout.count("ok") == 2, out.stdout + out.stderr[-2000:]


def test_model_with_fla_backend_matches_torch_backend():
    """A tiny large-family model (DHQK = 4: below FLA's 16-wide tiles) with packed documents."""
    from xlstm_pretrain.model import ModelConfig, build_model

    ids = torch.randint(0, 61, (2, 30))
    bounds = torch.zeros(2, 30, dtype=torch.bool)
    bounds[0, [0, 7, 20]] = True
    bounds[1, [0, 13]] = True
    results = []
    for backend in ("torch", "fla"):
        torch.manual_seed(1)
        cfg = ModelConfig(family="large", vocab_size=61, embedding_dim=32, num_blocks=2, num_heads=4, chunk_size=16,
                          backend=backend)
        cfg.validate()
        model = build_model(cfg).to(DEVICE)
        with warnings.catch_warnings():
            warnings.simplefilter("error", RuntimeWarning)  # no self-check fallback
            loss = model(ids.to(DEVICE), doc_boundaries=bounds.to(DEVICE)).logsumexp(-1).mean()
        loss.backward()
        results.append((loss.detach(), [p.grad for p in model.parameters()]))
    torch.testing.assert_close(results[1][0], results[0][0], atol=1e-5, rtol=1e-5)
    for g, g0 in zip(results[1][1], results[0][1]):
        torch.testing.assert_close(g, g0, atol=1e-5, rtol=1e-4)


def test_chunk_size_is_honoured_or_refused(monkeypatch):
    seen = []
    real = fla_mod._load()

    def spy(*args, **kwargs):
        seen.append(kwargs["chunk_size"])
        return real(*args, **kwargs)

    monkeypatch.setattr(fla_mod, "_chunk_simple_gla", spy)
    xs, _, _ = problem(1, 1, 300, 16, 16, reset_p=0.0)
    h = fla_mod.mlstm_fla(*xs[:5], initial_state=tuple(xs[5:]), chunk_size=128)
    assert seen and set(seen) == {128}  # numerator and normaliser calls, at the configured chunk size
    ref = mlstm_chunkwise(*(x.double() for x in xs[:5]), initial_state=tuple(x.double() for x in xs[5:]))
    assert rel_err(h, ref) < 1e-4
    for bad in (8, 256, 48):
        with pytest.raises(ValueError, match=f"chunk_size={bad} is not supported"):
            fla_mod.mlstm_fla(*xs[:5], chunk_size=bad)


def test_values_are_not_padded(monkeypatch):
    """The numerator runs at the model's head dim (no ones column appended to v)."""
    widths = []
    real = fla_mod._load()

    def spy(q, k, v, g, **kwargs):
        widths.append(v.shape[-1])
        return real(q, k, v, g, **kwargs)

    monkeypatch.setattr(fla_mod, "_chunk_simple_gla", spy)
    xs, reset, _ = problem(1, 2, 21, 16, 32)
    fla_mod.mlstm_fla(*xs[:5], reset=reset, chunk_size=16)
    assert sorted(widths) == [fla_mod.NORMALISER_V, 32]


def test_registered_boundaries_mean_no_host_sync_in_the_model(monkeypatch):
    """With the host copy of the mask registered once per batch (what the trainer does), neither the mLSTM
    nor the fused conv copies boundary positions from the device; unregistered, every layer would."""
    from xlstm_pretrain.model import ModelConfig, build_model

    calls = []
    real = boundaries._segments_from_device_mask
    monkeypatch.setattr(boundaries, "_segments_from_device_mask", lambda r: calls.append(1) or real(r))
    torch.manual_seed(1)
    cfg = ModelConfig(family="large", vocab_size=61, embedding_dim=64, num_blocks=2, num_heads=4, chunk_size=16,
                      backend="fla", fused_ops="fla")
    model = build_model(cfg).to(DEVICE)
    ids = torch.randint(0, 61, (2, 24), device=DEVICE)
    bounds_host = torch.zeros(2, 24, dtype=torch.bool)
    bounds_host[0, [0, 9]] = bounds_host[1, [0, 17]] = True
    bounds = bounds_host.to(DEVICE)
    model(ids, doc_boundaries=bounds).sum().backward()  # first use: the kernel's self-check runs too
    calls.clear()
    model(ids, doc_boundaries=bounds).sum().backward()
    assert len(calls) == cfg.num_blocks  # one sync per mLSTM layer when nobody registered the mask
    calls.clear()
    bounds = bounds_host.to(DEVICE).clone()
    xlstm_kernels.register_document_boundaries(bounds, bounds_host)
    model(ids, doc_boundaries=bounds).sum().backward()
    assert calls == []


def test_the_only_host_sync_is_the_unregistered_mask_path():
    """Static guard: .cpu()/.item()/.tolist() appear in the FLA paths only inside _segments_from_device_mask."""
    import ast
    import inspect as insp

    from xlstm_pretrain.model import fused_fla

    for mod in (fla_mod, boundaries, fused_fla):
        tree = ast.parse(insp.getsource(mod))
        allowed = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef) and node.name == "_segments_from_device_mask":
                allowed |= {id(n) for n in ast.walk(node)}
        for node in ast.walk(tree):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr in ("cpu", "item", "tolist") and id(node) not in allowed):
                raise AssertionError(f"{mod.__name__}: .{node.func.attr}() at line {node.lineno}")


def test_fla_is_patched_in_one_place_once():
    """Under the interpreter fla_runtime.import_fla applies the shims; importing again re-applies nothing."""
    if not INTERPRET:
        pytest.skip("FLA is patched only under the Triton interpreter")
    from triton.runtime.autotuner import Autotuner

    from xlstm_kernels import fla_runtime

    fla_runtime.import_fla("fla.ops.simple_gla", needed_by="test")
    assert sys.modules["fla.ops.common.chunk_h"].range is fla_runtime._interpreter_range
    patched = set(fla_runtime._patched)
    tuners = []
    for name in patched:
        for obj in vars(sys.modules[name]).values():
            for _ in range(4):
                if isinstance(obj, Autotuner):
                    tuners.append(obj)
                    break
                obj = getattr(obj, "fn", None)
    assert tuners and all(len(t.configs) == 1 for t in tuners)
    fla_runtime.import_fla("fla.ops.simple_gla", needed_by="test")
    assert fla_runtime._patched == patched
