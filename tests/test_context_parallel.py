"""Context parallelism: CP=2, CP=4 and CP=2 x TP=2 (+SP) against one process (gloo, 4 ranks), with
documents starting on, just before and just after shard edges; communication volume per layer."""

import pytest

from dist_utils import run_distributed
from tp_workers import assert_cp_matches_single_process, cp_equivalence, tiny_config
from xlstm_pretrain.config_loader import ConfigError
from xlstm_pretrain.parallel import ParallelConfig, check_layout

# (family, tp, cp, sequence_parallel, backend, activation checkpointing)
CP_CASES = [(f, 1, cp, False, "torch", False) for f in ("paper", "large") for cp in (2, 4)]
CP_CASES += [(f, 2, 2, sp, "torch", False) for f in ("paper", "large") for sp in (False, True)]
CP_CASES += [("paper", 1, 2, False, "triton", False)]  # Triton mLSTM + sLSTM kernels (interpreter on CPU)
# every block recomputed in backward: the CP messages are replayed, not resent
CP_CASES += [("paper", 1, 4, False, "torch", True), ("paper", 2, 2, True, "torch", True),
             ("large", 1, 2, False, "torch", True)]
# shards that are not whole chunks (chunk_size 8): S = 60 at CP=4 (15 tokens each), 36 at CP=2 x TP=2 + SP
CP_CASES += [("paper", 1, 4, False, "torch", False, 60), ("large", 1, 4, False, "torch", False, 60),
             ("paper", 2, 2, True, "torch", False, 36)]
# sLSTM heads that do not divide by CP (2 heads, CP=4): the state relay instead of the head all-to-all
RELAY = ("paper", 1, 4, False, "torch", False, 64, (("slstm_num_heads", 2),))
CP_CASES += [RELAY]


@pytest.fixture(scope="module")
def cp_results():
    return run_distributed(cp_equivalence, 4, CP_CASES)[0]


def _case_id(c):
    extra = "".join(f"-S{x}" if isinstance(x, int) else "-" + "-".join(f"{k}{v}" for k, v in x) for x in c[6:])
    return f"{c[0]}-tp{c[1]}-cp{c[2]}-{'sp' if c[3] else 'nosp'}-{c[4]}" + ("-recompute" if c[5] else "") + extra


@pytest.mark.parametrize("case", CP_CASES, ids=_case_id)
def test_cp_matches_single_process(cp_results, case):
    # every gradient to 2e-5 of its own scale (worst seen: 4.3e-6 of the norm, a large-family gate bias at TP2 x CP2)
    assert_cp_matches_single_process(cp_results[case])


def test_cp_communication_volume_is_the_analytic_minimum(cp_results):
    """Per rank and forward: one summary all-gather per mLSTM layer of B*NH*(DHQK*DHV + DHQK + 2) floats,
    plus a conv halo of B*(K-1)*C floats per conv; the sLSTM layer switches layout with one all-to-all of
    its gate inputs (B*S/cp*4*d floats) and one of its outputs (B*S/cp*d), plus the (B, S/cp) reset mask;
    with heads that do not divide, one sLSTM state (4*B*d floats) is sent on instead."""
    cfg = tiny_config("paper")  # blocks: mLSTM, sLSTM, mLSTM
    B, NH, K, S = 2, cfg.num_heads, cfg.conv1d_kernel_size, 64
    D, d = cfg.mlstm_inner_dim, cfg.embedding_dim
    DH = D // NH
    summaries = 2 * B * NH * (DH * DH + DH + 2)
    halos = 2 * B * (K - 1) * D + B * (K - 1) * d
    sent = cp_results[("paper", 1, 2, False, "torch", False)]["fwd_bytes"]
    assert sent["all_gather_stack"] == 4 * (summaries + halos)
    S_loc = S // 2
    assert sent["sequence_to_heads"] == 4 * B * S_loc * 4 * d
    assert sent["heads_to_sequence"] == 4 * B * S_loc * d
    assert sent["gather_sequence_mask"] == B * S_loc
    assert "send_state" not in sent
    relay = cp_results[RELAY]["fwd_bytes"]
    assert relay["send_state"] == 4 * (4 * B * d) and "sequence_to_heads" not in relay


def test_cp_layout_errors_are_clear():
    cfg = tiny_config("paper")
    with pytest.raises(ConfigError, match="sequence length 50 is not divisible by context_parallel=4"):
        check_layout(cfg, ParallelConfig(context_parallel=4), world_size=4, seq_len=50)
    with pytest.raises(ConfigError, match="shorter than the causal conv's halo of 3 tokens"):
        check_layout(cfg, ParallelConfig(context_parallel=4), world_size=4, seq_len=8)
    check_layout(cfg, ParallelConfig(context_parallel=4), world_size=4, seq_len=60)  # 15 tokens: ragged chunks
