"""Build a tensor-parallel model without ever holding the full one.

The plain model's structure is built on the meta device, parallelised there (shapes become the local
shards, hooks and partition attributes are attached), and only then given memory: a meta copy of the
plain model is initialised one unit at a time in ``xLSTMLM.init_units()`` order (the same random
stream as a plain build), each full unit is sliced into this rank's parameters and freed again. Peak
memory is this rank's shards plus the largest full unit (a block, or the embedding), ~1/TP of the full
model, and the weights are exactly those of ``build_model`` sliced (the TP=N model holds the TP=1
weights). Context parallelism adds no parameters; ZeRO-3 partitions the result when DeepSpeed wraps it.
"""

from __future__ import annotations

import copy

import torch

from xlstm_pretrain.model.config import ModelConfig
from xlstm_pretrain.model.lm import swap_parameter_, xLSTMLM

from .layers import shard_tensor
from .plan import apply_context_parallel, parallelize_model
from .state import ParallelState


def build_sharded_model(cfg: ModelConfig, state: ParallelState, device) -> xLSTMLM:
    """This rank's TP (and CP) model on ``device``, initialised from the current random state exactly as
    ``build_model(cfg)`` followed by ``parallelize_model`` would be."""
    with torch.device("meta"):
        model = xLSTMLM(cfg)
    # full-size structure of every unit (meta: free); a copy, because the parallel model keeps the modules the
    # plan leaves alone (all of them at TP=1), and the full units are freed again below
    plain = copy.deepcopy(model)
    model = apply_context_parallel(parallelize_model(model, state), state)
    local = dict(model.named_parameters(remove_duplicate=False))
    for name, init in plain.init_units():
        unit = plain.get_submodule(name)
        for p in unit.parameters():
            swap_parameter_(p, torch.empty_like(p, device=device))
        init(unit)
        for pname, full in unit.named_parameters():
            dst = local[f"{name}.{pname}"]
            data = full.detach()
            if getattr(dst, "tensor_model_parallel", False):
                data = shard_tensor(data, dst.partition_dim, dst.partition_chunks, state.tp_rank, state.tp)
            if tuple(data.shape) != tuple(dst.shape):
                raise RuntimeError(f"{name}.{pname}: local shape {tuple(dst.shape)}, slice {tuple(data.shape)}")
            swap_parameter_(dst, data.clone())
        for p in unit.parameters():  # free the full unit again
            swap_parameter_(p, torch.empty_like(p, device="meta"))
    left = [n for n, p in model.named_parameters() if p.is_meta]
    if left:
        raise RuntimeError(f"parameters not covered by init_units(): {left[:5]}")
    return model
