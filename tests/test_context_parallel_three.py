"""Context parallelism at CP=3 (3 gloo ranks) against one process: the sLSTM layout switch (sequence
shards -> head shards; 3 sLSTM heads), the state relay where the heads do not divide (4 heads), the large
family, and ragged shards under activation checkpointing. Same checks as tests/test_context_parallel.py."""

import pytest

from dist_utils import run_distributed
from tp_workers import assert_cp_matches_single_process, cp_equivalence

THREE_HEADS = (("embedding_dim", 48), ("slstm_num_heads", 3))  # 48 = 4 mLSTM heads of 12 = 3 sLSTM heads of 16
# (family, tp, cp, sequence_parallel, backend, activation checkpointing, S, model overrides)
SWITCH = ("paper", 1, 3, False, "torch", False, 72, THREE_HEADS)  # 24 tokens per shard: 3 chunks of 8
RELAY = ("paper", 1, 3, False, "torch", False, 72, ())  # 4 sLSTM heads do not divide by 3
CASES = [SWITCH, RELAY, ("large", 1, 3, False, "torch", False, 72, ()),
         ("paper", 1, 3, False, "torch", True, 66, THREE_HEADS)]  # 22 tokens per shard: a ragged chunk


@pytest.fixture(scope="module")
def results():
    return run_distributed(cp_equivalence, 3, CASES)[0]


@pytest.mark.parametrize("case", CASES, ids=["switch", "relay", "large", "switch-recompute-S66"])
def test_cp3_matches_single_process(results, case):
    assert_cp_matches_single_process(results[case])


def test_cp3_slstm_layout_follows_the_heads(results):
    """3 heads: all-to-all to head shards, no state relay; 4 heads: the relay, no all-to-all."""
    switch, relay = results[SWITCH]["fwd_bytes"], results[RELAY]["fwd_bytes"]
    assert "sequence_to_heads" in switch and "send_state" not in switch, switch
    assert "send_state" in relay and "sequence_to_heads" not in relay, relay
