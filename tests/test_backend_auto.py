"""backend="auto" (the model default): Triton/FLA kernels on CUDA, the torch reference elsewhere; the
self-check raises on CUDA by default and names the failing kernel."""

from __future__ import annotations

import pytest
import torch

import xlstm_kernels
from xlstm_kernels import selfcheck
from xlstm_pretrain.config import load
from xlstm_pretrain.model.config import ModelConfig


def test_auto_is_the_default_of_the_model_and_of_every_shipped_run():
    assert ModelConfig().backend == "auto"
    ModelConfig().validate()
    from pathlib import Path

    runs = sorted(Path(__file__).resolve().parents[1].glob("configs/runs/*.yaml"))
    assert runs
    for path in runs:
        assert load(str(path)).model.backend == "auto", path


def test_auto_resolves_by_device():
    name, why = xlstm_kernels.resolve_backend("auto", torch.device("cpu"))
    assert name == "torch" and "cpu" in why
    name, why = xlstm_kernels.resolve_backend("auto", "cuda:0")
    assert name == next(n for n in xlstm_kernels.AUTO_CUDA_ORDER if n in xlstm_kernels.MLSTM_BACKENDS)
    assert name in ("fla", "triton") and "CUDA" in why
    # the quadratic / recurrent torch forms exist only in the reference
    assert xlstm_kernels.resolve_backend("auto", "cuda:0", form="parallel")[0] == "torch"
    # an explicit backend is taken as configured
    assert xlstm_kernels.resolve_backend("triton", "cpu") == ("triton", "configured")


def test_auto_without_fla_picks_our_triton_kernel(monkeypatch):
    monkeypatch.delitem(xlstm_kernels.MLSTM_BACKENDS, "fla", raising=False)
    monkeypatch.setitem(xlstm_kernels.MISSING_BACKENDS, "fla", "pip install flash-linear-attention")
    name, why = xlstm_kernels.resolve_backend("auto", "cuda")
    assert name == "triton" and "flash-linear-attention" in why


def test_auto_on_cpu_computes_the_torch_reference():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, 19, 8, generator=g) for _ in range(3))
    i, f = (torch.randn(1, 2, 19, generator=g) for _ in range(2))
    reset = torch.zeros(1, 19, dtype=torch.bool)
    reset[0, 7] = True
    got = xlstm_kernels.mlstm(q, k, v, i, f, backend="auto", chunk_size=4, reset=reset)
    want = xlstm_kernels.mlstm(q, k, v, i, f, backend="torch", chunk_size=4, reset=reset)
    assert torch.equal(got, want)
    wx = torch.randn(1, 5, 4, 2, 4, generator=g)
    R, b = 0.1 * torch.randn(4, 2, 4, 4, generator=g), torch.zeros(4, 2, 4)
    assert torch.equal(xlstm_kernels.slstm(wx, R, b, backend="auto"), xlstm_kernels.slstm(wx, R, b, backend="torch"))


def test_unknown_backend_is_refused_by_the_config():
    with pytest.raises(Exception, match="'auto' or one of"):
        ModelConfig(backend="cuda").validate()


def test_selfcheck_raises_by_default_on_cuda_and_warns_elsewhere(monkeypatch):
    monkeypatch.delenv(selfcheck.ENV_VAR, raising=False)
    selfcheck.set_mode(None)
    assert selfcheck.get_mode(torch.device("cuda", 0)) == "raise"
    assert selfcheck.get_mode(torch.device("cpu")) == "warn"
    monkeypatch.setenv(selfcheck.ENV_VAR, "warn")  # the documented opt-in to a fallback
    assert selfcheck.get_mode(torch.device("cuda", 0)) == "warn"


def test_selfcheck_failure_message_names_kernel_shape_and_opt_in(monkeypatch):
    monkeypatch.delenv(selfcheck.ENV_VAR, raising=False)
    selfcheck.reset()
    try:
        with pytest.raises(selfcheck.KernelSelfCheckError) as err:
            selfcheck.passes("mlstm_chunkwise", torch.device("cuda", 0), torch.bfloat16,
                             lambda device, dtype, **shape: "dq: relative max error 1e+00 > 5e-02",
                             DK=256, DV=512, chunk_size=128)
        msg = str(err.value)
        for part in ("mlstm_chunkwise", "cuda:0", "DK=256", "DV=512", "chunk_size=128", "dq: relative max error",
                     f"{selfcheck.ENV_VAR}=warn", "model.backend=torch"):
            assert part in msg, (part, msg)
    finally:
        selfcheck.reset()


def test_selfcheck_probes_each_shape_once():
    calls = []

    def probe(device, dtype, **shape):
        calls.append(shape)
        return None

    selfcheck.reset()
    try:
        for DK in (16, 32, 16):
            assert selfcheck.passes("k", torch.device("cpu"), torch.float32, probe, DK=DK, DV=16, chunk_size=64)
        assert calls == [dict(DK=16, DV=16, chunk_size=64), dict(DK=32, DV=16, chunk_size=64)]
    finally:
        selfcheck.reset()


def test_auto_skips_fla_for_a_chunk_size_it_cannot_run():
    if "fla" not in xlstm_kernels.MLSTM_BACKENDS:
        pytest.skip("flash-linear-attention not installed")
    assert xlstm_kernels.resolve_backend("auto", "cuda", chunk_size=64)[0] == "fla"
    name, why = xlstm_kernels.resolve_backend("auto", "cuda", chunk_size=256)
    assert name == "triton" and "chunk_size 256" in why
