"""Building a tensor-parallel model from the meta device (parallel/materialize.py): every rank gets
exactly its slice of the plain model built from the same seed, and never holds the full model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass

import pytest
import torch

from xlstm_pretrain.model import build_model
from xlstm_pretrain.model.config import ModelConfig
from xlstm_pretrain.parallel import ParallelState, build_sharded_model, parallelize_model
from xlstm_pretrain.parallel.layers import shard_tensor


@dataclass
class RankView(ParallelState):
    """A ParallelState that only answers "which TP rank am I" (building needs no communication)."""
    rank: int = 0

    @property
    def tp_rank(self) -> int:
        return self.rank


def rank_view(tp: int, rank: int, sp: bool = False) -> RankView:
    return RankView(tp=tp, cp=1, dp=1, sequence_parallel=sp, mesh=None, rank=rank)


def tiny(family, **kw):
    base = dict(family=family, vocab_size=64, embedding_dim=64, num_blocks=3, num_heads=4, chunk_size=8)
    if family == "paper":
        base["slstm_at"] = [1]
    base.update(kw)
    return ModelConfig(**base)


@pytest.mark.parametrize("family, tied", [("paper", False), ("paper", True), ("large", False)])
def test_each_rank_holds_exactly_its_slice_of_the_plain_model(family, tied):
    cfg = tiny(family, tie_embeddings=tied)
    torch.manual_seed(7)
    full = build_model(cfg)
    full_sd = full.state_dict()
    tp = 4
    for rank in range(tp):
        torch.manual_seed(7)
        model = build_sharded_model(cfg, rank_view(tp, rank), "cpu")
        # the reference: the old way, parallelise a fully built model
        torch.manual_seed(7)
        ref = parallelize_model(build_model(cfg), rank_view(tp, rank))
        params = dict(model.named_parameters(remove_duplicate=False))
        ref_params = dict(ref.named_parameters(remove_duplicate=False))
        assert params.keys() == ref_params.keys() == full_sd.keys()
        for name, p in params.items():
            assert torch.equal(p, ref_params[name]), name
            want = full_sd[name]
            if getattr(p, "tensor_model_parallel", False):
                want = shard_tensor(want, p.partition_dim, p.partition_chunks, rank, tp)
            assert torch.equal(p, want), name
        if tied:
            assert model.lm_head.weight is model.embedding.weight


def test_plain_build_draws_no_random_numbers_at_construction():
    """Values depend only on the seed and init_units() order: building twice, or building another model
    first, gives the same weights (no construction-time draws)."""
    cfg = tiny("paper")
    torch.manual_seed(3)
    a = build_model(cfg).state_dict()
    torch.manual_seed(3)
    with torch.device("meta"):
        build_model(tiny("large"))  # a meta build consumes nothing
    b = build_model(cfg).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


_PEAK = """
import json, sys, torch
from xlstm_pretrain.model.config import ModelConfig
from xlstm_pretrain.model import build_model
from xlstm_pretrain.parallel import build_sharded_model
sys.path.insert(0, {tests!r})
from test_sharded_build import rank_view
cfg = ModelConfig(family="large", vocab_size=256, embedding_dim=1024, num_blocks=12, num_heads=4)
# warm up: the first ops load libraries and allocator arenas (~200 MB of RSS, once per process)
build_sharded_model(ModelConfig(family="large", vocab_size=256, embedding_dim=64, num_blocks=1, num_heads=4),
                    rank_view(4, 1), "cpu")
build_model(ModelConfig(family="large", vocab_size=256, embedding_dim=64, num_blocks=1, num_heads=4))
def status_kib(field):
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1])
try:  # reset the high-water mark to the current RSS (Linux >= 4.0), so the peak below is this build's
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
except OSError:
    pass
base = status_kib("VmRSS")
if {tp} == 0:
    model = build_model(cfg)
else:
    model = build_sharded_model(cfg, rank_view({tp}, 1), "cpu")
peak = status_kib("VmHWM")
held = sum(p.numel() * p.element_size() for p in {{id(p): p for p in model.parameters()}}.values())
print(json.dumps({{"peak_kib": peak - base, "held_bytes": held}}))
"""


def _peak(tp: int) -> dict:
    code = _PEAK.format(tests=os.path.dirname(__file__), tp=tp)
    # large allocations straight from mmap, so freed full units leave RSS at once
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MALLOC_MMAP_THRESHOLD_": "65536"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_peak_host_memory_of_a_sharded_build_is_about_one_over_tp():
    full, sharded = _peak(0), _peak(4)
    full_bytes = full["held_bytes"]  # ~ 12 blocks x 12.6M fp32 params: ~600 MB
    assert sharded["held_bytes"] * 4 == pytest.approx(full_bytes, rel=0.02)
    # peak RSS growth: the full build holds every weight; the sharded one its quarter + one full block
    assert full["peak_kib"] * 1024 >= 0.9 * full_bytes
    one_block = full_bytes / 12
    assert sharded["peak_kib"] * 1024 <= full_bytes / 4 + 2 * one_block + 16 * 2**20, (full, sharded)


def test_sequence_parallel_gradient_hooks_survive_materialisation(monkeypatch):
    """Norm weights under SP carry a hook that sums their gradient over TP; it is registered on the meta
    parameter and must still fire once the parameter has memory."""
    import xlstm_pretrain.parallel.layers as layers

    fired = []

    def recording_hook(group, comm=None):
        def hook(grad):
            fired.append(grad.shape)
            return grad
        return hook

    monkeypatch.setattr(layers, "all_reduce_grad_hook", recording_hook)
    model = build_sharded_model(tiny("paper"), rank_view(2, 0, sp=True), "cpu")
    sp_params = [p for p in model.parameters() if getattr(p, "sequence_parallel", False)]
    assert sp_params
    sum(p.sum() for p in sp_params).backward()
    assert len(fired) == len(sp_params)
