"""The kernel layer's single places: the chunk-length rule (kernels/chunking.py) that the torch
reference, the FLA backend, the Triton kernel and the FLOP count share, and the backend registry /
selection (kernels/dispatch.py) behind the ``xlstm_kernels`` façade."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import xlstm_kernels
from xlstm_kernels.chunking import TL_DOT_MIN_CHUNK, ChunkPlan, chunk_plan
from xlstm_pretrain.flops import chunk_size_used, mlstm_cell_chunkwise

# ---- the chunk rule ---------------------------------------------------------------------------------


@pytest.mark.parametrize("S, chunk_size, min_len, want", [
    (4096, 64, 1, ChunkPlan(64, 64, 64)),  # whole chunks
    (100, 64, 1, ChunkPlan(64, 2, 36)),  # ragged last chunk
    (20, 64, 1, ChunkPlan(32, 1, 20)),  # no chunk longer than the sequence rounded up to a power of two
    (19, 4, 1, ChunkPlan(4, 5, 3)),
    (1, 64, 1, ChunkPlan(1, 1, 1)),
    (5, 64, TL_DOT_MIN_CHUNK, ChunkPlan(16, 1, 5)),  # tl.dot floor
    (40, 8, TL_DOT_MIN_CHUNK, ChunkPlan(16, 3, 8)),  # the floor wins over a smaller chunk_size
    (0, 64, 1, ChunkPlan(1, 0, 0)),
])
def test_chunk_plan(S, chunk_size, min_len, want):
    plan = chunk_plan(S, chunk_size, min_len)
    assert plan == want
    assert plan.count * plan.length - plan.pad == S


@pytest.mark.parametrize("chunk_size", [0, -4, 48])
def test_chunk_size_must_be_a_power_of_two(chunk_size):
    with pytest.raises(ValueError, match="power of two"):
        chunk_plan(64, chunk_size)
    q = torch.zeros(1, 1, 8, 4)
    with pytest.raises(ValueError, match="power of two"):
        xlstm_kernels.mlstm_chunkwise(q, q, q, q[..., 0], q[..., 0], chunk_size=chunk_size)


@pytest.mark.parametrize("S, chunk_size", [(20, 64), (40, 16), (37, 8), (64, 16)])
def test_flop_count_uses_the_chunks_the_torch_kernel_cuts(S, chunk_size):
    """The FLOP module's cell matmuls equal what FlopCounterMode sees the torch chunkwise kernel do,
    padded last chunk included: fails if flops.py and the kernel chunk differently."""
    B, NH, DK, DV = 1, 2, 8, 12
    g = torch.Generator().manual_seed(0)
    q, k = (torch.randn(B, NH, S, DK, generator=g) for _ in range(2))
    v = torch.randn(B, NH, S, DV, generator=g)
    i, f = (torch.randn(B, NH, S, generator=g) for _ in range(2))
    with FlopCounterMode(display=False) as counter:
        xlstm_kernels.mlstm_chunkwise(q, k, v, i, f, chunk_size=chunk_size)
    analytic = mlstm_cell_chunkwise(NH, DK, DV, chunk_size, S).matmul * S * B
    assert counter.get_total_flops() == pytest.approx(analytic, rel=1e-9)
    assert chunk_size_used(chunk_size, S) == chunk_plan(S, chunk_size).length


def test_fla_runs_the_chunks_of_the_shared_rule(monkeypatch):
    """The FLA backend hands FLA the chunk length of chunk_plan with the tl.dot floor (FLA itself is not
    run: a stand-in records the call), and refuses chunk sizes FLA cannot run."""
    from xlstm_kernels.mlstm import fla as fla_mod

    seen = []

    class Recorded(Exception):
        pass

    def record(q, k, v, g, **kwargs):
        seen.append(kwargs["chunk_size"])
        raise Recorded

    monkeypatch.setattr(fla_mod, "_chunk_simple_gla", record)
    for S, chunk_size in [(300, 128), (21, 64), (5, 16), (100, 32)]:
        q = torch.randn(1, 1, S, 16)
        with pytest.raises(Recorded):
            fla_mod.mlstm_fla(q, q, q, q[..., 0], q[..., 0], chunk_size=chunk_size)
        assert seen[-1] == chunk_plan(S, chunk_size, TL_DOT_MIN_CHUNK).length
    with pytest.raises(ValueError, match="chunk_size=256 is not supported"):
        fla_mod.mlstm_fla(q, q, q, q[..., 0], q[..., 0], chunk_size=256)


def test_triton_kernel_uses_the_shared_rule(monkeypatch):
    """Our Triton mLSTM takes its chunk length from chunk_plan with the tl.dot floor (a spy on the call; the
    kernel runs on a tiny problem, under the interpreter on a CPU machine)."""
    pytest.importorskip("triton")
    import os

    from xlstm_kernels.mlstm import chunkwise_triton

    device = "cpu" if os.environ.get("TRITON_INTERPRET", "0") == "1" else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("TRITON_INTERPRET=0 and no CUDA device")
    plans = []

    def spy(seq_len, chunk_size, min_len=1):
        plans.append(((seq_len, chunk_size, min_len), chunk_plan(seq_len, chunk_size, min_len)))
        return plans[-1][1]

    monkeypatch.setattr(chunkwise_triton, "chunk_plan", spy)
    q = torch.randn(1, 1, 21, 16, device=device)
    h = chunkwise_triton.mlstm_chunkwise_triton(q, q, q, q[..., 0], q[..., 0], chunk_size=64)
    assert plans and plans[0][0] == (21, 64, TL_DOT_MIN_CHUNK) and plans[0][1].length == 32
    torch.testing.assert_close(h, xlstm_kernels.mlstm_chunkwise(q, q, q, q[..., 0], q[..., 0]), atol=1e-4, rtol=1e-3)


# ---- the registry -----------------------------------------------------------------------------------


def test_every_registered_backend_has_the_reference_signatures():
    import inspect

    def params(fn):
        return [(p.name, p.kind, p.default) for p in inspect.signature(fn).parameters.values()]

    assert set(xlstm_kernels.MLSTM_BACKENDS) == set(xlstm_kernels.SLSTM_BACKENDS) >= {"torch", "triton"}
    for name in xlstm_kernels.MLSTM_BACKENDS:
        assert params(xlstm_kernels.MLSTM_BACKENDS[name]) == params(xlstm_kernels.MLSTM_BACKENDS["torch"]), name
        assert params(xlstm_kernels.SLSTM_BACKENDS[name]) == params(xlstm_kernels.SLSTM_BACKENDS["torch"]), name
    assert set(xlstm_kernels.MLSTM_BACKENDS).isdisjoint(xlstm_kernels.MISSING_BACKENDS)


def test_facade_and_registry_share_their_objects():
    """xlstm_kernels re-exports the registry's own dicts (a monkeypatched entry is seen by the dispatch)."""
    from xlstm_kernels import dispatch

    for name in ("MLSTM_BACKENDS", "SLSTM_BACKENDS", "MISSING_BACKENDS", "AUTO_CUDA_ORDER", "mlstm", "slstm",
                 "resolve_backend"):
        assert getattr(xlstm_kernels, name) is getattr(dispatch, name), name


def test_register_backend_and_auto_order(monkeypatch):
    from xlstm_kernels import dispatch

    calls = []

    def mlstm_probe(q, k, v, i, f, *, initial_state=None, reset=None, return_final_state=False, eps=1e-6,
                    chunk_size=64, form="chunkwise"):
        calls.append(chunk_size)
        return dispatch.MLSTM_BACKENDS["torch"](q, k, v, i, f, chunk_size=chunk_size)

    assert dispatch.register_backend("probe", mlstm_probe, dispatch.SLSTM_BACKENDS["torch"],
                                     info=dispatch.BackendInfo(chunk_sizes=(32,)))
    assert not dispatch.register_backend("absent", mlstm_probe, mlstm_probe, requires=("no_such_module_xyz",),
                                         install_hint="pip install absent")
    try:
        assert "absent" not in xlstm_kernels.MLSTM_BACKENDS
        with pytest.raises(ValueError, match="pip install absent"):
            xlstm_kernels.mlstm(*(torch.zeros(1, 1, 4, 4),) * 3, torch.zeros(1, 1, 4), torch.zeros(1, 1, 4),
                                backend="absent")
        q = torch.randn(1, 1, 8, 4)
        xlstm_kernels.mlstm(q, q, q, q[..., 0], q[..., 0], backend="probe", chunk_size=32)
        assert calls == [32]
        monkeypatch.setattr(dispatch, "AUTO_CUDA_ORDER", ("absent", "probe", "torch"))
        real_find_spec = dispatch.importlib.util.find_spec
        monkeypatch.setattr(dispatch.importlib.util, "find_spec",  # as if triton were installed
                            lambda name, *a: object() if name == "triton" else real_find_spec(name, *a))
        name, why = xlstm_kernels.resolve_backend("auto", "cuda", chunk_size=32)
        assert name == "probe" and "pip install absent" in why
        name, why = xlstm_kernels.resolve_backend("auto", "cuda", chunk_size=64)  # probe cannot run 64
        assert name == "torch" and "probe: chunk_size 64" in why
    finally:
        for d in (dispatch.MLSTM_BACKENDS, dispatch.SLSTM_BACKENDS, dispatch.MISSING_BACKENDS, dispatch.BACKEND_INFO):
            for key in ("probe", "absent"):
                d.pop(key, None)


def test_model_uses_the_kernels_through_the_facade_only():
    """xlstm_pretrain never imports a kernels/ submodule: the public xlstm_kernels names are its API."""
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "xlstm_pretrain"
    offenders = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("xlstm_kernels."):
                offenders.append(f"{path.relative_to(root)}:{node.lineno} from {node.module}")
            if isinstance(node, ast.ImportFrom) and node.module == "xlstm_kernels":
                private = [a.name for a in node.names if a.name.startswith("_")]
                offenders += [f"{path.relative_to(root)}:{node.lineno} {n}" for n in private]
            if isinstance(node, ast.Import):
                offenders += [f"{path.relative_to(root)}:{node.lineno} import {a.name}" for a in node.names
                              if a.name.startswith("xlstm_kernels.")]
    assert offenders == []


def test_flash_linear_attention_is_imported_in_one_place():
    """Only kernels/fla_runtime.py imports (and may patch) flash-linear-attention; everything else goes through
    xlstm_kernels.import_fla."""
    import ast
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    offenders = []
    for path in sorted([*(repo / "kernels").rglob("*.py"), *(repo / "xlstm_pretrain").rglob("*.py")]):
        if path == repo / "kernels" / "fla_runtime.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
            offenders += [f"{path.relative_to(repo)}:{node.lineno} {n}" for n in names
                          if n == "fla" or n.startswith("fla.")]
    assert offenders == []
