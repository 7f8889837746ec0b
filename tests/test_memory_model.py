"""The memory model (xlstm_pretrain/memory/) against measurements at reduced shapes on the CPU.

Activations: the predicted saved-tensor bytes (per part: blocks, or checkpointed block inputs + one block's
recompute; embedding, logits and loss) against the bytes the saved-tensor hooks count in a real forward +
loss (tools/bench/activation_memory.py), within 10 %, for both families, the torch backend in every precision
with and without activation checkpointing, and the Triton and FLA kernels (under TRITON_INTERPRET=1 on CPU;
a default-tier case each, every case in the slow tier); and per rank under TP, TP + SP and CP (2 gloo ranks). A
mismatch names the (family, backend, precision, AC) case; the per-tensor terms are in
xlstm_pretrain/memory/kernel_states.py and activations.py.
"""

import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tools", "bench"))

from activation_memory import compare, saved_activation_bytes, small_model  # noqa: E402

from xlstm_pretrain.memory.model_states import ParamCounts, model_state_bytes  # noqa: E402
from xlstm_pretrain.model import build_model  # noqa: E402

TOLERANCE = 0.10


def _check(rows, case):
    bad = [f"{part}: predicted {p:,.0f} measured {m:,.0f} ({p / m:.3f})" for part, p, m in rows
           if m and abs(p / m - 1) > TOLERANCE]
    assert not bad, f"{case}: " + "; ".join(bad)


@pytest.mark.parametrize("family", ["paper", "large"])
@pytest.mark.parametrize("precision", ["fp32", "bf16", "bf16-params"])
@pytest.mark.parametrize("ac", [False, True], ids=["no_ac", "ac"])
def test_torch_backend_activations_match_saved_tensors(family, precision, ac):
    _check(compare(family, "torch", precision, ac), (family, "torch", precision, ac))


@pytest.mark.parametrize("family", ["paper", "large"])
def test_torch_backend_without_document_resets(family):
    """The conv without resets saves its padded input (F.conv1d) instead of the per-tap masked inputs."""
    _check(compare(family, "torch", "bf16", False, reset=False), (family, "torch", "bf16", "no resets"))


def _needs_triton():
    if os.environ.get("TRITON_INTERPRET") != "1" and not torch.cuda.is_available():
        pytest.skip("the Triton kernels need CUDA or TRITON_INTERPRET=1")
    pytest.importorskip("triton")


@pytest.mark.parametrize("family,precision,ac", [("paper", "bf16", False), ("large", "fp32", True)])
def test_triton_backend_activations_match_saved_tensors(family, precision, ac):
    """Triton mLSTM / sLSTM kernels (their save_for_backward: per-chunk fp32 states, per-step sLSTM states)."""
    _needs_triton()
    _check(compare(family, "triton", precision, ac), (family, "triton", precision, ac))


@pytest.mark.slow
@pytest.mark.parametrize("family", ["paper", "large"])
@pytest.mark.parametrize("precision", ["fp32", "bf16", "bf16-params"])
@pytest.mark.parametrize("ac", [False, True], ids=["no_ac", "ac"])
def test_triton_backend_every_case(family, precision, ac):
    _needs_triton()
    _check(compare(family, "triton", precision, ac), (family, "triton", precision, ac))


@pytest.mark.parametrize("family,precision,ac", [("paper", "fp32", False)])
def test_fla_backend_activations_match_saved_tensors(family, precision, ac):
    """FLA's chunk_simple_gla (saves its inputs, recomputes chunk states) and our fp64 stabiliser bookkeeping."""
    _needs_triton()
    pytest.importorskip("fla")
    _check(compare(family, "fla", precision, ac), (family, "fla", precision, ac))


@pytest.mark.slow
@pytest.mark.parametrize("family", ["paper", "large"])
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("ac", [False, True], ids=["no_ac", "ac"])
def test_fla_backend_every_case(family, precision, ac):
    _needs_triton()
    pytest.importorskip("fla")
    _check(compare(family, "fla", precision, ac), (family, "fla", precision, ac))


def test_sharded_layouts_match_saved_tensors_per_rank():
    """TP (with and without SP) and CP shard what each rank saves: 2 gloo ranks, every rank within 10 %."""
    sys.path.insert(0, os.path.dirname(__file__))
    from dist_utils import run_distributed
    from activation_memory import measure_sharded_blocks

    for family in ("paper", "large"):
        per_rank = run_distributed(measure_sharded_blocks, 2, family, [(2, False, 1), (2, True, 1), (1, False, 2)])
        for rank, rows in enumerate(per_rank):
            for (tp, sp, cp), p, m in rows:
                _check([("blocks", p, m)], (family, f"rank {rank}", f"TP={tp}", f"SP={sp}", f"CP={cp}"))


def test_saved_activation_bytes_skips_parameters_and_their_views():
    """A linear saves its weight (a parameter) through a transposed view: not an activation."""
    lin = torch.nn.Linear(8, 16, bias=False)
    x = torch.randn(4, 8, requires_grad=True)  # a leaf input: not counted either
    assert saved_activation_bytes(lin, x) == 0
    assert saved_activation_bytes(lambda t: lin(t * 2.0), x) == 4 * 8 * 4  # the product is


@pytest.mark.parametrize("family", ["paper", "large"])
def test_weights_and_optimizer_bytes_match_a_built_model(family):
    """fp32 parameters: 4 bytes each as built; AdamW states after a step: 8 bytes each (+ 4 master copy)."""
    cfg = small_model(family, "torch")
    model = build_model(cfg)
    param_bytes = sum({id(p): p.numel() * p.element_size() for p in model.parameters()}.values())
    opt = torch.optim.AdamW(model.parameters())
    model(torch.randint(0, cfg.vocab_size, (1, 16))).float().sum().backward()
    opt.step()
    adam_bytes = sum(t.numel() * t.element_size() for s in opt.state.values() for k, t in s.items() if k != "step")
    pred = model_state_bytes(ParamCounts.of(cfg), "fp32", 1, tp=1, dp=1)
    assert pred["weights"] == param_bytes
    assert pred["gradients"] == sum(p.grad.numel() * p.grad.element_size() for p in model.parameters())
    assert pred["optimizer states"] == adam_bytes + param_bytes  # the fp32 partition copy DeepSpeed keeps
    sharded = model_state_bytes(ParamCounts.of(cfg), "fp32", 3, tp=1, dp=4)
    assert sharded["weights"] == param_bytes / 4 and sharded["optimizer states"] == (adam_bytes + param_bytes) / 4
