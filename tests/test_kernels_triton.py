"""Triton kernels (mLSTM chunkwise, sLSTM recurrent) against the torch references.

On a CPU machine the kernels run under the Triton interpreter (TRITON_INTERPRET=1, set by
tests/conftest.py and again below before anything imports triton), so sizes are tiny. On a GPU machine run with TRITON_INTERPRET=0 to test the
compiled kernels on CUDA. Every gradient is compared with autograd of the fp64 torch reference; the
max errors are printed (run with -s), next to the error of the fp32 torch reference for scale.
"""

import importlib.util
import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import collections  # noqa: E402
import functools  # noqa: E402
import inspect  # noqa: E402
import re  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import warnings  # noqa: E402
import weakref  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

triton = pytest.importorskip("triton")

import kernel_checks  # noqa: E402
import xlstm_kernels  # noqa: E402
from kernel_checks import F64, mlstm_problem, parallel_ref, rel_err, triton_test_device  # noqa: E402
from kernel_checks import fresh_selfcheck  # noqa: E402,F401  (autouse fixture)
from xlstm_kernels import selfcheck  # noqa: E402
from xlstm_kernels.mlstm import chunkwise_triton, mlstm_chunkwise  # noqa: E402
from xlstm_kernels.slstm import recurrent_triton, slstm_recurrent  # noqa: E402
from xlstm_pretrain.memory import kernel_states  # noqa: E402

INTERPRET = os.environ["TRITON_INTERPRET"] == "1"
if type(triton.language.standard.cumsum).__name__ != ("InterpretedFunction" if INTERPRET else "JITFunction"):
    pytest.skip("triton was imported before TRITON_INTERPRET was set (tests/conftest.py sets it first); "
                "set TRITON_INTERPRET explicitly", allow_module_level=True)
DEVICE = triton_test_device()

REPO = Path(__file__).resolve().parents[1]
mlstm_run = functools.partial(kernel_checks.mlstm_run, device=DEVICE)


# ---------------------------------------------------------------------------------------------------
# mLSTM
# ---------------------------------------------------------------------------------------------------
MLSTM_CASES = {
    # name: (B, NH, S, DK, DV, problem kwargs, run kwargs)
    "ragged_reset_state": (2, 2, 37, 8, 24, {}, {}),
    "floor_active": (2, 2, 37, 8, 24, dict(ioff=-6.0, foff=-2.0, moff=-6.0), {}),  # max(|den|, exp(-m)) = exp(-m)
    "large_m_big_eps": (2, 2, 37, 8, 24, dict(ioff=8.0, moff=8.0), dict(eps=1e-2)),  # eps * exp(m) matters
    "no_state_no_reset": (1, 2, 48, 16, 16, dict(state=False, reset_p=0.0), {}),
    "short_seq": (1, 2, 5, 16, 16, dict(reset_p=0.0), {}),
    "reset_at_t0": (1, 2, 20, 16, 16, dict(reset_at=(0, 9)), {}),  # the initial state is dropped: zero grads
    "multi_tile_heads": (1, 1, 20, 72, 80, dict(reset_p=0.05), {}),  # 2 x 2 tiles of 64 under the interpreter
    "chunk32": (1, 2, 45, 16, 32, dict(reset_p=0.1), dict(chunk_size=32)),
}


@pytest.mark.parametrize("case", list(MLSTM_CASES))
def test_mlstm_fw_bw_matches_reference(case):
    B, NH, S, DK, DV, pkw, rkw = MLSTM_CASES[case]
    xs, reset, weights = mlstm_problem(B, NH, S, DK, DV, **pkw)
    final = case != "short_seq"  # one case without the final state (only h carries gradient)
    ref_o, ref_g = mlstm_run(parallel_ref, xs, reset, weights, dtype=F64, final=final, **rkw)
    tri_o, tri_g = mlstm_run(chunkwise_triton.mlstm_chunkwise_triton, xs, reset, weights, dtype=torch.float32,
                             final=final, **rkw)
    t32_o, t32_g = mlstm_run(mlstm_chunkwise, xs, reset, weights, dtype=torch.float32, final=final, **rkw)
    out_names = ["h", "C", "n", "m"]
    grad_names = ["dq", "dk", "dv", "di", "df", "dC0", "dn0", "dm0"]
    report = []
    # forward: official-test tolerances against fp64
    for name, a, b in zip(out_names, tri_o, ref_o):
        assert a.dtype == torch.float32
        torch.testing.assert_close(a.to(F64), b, atol=1e-4, rtol=1e-3, msg=lambda m: f"{case} {name}: {m}")
        report.append(f"{name} {rel_err(a, b):.1e}")
    for name, a, b, c in zip(grad_names, tri_g, ref_g, t32_g):
        err, err32 = rel_err(a, b), rel_err(c, b)
        report.append(f"{name} {err:.1e} (torch32 {err32:.1e})")
        assert err < 1e-4, f"{case} {name}: relative max error {err:.2e} (fp32 torch: {err32:.2e})"
    print(f"\n[mlstm fp32 vs fp64, rel. max err] {case}: " + ", ".join(report))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_mlstm_half_inputs(dtype):
    xs, reset, weights = mlstm_problem(2, 2, 37, 16, 32)
    xs = [x.to(dtype).float() if j < 3 else x for j, x in enumerate(xs)]  # the reference sees the rounded inputs
    ref_o, ref_g = mlstm_run(parallel_ref, xs, reset, weights, dtype=F64, final=True)
    tri_o, tri_g = mlstm_run(chunkwise_triton.mlstm_chunkwise_triton, xs, reset, weights, dtype=dtype, final=True)
    assert tri_o[0].dtype == dtype and tri_g[0].dtype == dtype and tri_o[1].dtype == torch.float32
    tol = 3e-2 if dtype == torch.bfloat16 else 5e-3
    report = []
    for name, a, b in zip(["h", "C", "n", "m", "dq", "dk", "dv", "di", "df", "dC0", "dn0", "dm0"], tri_o + tri_g,
                          ref_o + ref_g):
        err = rel_err(a, b)
        report.append(f"{name} {err:.1e}")
        assert err < tol, f"{dtype} {name}: {err:.2e}"
    print(f"\n[mlstm {dtype} vs fp64] " + ", ".join(report))


# TMA tile loads (tensor descriptors, the default on Hopper): the cases whose layouts TMA takes (rows of 16-byte
# multiples), fp32 and bf16, ragged S, resets inside and on chunk edges, head dims that do not fill a tile
TMA_CASES = {"ragged_reset_state": torch.float32, "multi_tile_heads": torch.float32, "chunk32": torch.float32,
             "reset_at_t0": torch.float32, "ragged_reset_state-bf16": torch.bfloat16,
             "chunk32-fp16": torch.float16}  # fp16: fp32 per-chunk states behind fp16 token tiles


@pytest.mark.parametrize("case", list(TMA_CASES))
def test_mlstm_tma_tiles_match_pointer_tiles_and_fp64(case, monkeypatch):
    """With the same tiles the tensor-descriptor path computes bit for bit what the pointer path computes
    (zero-filled outside the tensor by the copy engine instead of by masks; stores clipped at S and the head
    dims), and matches the fp64 reference. Under the interpreter (fixed tiles) the descriptors are emulated
    and the two paths must be bit-identical; on a GPU (TRITON_INTERPRET=0: the real copies) the two paths are
    autotuned separately and may pick different tiles, i.e. another fp32 summation order, so there they are
    compared within a few roundings."""
    dtype = TMA_CASES[case]
    B, NH, S, DK, DV, pkw, rkw = MLSTM_CASES[case.split("-")[0]]
    xs, reset, weights = mlstm_problem(B, NH, S, DK, DV, **pkw)
    if dtype != torch.float32:
        xs = [x.to(dtype).float() if j < 3 else x for j, x in enumerate(xs)]  # the reference sees rounded inputs
    launches = []
    sources = chunkwise_triton._sources

    def spy(tma, meta, **tensors):
        out = sources(tma, meta, **tensors)
        launches.append((tma, [type(x).__name__ for x in out]))
        return out

    monkeypatch.setattr(chunkwise_triton, "_sources", spy)
    runs = {}
    for tma in (False, True):
        monkeypatch.setattr(chunkwise_triton, "TMA_LOADS", tma)
        launches.clear()
        runs[tma] = mlstm_run(chunkwise_triton.mlstm_chunkwise_triton, xs, reset, weights, dtype=dtype, **rkw)
        # forward (states, outputs) + backward (recomputed states, dC recurrence, dq / dk, dv): six launches
        assert len(launches) == 6 and all(t == tma for t, _ in launches), launches
        assert all(set(kinds) == {"TensorDescriptor" if tma else "Tensor"} for _, kinds in launches), launches
    for a, b in zip(runs[False][0] + runs[False][1], runs[True][0] + runs[True][1]):
        if INTERPRET:
            assert torch.equal(a, b)
        else:
            assert rel_err(a, b) < {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1e-2}[dtype]
    ref_o, ref_g = mlstm_run(parallel_ref, xs, reset, weights, dtype=F64, **rkw)
    tol = {torch.float32: 1e-4, torch.float16: 5e-3, torch.bfloat16: 3e-2}[dtype]
    for name, a, b in zip(["h", "C", "n", "m", "dq", "dk", "dv", "di", "df", "dC0", "dn0", "dm0"],
                          runs[True][0] + runs[True][1], ref_o + ref_g):
        assert rel_err(a, b) < tol, f"{case} {name}: {rel_err(a, b):.2e}"


def test_mlstm_tma_only_where_the_layout_allows(monkeypatch):
    """TMA needs 16-byte aligned bases and rows and at most 256 rows per box: anything else (and
    XLSTM_MLSTM_TMA=0, and TMA_LOADS=False) runs the pointer loads."""
    monkeypatch.setattr(chunkwise_triton, "TMA_LOADS", True)
    use = chunkwise_triton._use_tma
    x = torch.zeros(2, 3, 40, 16, dtype=torch.bfloat16)
    assert use(64, x, x.float())
    assert not use(64, torch.zeros(2, 3, 40, 20, dtype=torch.bfloat16))  # rows of 40 bytes
    assert use(64, torch.zeros(2, 3, 40, 20, dtype=torch.float32))  # rows of 80 bytes
    buf = torch.zeros(2 * 3 * 40 * 16 + 1, dtype=torch.bfloat16)
    assert not use(64, buf[1:].view(2, 3, 40, 16))  # base 2 bytes past an aligned address
    assert not use(64, x.transpose(2, 3))  # not contiguous
    assert not use(512, x)  # a chunk of 512 rows is more than one box
    assert not use(64, torch.zeros(0, 3, 40, 16, dtype=torch.bfloat16))  # no descriptor for an empty tensor
    q0 = torch.zeros(0, 2, 8, 16, device=DEVICE)
    assert chunkwise_triton.mlstm_chunkwise_triton(q0, q0, q0, q0[..., 0], q0[..., 0], chunk_size=16).shape == q0.shape
    monkeypatch.setenv("XLSTM_MLSTM_TMA", "0")
    assert not use(64, x)
    monkeypatch.delenv("XLSTM_MLSTM_TMA")
    monkeypatch.setattr(chunkwise_triton, "TMA_LOADS", None)  # the default: Hopper GPUs only
    assert use(64, x) == (x.device.type == "cuda" and torch.cuda.get_device_capability()[0] >= 9)
    assert not use(64, x.float())  # fp32 inputs (the exact-reference dtype) keep the pointer loads by default
    # the forward of a layout TMA cannot take still runs (pointer loads) and matches the TMA-free run
    monkeypatch.setattr(chunkwise_triton, "TMA_LOADS", True)
    xs, reset, weights = mlstm_problem(1, 2, 21, 16, 20, reset_p=0.0)
    h_auto = mlstm_run(chunkwise_triton.mlstm_chunkwise_triton, xs, reset, weights, dtype=torch.bfloat16)[0]
    monkeypatch.setattr(chunkwise_triton, "TMA_LOADS", False)
    h_ptr = mlstm_run(chunkwise_triton.mlstm_chunkwise_triton, xs, reset, weights, dtype=torch.bfloat16)[0]
    assert all(torch.equal(a, b) for a, b in zip(h_auto, h_ptr))


class _EmptySpy:
    """Stands in for ``torch`` inside chunkwise_triton (monkeypatched there): every ``torch.empty`` of the module
    is recorded as (shape, dtype, weak reference); everything else is torch's own."""

    def __init__(self):
        self.allocs = []

    def __getattr__(self, name):
        return getattr(torch, name)

    def empty(self, *shape, **kwargs):
        t = torch.empty(*shape, **kwargs)
        self.allocs.append((tuple(t.shape), t.dtype, weakref.ref(t)))
        return t

    def dtypes(self, shape):
        return [dt for sh, dt, _ in self.allocs if sh == shape]

    def live_bytes(self, shapes):
        return sum(t.nbytes for sh, _, ref in self.allocs if sh in shapes and (t := ref()) is not None)


def test_mlstm_bf16_states_change_only_the_carried_decay_gradient(monkeypatch):
    """bf16 inputs keep the per-chunk states C_all / dC_all in bf16 (``chunkwise_triton.state_dtype``). Their
    readers feed them to mm, which rounds its operands to bf16 anyway, except the fp32 sum of C_c * dC_{c+1}
    in _bw_dqk (the gradient through the carried state's decay): h, the final state and dq, dk, dv, dC0, dn0
    are bit-identical to forced fp32 states, di / df / dm0 differ by the rounding of that sum. The returned
    final C and dC0 are fp32 buffers of their own, never rounded to bf16."""
    B, NH, S, DK, DV, L = 2, 2, 37, 16, 32, 16
    NC = -(-S // L)
    xs, reset, weights = mlstm_problem(B, NH, S, DK, DV)
    xs = [x.to(torch.bfloat16).float() if j < 3 else x for j, x in enumerate(xs)]  # the reference sees these
    ref_o, ref_g = mlstm_run(parallel_ref, xs, reset, weights, dtype=F64, final=True)
    runs = {}
    for fp32_states in (True, False):
        spy = _EmptySpy()
        monkeypatch.setattr(chunkwise_triton, "FP32_STATES", fp32_states)
        monkeypatch.setattr(chunkwise_triton, "torch", spy)
        out, grads = mlstm_run(chunkwise_triton.mlstm_chunkwise_triton, xs, reset, weights, dtype=torch.bfloat16,
                               final=True, chunk_size=L)
        monkeypatch.setattr(chunkwise_triton, "torch", torch)
        # C_all in the forward and again in the backward (recomputed), then dC_all; the final C / dC0 buffers
        assert spy.dtypes((B * NH, NC, DK, DV)) == [torch.float32 if fp32_states else torch.bfloat16] * 3
        assert spy.dtypes((B * NH, DK, DV)) == [torch.float32] * 3
        runs[fp32_states] = out + grads
    names = ["h", "C", "n", "m", "dq", "dk", "dv", "di", "df", "dC0", "dn0", "dm0"]
    # bit-identical where the tiles are fixed (the interpreter, or no autotuning: tiles set the summation order)
    exact = INTERPRET or os.environ.get("XLSTM_TRITON_AUTOTUNE") == "0"
    report = []
    for name, a16, a32, ref in zip(names, runs[False], runs[True], ref_o + ref_g):
        diff = rel_err(a16, a32.to(F64))
        report.append(f"{name} {diff:.1e} (vs fp64 {rel_err(a16, ref):.1e} / {rel_err(a32, ref):.1e})")
        if name in ("di", "df", "dm0"):
            assert diff < 2e-2 and rel_err(a16, ref) < 3e-2, f"{name}: {diff:.2e} from fp32 states"
        elif exact:
            assert torch.equal(a16, a32), f"{name}: {diff:.2e} from fp32 states"
        else:
            assert diff < 1e-2, f"{name}: {diff:.2e} from fp32 states"
    C, dC0 = runs[False][1], runs[False][9]
    for name, x in (("C", C), ("dC0", dC0)):
        rounded = torch.equal(x, x.to(torch.bfloat16).float())
        assert x.dtype == torch.float32 and not rounded, f"{name}: {x.dtype}, rounded to bf16: {rounded}"
    print("\n[mlstm bf16 inputs: bf16 vs fp32 states, rel. max diff (vs fp64: bf16 / fp32 states)] "
          + ", ".join(report))


def test_mlstm_fp16_large_normaliser_ratio():
    """fp16 inputs where 1/denominator reaches ~1e6 (tiny q.k, large input gate so the exp(-m) floor is
    below eps): dh / denom is far beyond fp16's 65504, so no fp32 intermediate may be rounded to fp16
    before a matmul (the kernels use tf32 products for fp16 inputs: fp16's precision, fp32's range)."""
    xs, reset, weights = mlstm_problem(1, 2, 37, 16, 32, ioff=16.0, state=False)
    xs[0], xs[1] = xs[0] * 1e-3, xs[1] * 1e-3
    xs = [x.to(torch.float16).float() for x in xs]  # the reference sees the rounded inputs
    ref_o, ref_g = mlstm_run(parallel_ref, xs, reset, weights, dtype=F64, final=True)
    rden_max = 1.0 / (1e-6 + torch.einsum("bhsd,bhsd->bhs", xs[0], xs[1]).abs().min().item() / 4)
    assert rden_max > 1e5  # the regime the test is about (diagonal term alone; the row sums are similar)
    tri_o, tri_g = mlstm_run(chunkwise_triton.mlstm_chunkwise_triton, xs, reset, weights, dtype=torch.float16,
                             final=True)
    report = []
    for name, a, b in zip(["h", "C", "n", "m", "dq", "dk", "dv", "di", "df"], tri_o + tri_g, ref_o + ref_g):
        assert torch.isfinite(a).all(), f"fp16 {name}: not finite"
        err = rel_err(a, b)
        report.append(f"{name} {err:.1e}")
        assert err < 5e-3, f"fp16 {name}: {err:.2e}"
    print("\n[mlstm fp16, 1/denom up to ~1e6, vs fp64] " + ", ".join(report))


def test_mlstm_state_passing_and_grad_through_carried_state():
    """Two halves with the state carried equal one pass, forward and backward (incl. the carried m)."""
    xs, reset, _ = mlstm_problem(1, 2, 40, 16, 16, reset_p=0.05)
    full = [x.clone().requires_grad_() for x in xs]
    h, (C, n, m) = chunkwise_triton.mlstm_chunkwise_triton(*full[:5], initial_state=tuple(full[5:]), reset=reset,
                                                            return_final_state=True, chunk_size=16)
    split = [x.clone().requires_grad_() for x in xs]
    cut = 19
    part = lambda x, a, b: x[:, :, a:b]  # noqa: E731
    h1, st = chunkwise_triton.mlstm_chunkwise_triton(*(part(x, 0, cut) for x in split[:5]),
                                                     initial_state=tuple(split[5:]), reset=reset[:, :cut],
                                                     return_final_state=True, chunk_size=16)
    h2, (C2, n2, m2) = chunkwise_triton.mlstm_chunkwise_triton(*(part(x, cut, None) for x in split[:5]),
                                                               initial_state=st, reset=reset[:, cut:],
                                                               return_final_state=True, chunk_size=16)
    torch.testing.assert_close(torch.cat([h1, h2], 2), h, atol=1e-5, rtol=1e-4)
    for a, b in ((C2, C), (n2, n), (m2, m)):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    g = torch.Generator().manual_seed(5)
    w = torch.randn(h.shape, generator=g)
    wm = torch.randn(m.shape, generator=g)
    gf = torch.autograd.grad((h * w).sum() + (m * wm).sum() + C.sum(), full)
    gs = torch.autograd.grad((torch.cat([h1, h2], 2) * w).sum() + (m2 * wm).sum() + C2.sum(), split)
    for a, b in zip(gs, gf):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-3)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_mlstm_states_recomputed_in_backward_save_the_predicted_bytes(monkeypatch, dtype):
    """The per-chunk states are not kept for the backward (recomputed from the initial state, here the caller's
    own tensors): the saved bytes drop by exactly the states (C before each of the NC chunks, in ``state_dtype``:
    bf16 for bf16 inputs; n, m before each chunk and after the last, fp32), as the memory model counts them
    (``kernel_states.mlstm_triton_chunk_states``), and the gradients are bit-identical. While ``_bw_dqk`` runs,
    the live state buffers (recomputed states, dC_all, dn_all, dC0) are ``mlstm_triton_backward_states``."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools" / "bench"))
    from activation_memory import saved_activation_bytes

    B, NH, S, DK, DV, L = 1, 2, 70, 32, 16, 16
    H, NC = B * NH, -(-S // L)
    a = torch.finfo(dtype).bits // 8
    xs, reset, _ = mlstm_problem(B, NH, S, DK, DV)
    dev = triton_test_device()
    spy = _EmptySpy()
    live = {}
    bw_dqk = chunkwise_triton._bw_dqk

    class _Launch:  # records the live state buffers when _bw_dqk is launched
        def __getitem__(self, grid):
            def launch(*args, **kwargs):
                live["bytes"] = spy.live_bytes({(H, NC, DK, DV), (H, DK, DV), (H, NC + 1, DK), (H, NC + 1)})
                return bw_dqk[grid](*args, **kwargs)
            return launch

    monkeypatch.setattr(chunkwise_triton, "_bw_dqk", _Launch())

    def run(recompute):
        monkeypatch.setattr(chunkwise_triton, "RECOMPUTE_STATES_IN_BACKWARD", recompute)
        leaves = [x.to(dev, dtype if j < 3 else torch.float32).requires_grad_() for j, x in enumerate(xs)]
        out = {}

        def fwd():
            out["h"], out["st"] = chunkwise_triton.mlstm_chunkwise_triton(
                *leaves[:5], initial_state=tuple(leaves[5:]), reset=reset.to(dev), return_final_state=True,
                chunk_size=L)
        monkeypatch.setattr(chunkwise_triton, "torch", spy)
        saved = saved_activation_bytes(fwd)
        spy.allocs.clear()  # from here on: the backward's buffers
        loss = (out["h"].float() * 1.3).sum() + out["st"][0].sum() + out["st"][1].sum() + out["st"][2].sum()
        grads = torch.autograd.grad(loss, leaves)
        monkeypatch.setattr(chunkwise_triton, "torch", torch)
        return saved, grads

    saved_all, grads_all = run(False)
    live.clear()
    saved_recompute, grads_recompute = run(True)
    state_bytes = {torch.float32: 4, torch.bfloat16: 2}[dtype]
    states = H * (NC * DK * DV * state_bytes + (NC + 1) * (DK + 1) * 4)
    assert kernel_states.mlstm_triton_chunk_states(H, NC, DK, DV, a) == states
    assert saved_all - saved_recompute == states, (saved_all, saved_recompute, states)
    grad_bytes = H * (NC * DK * DV * state_bytes + (NC + 1) * DK * 4 + DK * DV * 4)  # dC_all, dn_all, dC0
    assert kernel_states.mlstm_triton_backward_states(H, NC, DK, DV, a) == states + grad_bytes
    assert live["bytes"] == states + grad_bytes, (live["bytes"], states + grad_bytes)
    for g_all, g_recompute in zip(grads_all, grads_recompute):
        assert torch.equal(g_all, g_recompute)


def test_autotune_bypassed_under_interpreter_and_pruning():
    from triton.runtime.autotuner import Autotuner

    from xlstm_kernels.triton_utils import prune_head_blocks

    kernels = [chunkwise_triton._fw_recurrent, chunkwise_triton._fw_output, chunkwise_triton._bw_recurrent,
               chunkwise_triton._bw_dqk, chunkwise_triton._bw_dv, recurrent_triton._slstm_fw, recurrent_triton._slstm_bw,
               recurrent_triton._slstm_fw_blocked, recurrent_triton._slstm_bw_blocked]
    assert all(isinstance(k, Autotuner) != INTERPRET for k in kernels)
    small = prune_head_blocks(chunkwise_triton._PAR_CONFIGS, {}, DHQK=16, DHV=16)
    assert small and all(c.kwargs["BK"] <= 32 and c.kwargs["BV"] <= 32 for c in small)
    big = prune_head_blocks(chunkwise_triton._PAR_CONFIGS, {"DHQK": 256}, DHV=512)
    assert len(big) == len(chunkwise_triton._PAR_CONFIGS)


def test_mlstm_backend_dispatch_and_signature():
    torch_sig = inspect.signature(xlstm_kernels.MLSTM_BACKENDS["torch"])
    triton_sig = inspect.signature(xlstm_kernels.MLSTM_BACKENDS["triton"])
    assert list(torch_sig.parameters) == list(triton_sig.parameters)
    assert {k: p.default for k, p in torch_sig.parameters.items()} == {
        k: p.default for k, p in triton_sig.parameters.items()}
    xs, reset, _ = mlstm_problem(1, 2, 21, 16, 16)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the real kernels pass their self-check: no warning
        h, st = xlstm_kernels.mlstm(*xs[:5], backend="triton", initial_state=tuple(xs[5:]), reset=reset,
                                    return_final_state=True, chunk_size=16)
    assert selfcheck.result("mlstm_chunkwise", "cpu" if INTERPRET else str(h.device), torch.float32,
                            DK=16, DV=16, chunk_size=16) is None
    ref, ref_st = mlstm_chunkwise(*xs[:5], initial_state=tuple(xs[5:]), reset=reset, return_final_state=True)
    torch.testing.assert_close(h, ref, atol=1e-4, rtol=1e-3)
    with pytest.raises(ValueError, match="chunkwise"):
        xlstm_kernels.mlstm(*xs[:5], backend="triton", form="parallel")
    # fp64 goes to the torch reference
    x64 = [x.double() for x in xs[:5]]
    torch.testing.assert_close(xlstm_kernels.mlstm(*x64, backend="triton"), mlstm_chunkwise(*x64))


# ---------------------------------------------------------------------------------------------------
# sLSTM
# ---------------------------------------------------------------------------------------------------
def slstm_problem(B, S, NH, DH, *, reset_p=0.1, state=True, seed=1):
    g = torch.Generator().manual_seed(seed)
    xs = [torch.randn(B, S, 4, NH, DH, generator=g), torch.randn(4, NH, DH, DH, generator=g) * 0.3 / DH**0.5,
          torch.randn(4, NH, DH, generator=g)]
    if state:
        xs += [torch.randn(B, NH, DH, generator=g), torch.randn(B, NH, DH, generator=g),
               torch.rand(B, NH, DH, generator=g) + 0.5, torch.randn(B, NH, DH, generator=g)]
    reset = (torch.rand(B, S, generator=g) < reset_p) if reset_p > 0 else None
    weights = [torch.randn(B, S, NH, DH, generator=g, dtype=F64)] + [
        torch.randn(B, NH, DH, generator=g, dtype=F64) for _ in range(3)]
    return xs, reset, weights


def slstm_run(fn, xs, reset, weights, *, dtype):
    xs = [x.to(DEVICE, dtype if (j < 3 or dtype == F64) else torch.float32).requires_grad_() for j, x in enumerate(xs)]
    state = tuple(xs[3:]) if len(xs) > 3 else None
    rs = None if reset is None else reset.to(DEVICE)
    y, st = fn(xs[0], xs[1], xs[2], initial_state=state, reset=rs, return_final_state=True)
    outs = [y, *st]
    loss = sum((o.to(F64) * w.to(DEVICE)).sum() for o, w in zip(outs[:4], weights))
    return outs, list(torch.autograd.grad(loss, xs))


SLSTM_CASES = {
    "reset_state_B3": (3, 33, 2, 16, {}),
    "no_state_no_reset_DH8": (2, 20, 2, 8, dict(state=False, reset_p=0.0)),
    "DH80_blocked": (2, 12, 1, 80, {}),  # DH > 64: column-blocked kernels (3 blocks of 32 under the interpreter)
}


@pytest.mark.parametrize("case", list(SLSTM_CASES))
def test_slstm_fw_bw_matches_reference(case, monkeypatch):
    monkeypatch.setattr(recurrent_triton, "SPLIT_OVERRIDE", False)  # the register / blocked kernels (GPU too)
    B, S, NH, DH, pkw = SLSTM_CASES[case]
    xs, reset, weights = slstm_problem(B, S, NH, DH, **pkw)
    ref_o, ref_g = slstm_run(slstm_recurrent, xs, reset, weights, dtype=F64)
    tri_o, tri_g = slstm_run(recurrent_triton.slstm_recurrent_triton, xs, reset, weights, dtype=torch.float32)
    t32_o, t32_g = slstm_run(slstm_recurrent, xs, reset, weights, dtype=torch.float32)
    report = []
    for name, a, b in zip(["y", "y_N", "c_N", "n_N", "m_N"], tri_o, ref_o):
        torch.testing.assert_close(a.to(F64), b, atol=1e-4, rtol=1e-3, msg=lambda m: f"{case} {name}: {m}")
        report.append(f"{name} {rel_err(a, b):.1e}")
    assert not tri_o[4].requires_grad  # m carries no gradient, as in the reference
    names = ["dwx", "dR", "db", "dy0", "dc0", "dn0", "dm0"]
    for name, a, b, c in zip(names, tri_g, ref_g, t32_g):
        if b.abs().max() == 0:  # e.g. dm0 with a zero initial state
            assert a.abs().max() == 0, f"{case} {name} should be zero"
            continue
        err, err32 = rel_err(a, b), rel_err(c, b)
        report.append(f"{name} {err:.1e} (torch32 {err32:.1e})")
        assert err < 1e-4, f"{case} {name}: relative max error {err:.2e} (fp32 torch: {err32:.2e})"
    print(f"\n[slstm fp32 vs fp64, rel. max err] {case}: " + ", ".join(report))


@pytest.mark.parametrize("dtype,DH", [(torch.bfloat16, 16), (torch.bfloat16, 80), (torch.float16, 16),
                                      (torch.float16, 80)])
def test_slstm_half_inputs(dtype, DH, monkeypatch):
    """bf16: bf16 tensor-core products; fp16: tf32 products (see triton_utils.mm)."""
    monkeypatch.setattr(recurrent_triton, "SPLIT_OVERRIDE", False)
    xs, reset, weights = slstm_problem(2, 20 if DH < 64 else 10, 2 if DH < 64 else 1, DH)
    xs = [x.to(dtype).float() if j < 3 else x for j, x in enumerate(xs)]
    ref_o, ref_g = slstm_run(slstm_recurrent, xs, reset, weights, dtype=F64)
    tri_o, tri_g = slstm_run(recurrent_triton.slstm_recurrent_triton, xs, reset, weights, dtype=dtype)
    assert tri_o[0].dtype == dtype and tri_g[1].dtype == dtype and tri_o[1].dtype == torch.float32
    report = slstm_errors_within(tri_o + tri_g, ref_o + ref_g, 3e-2 if dtype == torch.bfloat16 else 5e-3, dtype)
    print(f"\n[slstm {dtype} vs fp64, DH={DH}] {report}")


def slstm_errors_within(got, ref, tol, label):
    """Relative max error of each sLSTM output and gradient against the reference, each < tol; the report."""
    report = []
    for name, a, b in zip(["y", "y_N", "c_N", "n_N", "m_N", "dwx", "dR", "db", "dy0", "dc0", "dn0", "dm0"], got, ref):
        err = rel_err(a, b)
        report.append(f"{name} {err:.1e}")
        assert err < tol, f"{label} {name}: relative max error {err:.2e}"
    return ", ".join(report)


# split kernels: (B, S, NH, DH, plan (BN, R resident), dtype). DH 80 is 3 column programs at BN 32 (the last
# one ragged), 5 at BN 16; B 17 is two batch tiles (two barrier groups per head on a GPU).
SLSTM_SPLIT_CASES = {
    "BN32_resident": (3, 9, 2, 80, (32, True), torch.float32),
    "BN32_reread": (3, 9, 2, 80, (32, False), torch.float32),
    "BN16_two_batch_tiles": (17, 6, 1, 80, (16, True), torch.float32),
    "BN16_bf16": (3, 9, 2, 80, (16, True), torch.bfloat16),
    "BN16_fp16": (3, 9, 2, 80, (16, True), torch.float16),
    # one program per head: one launch for all steps under the interpreter too (the GPU's code path: state
    # carried across steps in registers, both backward phases in one launch; no barrier with one program)
    "one_launch_resident": (3, 9, 2, 32, (32, True), torch.float32),
    "one_launch_reread": (3, 9, 2, 32, (32, False), torch.float32),
}


@pytest.mark.parametrize("case", list(SLSTM_SPLIT_CASES))
def test_slstm_split_kernels_match_reference(case, monkeypatch):
    """A head's columns over several programs: under the interpreter a launch per step (per backward phase),
    on a GPU one launch with the group barrier; resets, initial state and every gradient against fp64."""
    B, S, NH, DH, plan, dtype = SLSTM_SPLIT_CASES[case]
    monkeypatch.setattr(recurrent_triton, "SPLIT_OVERRIDE", plan)
    monkeypatch.setattr(recurrent_triton, "SPLIT_BK", 32)  # two row blocks of the re-read product at DH 80
    launches = collections.Counter()

    class Counted:  # counts the launches of a kernel
        def __init__(self, name):
            self.name, self.kernel = name, getattr(recurrent_triton, name)

        def __getitem__(self, grid):
            launches[self.name] += 1
            return self.kernel[grid]

    for name in ("_slstm_fw_split", "_slstm_bw_split"):
        monkeypatch.setattr(recurrent_triton, name, Counted(name))
    xs, reset, weights = slstm_problem(B, S, NH, DH)
    if dtype != torch.float32:
        xs = [x.to(dtype).float() if j < 3 else x for j, x in enumerate(xs)]
    ref_o, ref_g = slstm_run(slstm_recurrent, xs, reset, weights, dtype=F64)
    tri_o, tri_g = slstm_run(recurrent_triton.slstm_recurrent_triton, xs, reset, weights, dtype=dtype)
    tol = {torch.float32: 1e-4, torch.bfloat16: 3e-2, torch.float16: 5e-3}[dtype]
    report = slstm_errors_within(tri_o + tri_g, ref_o + ref_g, tol, case)
    one_launch = not INTERPRET or -(-DH // plan[0]) == 1
    assert launches == {"_slstm_fw_split": 1 if one_launch else S, "_slstm_bw_split": 1 if one_launch else 2 * S}
    print(f"\n[slstm split {case} vs fp64] {report}")


def test_slstm_split_plan():
    """Every shipped run (micro-batch <= 16: one batch tile, 4 heads) gets BN 16 with R on chip on a 132-SM GPU
    (the tile the sm_90 compile check asserts spill-free); larger grids take wider blocks, then none."""
    from xlstm_kernels.slstm.recurrent_triton import split_plan

    for B, DH in ((8, 192), (4, 256), (2, 384), (2, 512)):
        assert split_plan(B, 4, DH, 132, 2) == (16, True)
    assert split_plan(8, 4, 512, 132, 4) == (16, True)  # fp32: 4 x 512 x 16 x 4 B = 128 KiB, still on chip
    assert split_plan(32, 4, 512, 132, 2) == (32, True)  # 2 tiles x 4 heads x 32 = 256 > 132; at BN 32: 128
    assert split_plan(64, 4, 512, 132, 2) == (64, False)  # 4 x 4 x 8 = 128 programs; a 256 KiB slice: re-read
    assert split_plan(128, 4, 512, 132, 2) is None  # the blocked kernel already has 32 programs
    assert split_plan(8, 4, 16, 132, 2) is None  # one block is the whole head
    assert split_plan(8, 4, 64, 132, 2) == (16, True)


def test_slstm_split_launch_on_a_gpu_is_cooperative(monkeypatch):
    """On a GPU the one-launch split kernels (programs meeting at a spin barrier every step) are launched
    cooperatively: the driver runs the whole grid at once or refuses it, instead of leaving programs that
    kernels on other streams (NCCL) crowd out unscheduled while the rest spin. Grids over the SM count are
    refused before launch, naming the fix."""
    import types

    from triton.backends.nvidia.compiler import CUDAOptions

    assert "launch_cooperative_grid" in CUDAOptions.__dataclass_fields__  # the launch option Triton passes on
    monkeypatch.setattr(recurrent_triton, "INTERPRET", False)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda dev: types.SimpleNamespace(multi_processor_count=132))
    grid, kw, one_launch = recurrent_triton._split_launch("cuda", 8, 4, 192, (16, True))
    assert grid == (1, 4, 12) and one_launch and kw["launch_cooperative_grid"] is True and kw["num_stages"] == 1
    grid, kw, one_launch = recurrent_triton._split_launch("cuda", 8, 4, 16, (16, True))  # one program per group
    assert grid[2] == 1 and one_launch and "launch_cooperative_grid" not in kw
    with pytest.raises(ValueError, match="132 SMs.*XLSTM_SLSTM_SPLIT=0"):
        recurrent_triton._split_launch("cuda", 64, 4, 512, (16, True))  # 4 x 4 x 32 = 512 programs
    with pytest.raises(RuntimeError, match="refused the cooperative launch.*XLSTM_SLSTM_SPLIT=0"):
        with recurrent_triton._refused_launch_hint((1, 4, 12)):  # what the driver says under an MPS SM limit
            raise RuntimeError("Triton Error [CUDA]: too many blocks in cooperative launch")
    with pytest.raises(RuntimeError, match="^out of memory$"):  # other errors pass through unchanged
        with recurrent_triton._refused_launch_hint((1, 4, 12)):
            raise RuntimeError("out of memory")


def test_slstm_backend_dispatch_and_signature():
    torch_sig = inspect.signature(xlstm_kernels.SLSTM_BACKENDS["torch"])
    triton_sig = inspect.signature(xlstm_kernels.SLSTM_BACKENDS["triton"])
    assert list(torch_sig.parameters) == list(triton_sig.parameters)
    xs, reset, _ = slstm_problem(2, 9, 2, 16)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        y = xlstm_kernels.slstm(*xs[:3], backend="triton", initial_state=tuple(xs[3:]), reset=reset)
    torch.testing.assert_close(y, slstm_recurrent(*xs[:3], initial_state=tuple(xs[3:]), reset=reset),
                               atol=1e-5, rtol=1e-4)


# ---------------------------------------------------------------------------------------------------
# self-check fallback
# ---------------------------------------------------------------------------------------------------
def _wrong_mlstm(q, k, v, i, f, **kwargs):
    out = mlstm_chunkwise(q, k, v, i, f, **kwargs)
    if isinstance(out, tuple):
        return out[0] * 1.5, out[1]
    return out * 1.5


def test_selfcheck_probes_the_callers_head_dims_and_chunk_size():
    """The dispatch checks the kernel at the shapes the model uses (multi-tile paths included), once each."""
    xs, reset, _ = mlstm_problem(1, 1, 21, 32, 16)
    xlstm_kernels.mlstm(*xs[:5], backend="triton", reset=reset, chunk_size=16)
    dev = "cpu" if INTERPRET else str(xs[0].device)
    assert selfcheck.result("mlstm_chunkwise", dev, torch.float32, DK=32, DV=16, chunk_size=16) is None
    assert len(selfcheck.results()) == 1


def test_selfcheck_falls_back_and_warns_once(monkeypatch):
    monkeypatch.setattr(chunkwise_triton, "mlstm_chunkwise_triton", _wrong_mlstm)
    xs, reset, _ = mlstm_problem(1, 2, 21, 16, 16)
    ref = mlstm_chunkwise(*xs[:5], reset=reset)
    with pytest.warns(RuntimeWarning, match="failed its self-check"):
        h = xlstm_kernels.mlstm(*xs[:5], backend="triton", reset=reset)
    torch.testing.assert_close(h, ref)  # the torch fallback, not the wrong kernel
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once per (kernel, device, dtype)
        h = xlstm_kernels.mlstm(*xs[:5], backend="triton", reset=reset)
    torch.testing.assert_close(h, ref)
    assert "relative max error" in selfcheck.result("mlstm_chunkwise", "cpu" if INTERPRET else "cuda:0",
                                                    torch.float32, DK=16, DV=16, chunk_size=64)


def test_selfcheck_raise_and_off_modes(monkeypatch):
    monkeypatch.setattr(chunkwise_triton, "mlstm_chunkwise_triton", _wrong_mlstm)
    xs, reset, _ = mlstm_problem(1, 2, 21, 16, 16)
    ref = mlstm_chunkwise(*xs[:5], reset=reset)
    monkeypatch.setenv("XLSTM_KERNEL_SELFCHECK", "raise")
    with pytest.raises(selfcheck.KernelSelfCheckError, match="mlstm_chunkwise"):
        xlstm_kernels.mlstm(*xs[:5], backend="triton", reset=reset)
    monkeypatch.setenv("XLSTM_KERNEL_SELFCHECK", "off")  # no check: the (wrong) kernel runs
    torch.testing.assert_close(xlstm_kernels.mlstm(*xs[:5], backend="triton", reset=reset), ref * 1.5)
    selfcheck.set_mode("raise")  # the function overrides the env var
    with pytest.raises(selfcheck.KernelSelfCheckError):
        xlstm_kernels.mlstm(*xs[:5], backend="triton", reset=reset)
    with pytest.raises(ValueError):
        selfcheck.set_mode("sometimes")


def test_selfcheck_slstm_fallback(monkeypatch):
    def wrong(wx, R, b, **kwargs):
        return slstm_recurrent(wx, R, b * 2, **kwargs)

    monkeypatch.setattr(recurrent_triton, "slstm_recurrent_triton", wrong)
    xs, reset, _ = slstm_problem(2, 9, 2, 16)
    with pytest.warns(RuntimeWarning, match="slstm_recurrent"):
        y = xlstm_kernels.slstm(*xs[:3], backend="triton", reset=reset)
    torch.testing.assert_close(y, slstm_recurrent(*xs[:3], reset=reset))


def test_import_without_triton_falls_back():
    code = ("import sys, warnings, torch; sys.modules['triton'] = None\n"
            "import xlstm_kernels\n"
            "q = torch.randn(1, 2, 7, 8)\n"
            "with warnings.catch_warnings(record=True) as w:\n"
            "    warnings.simplefilter('always')\n"
            "    h = xlstm_kernels.mlstm(q, q, q, q[..., 0], q[..., 0], backend='triton')\n"
            "assert torch.equal(h, xlstm_kernels.mlstm(q, q, q, q[..., 0], q[..., 0]))\n"
            "assert any('self-check' in str(x.message) for x in w), [str(x.message) for x in w]\n"
            "print('ok')\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr[-2000:]


# ---------------------------------------------------------------------------------------------------
# benchmark script
# ---------------------------------------------------------------------------------------------------
def _aot_check(*flags, timeout):
    """Run ``tools/bench/kernels.py --aot-check *flags`` (sm_90 compiles, no GPU): (bench module, completed
    process, {row label: dict(dtype, smem, regs, stack, status)}); skips without triton's CUDA toolchain."""
    try:
        from triton.backends.compiler import GPUTarget  # noqa: F401
        from triton.backends.nvidia import compiler  # noqa: F401
    except Exception as e:  # noqa: BLE001
        pytest.skip(f"triton has no CUDA backend here: {e}")
    if not (Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump").exists():
        pytest.skip("triton's bundled cuobjdump is missing: no register / spill report")
    # by path, under its own name: "kernels" may already name the repository's kernels/ package here
    script = REPO / "tools" / "bench" / "kernels.py"
    spec = importlib.util.spec_from_file_location("bench_kernels", script)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = subprocess.run([sys.executable, str(script), "--aot-check", *flags], capture_output=True, text=True,
                         timeout=timeout, env={**os.environ, "TRITON_INTERPRET": "0", "TRITON_DEFAULT_FP_FUSION": "1"})
    print(out.stdout[-8000:])
    assert "COMPILE ERROR" not in out.stdout, out.stdout[-4000:] + out.stderr[-4000:]
    rows = {}
    row_re = re.compile(r"^\s*((?:mLSTM|sLSTM) .+?)\s+(bf16|fp16|fp32)\s+w\d+\s+(\d+)\s+(\S+)\s+(\S+)\s+(.+)$")
    for line in out.stdout.splitlines():
        if m := row_re.match(line):
            rows[m[1]] = dict(dtype=m[2], smem=int(m[3]), regs=m[4], stack=m[5], status=m[6])
    return bench, out, rows


def test_kernels_compile_for_sm90_without_gpu():
    """AOT-compile every kernel for an H100 at the shipped shapes (bf16; mLSTM chunk 64 with the 7B's and the
    paper models' head dims, with pointer and TMA tile loads, sLSTM with the paper models' head dims), each
    with its default autotune config: no register spills (cuobjdump stack bytes 0) and shared memory within the
    H100's 227 KiB. The interpreter does not catch every compile error, and a spilling kernel is a slow kernel."""
    bench, out, rows = _aot_check("--aot-quick", timeout=1200)
    names = [n for n, _ in bench._MLSTM_KERNELS]
    for lbl, dk, dv in bench.SHIPPED_MLSTM:  # every kernel at every shipped mLSTM shape was compiled, both forms
        for name in names:
            got = [k for k in rows if k.startswith(f"mLSTM {name} {lbl} L{bench.SHIPPED_CHUNK} {dk}x{dv}")]
            assert len(got) == (1 if name in ("_bw_mchain", "_bw_prep") else 2), (name, lbl, got)
    for dh in bench.SHIPPED_SLSTM_DH:  # the blocked pair and the split pair (the tile split_plan picks)
        got = sorted(k.split()[1] for k in rows if f" DH{dh} " in k)
        assert got == ["_slstm_bw_blocked", "_slstm_bw_split", "_slstm_fw_blocked", "_slstm_fw_split"], (dh, got)
    for label, r in rows.items():
        assert r["dtype"] == "bf16"
        assert r["stack"] == "0", f"{label}: {r['stack']} B of register spills (regs {r['regs']})"
        assert r["smem"] <= bench.SMEM_LIMIT, f"{label}: {r['smem']} B of shared memory"
    assert out.returncode == 0 and "FAIL (" not in out.stdout, out.stdout[-4000:] + out.stderr[-4000:]


@pytest.mark.slow
def test_every_mlstm_autotune_config_compiles_for_sm90():
    """The GPU autotuner times every config of the tiled mLSTM kernels (pointer and TMA forms) at the model's
    shape; it skips configs that run out of registers or shared memory, but a compile error ends the training
    run. Each config compiles for sm_90 at the 7B's head dims (with and without resets) and at the 125M's."""
    bench, out, rows = _aot_check("--aot-all-configs", timeout=2400)
    assert len(rows) == len(bench._config_variants()) > 200, (len(rows), out.stdout[-2000:])
    assert sum(" TMA" in k for k in rows) > 80
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]


def test_bench_script_cpu_smoke():
    script = REPO / "tools" / "bench" / "kernels.py"
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    out = subprocess.run([sys.executable, str(script), "--cpu-smoke"], capture_output=True, text=True, timeout=300,
                         env=env)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert "PASS" in out.stdout and "FAIL" not in out.stdout, out.stdout[-3000:]
