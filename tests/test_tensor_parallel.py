"""Tensor parallelism (+ Megatron SP) and DeepSpeed ZeRO 1/2/3 (with TP x DP and CP x DP) against
single-process runs (gloo, 4 ranks)."""

import pytest
import torch

from dist_utils import run_distributed
from tp_workers import GRAD_RTOL, gradient_errors, tiny_config, tp_equivalence, zero_cases
from xlstm_pretrain.config_loader import ConfigError
from xlstm_pretrain.parallel import ParallelConfig, check_layout

TP_CASES = [(family, tp, sp) for family in ("paper", "large") for tp in (2, 4) for sp in (False, True)]


def test_gradient_errors_are_relative_to_each_tensor():
    """A 1 % error on a gradient of scale 2e-4 (a gate) fails the check; dividing by max(1, max|g|) would
    have let it through as 2e-6."""
    ref = {"gate": torch.full((4,), 2e-4), "embedding": torch.ones(4), "unused": torch.zeros(4)}
    got = {"gate": ref["gate"] * 1.01, "embedding": ref["embedding"] + 1e-6, "unused": torch.zeros(4)}
    errors = gradient_errors(got, ref)
    assert errors["gate"]["rel_norm"] == pytest.approx(0.01, rel=1e-3) and errors["gate"]["rel_max"] > GRAD_RTOL
    assert errors["embedding"]["rel_norm"] < GRAD_RTOL and errors["unused"]["rel_max"] == 0.0
    got["unused"] = torch.full((4,), 1e-30)  # a gradient where the reference has none is an error
    assert gradient_errors(got, ref)["unused"]["rel_norm"] > GRAD_RTOL


@pytest.fixture(scope="module")
def tp_results():
    return run_distributed(tp_equivalence, 4, TP_CASES)[0]


@pytest.mark.parametrize("case", TP_CASES, ids=lambda c: f"{c[0]}-tp{c[1]}-{'sp' if c[2] else 'nosp'}")
def test_tp_matches_single_process(tp_results, case):
    r = tp_results[case]
    assert r["logits"] < 1e-5 and r["loss"] < 1e-5
    # per tensor, relative to its own scale (worst seen: 3.7e-6 of the norm, a large-family gate bias at TP4 + SP)
    assert r["grad_rel_norm"] < GRAD_RTOL, f"gradient of {r['worst_grad_rel_norm']}: {r['grad_rel_norm']:.2e}"
    assert r["grad_rel_max"] < GRAD_RTOL, f"gradient of {r['worst_grad_rel_max']}: {r['grad_rel_max']:.2e}"
    assert r["n_grads"] == r["n_ref"] and r["same_keys"]
    # checkpoints move between TP degrees without changing outputs
    assert r["ckpt_to_tp1"] < 1e-5 and r["ckpt_to_tpn"] < 1e-5
    assert r["gathered_exact"]  # (before any update: the model equals the same-seed TP=1 model bit for bit)
    sp_ops = {"gather_from_sequence", "reduce_scatter_to_sequence"}
    if case[2]:
        assert sp_ops <= set(r["collectives"]), r["collectives"]
    else:
        assert not sp_ops & set(r["collectives"]) and "reduce_from_tp" in r["collectives"]


# (family, zero stage, bf16, grad accumulation, tp, cp)
ZERO_CASES = [(family, stage, False, 1, 2, 1) for family in ("paper", "large") for stage in (1, 2, 3)]
ZERO_CASES += [("paper", 2, False, 2, 2, 1), ("paper", 2, True, 1, 2, 1), ("large", 3, True, 1, 2, 1)]
ZERO_CASES += [(family, 2, False, 1, 1, 2) for family in ("paper", "large")]  # context parallel x DP, 3 steps


@pytest.fixture(scope="module")
def zero_results():
    return run_distributed(zero_cases, 4, ZERO_CASES)[0]


@pytest.mark.parametrize("case", ZERO_CASES, ids=lambda c: f"{c[0]}-zero{c[1]}-{'bf16' if c[2] else 'fp32'}-ga{c[3]}-tp{c[4]}-cp{c[5]}")
def test_zero_tp2_dp2_matches_single_process(zero_results, case):
    r = zero_results[case]
    bf16 = case[2]
    tol_loss, tol_norm, tol_w = (2e-2, 5e-2, 5e-2) if bf16 else (1e-5, 1e-5, 1e-5)
    for a, b in zip(r["losses"], r["ref_losses"]):
        assert abs(a - b) <= tol_loss * abs(b), (r["losses"], r["ref_losses"])
    # gradient norm (for clipping) across TP shards equals the single-process norm
    for a, b in zip(r["norms"], r["ref_norms"]):
        assert abs(a - b) <= tol_norm * abs(b), (r["norms"], r["ref_norms"])
    assert r["weight_err"] < tol_w, f"{r['worst_weight']}: {r['weight_err']:.2e}"
    if not bf16:
        # what the steps changed, per tensor and relative to that change (worst seen: 3.3e-5, an sLSTM bias
        # under ZeRO-3). Not in bf16: there a gate bias of 3..6 is stored with a step of 1.6e-2 to 3e-2,
        # more than 5 AdamW steps move it, so the bf16 copies of such tensors do not change at all.
        assert r["update_rel"] < 1e-4, f"update of {r['worst_update']}: {r['update_rel']:.2e}"


def test_impossible_layouts_fail_before_any_collective():
    cfg = tiny_config("paper")
    with pytest.raises(ConfigError, match="world size 6 is not a multiple"):
        check_layout(cfg, ParallelConfig(tensor_parallel=4), world_size=6)
    with pytest.raises(ConfigError, match="num_heads=4 is not divisible by tensor_parallel=8"):
        check_layout(cfg, ParallelConfig(tensor_parallel=8), world_size=8)
    odd_vocab = tiny_config("large")
    odd_vocab.vocab_size = 50257
    with pytest.raises(ConfigError, match="vocab_size=50257 is not divisible"):
        check_layout(odd_vocab, ParallelConfig(tensor_parallel=2), world_size=2)
    with pytest.raises(ConfigError, match="sequence length 15 / context_parallel 1 is not divisible"):
        check_layout(cfg, ParallelConfig(tensor_parallel=2, sequence_parallel=True), world_size=2, seq_len=15)
    with pytest.raises(ConfigError, match="sequence_parallel=true needs tensor_parallel > 1"):
        ParallelConfig(sequence_parallel=True).validate()
