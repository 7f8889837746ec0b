"""Layout-independent ("universal") optimizer checkpoints: resume a run on another TP / CP / DP layout,
ZeRO stage or precision.

DeepSpeed's own checkpoint files hold each rank's ZeRO partition of a TP shard, so they load only into the
layout that wrote them. Next to them every checkpoint can carry

    step_N/universal/
      index.json                   optimizer step count, the part file of every parameter, the saving layout
      part_00000.safetensors ...   per parameter, full (TP=1, unpartitioned) fp32 tensors:
                                   "<name>/fp32" (master weight), "<name>/exp_avg", "<name>/exp_avg_sq"

Saving: every rank takes part in each parameter's gathers (over the ZeRO partition, then over TP) and
parameter i is written by rank i mod world, so no rank holds more than its share. Loading: each rank reads
the parameters it holds, keeps its TP slice, and hands it to DeepSpeed's fragment API, which keeps only
its ZeRO partition; the working (bf16 or fp32) weights are set from the same master values.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.distributed as dist

from xlstm_pretrain.config import ConfigError

UNIVERSAL = "universal"
INDEX = "index.json"
STATES = ("fp32", "exp_avg", "exp_avg_sq")  # AdamW: master weight and both moments


def _inner_optimizer(engine):
    return engine.optimizer.optimizer  # the torch AdamW inside DeepSpeed's ZeRO optimizer


def _ensure_adamw_state(engine) -> None:
    """Make every AdamW state exist and be visible through DeepSpeed's per-parameter fragment API.

    Before the first step torch's AdamW has no state yet (it creates it lazily, the same zeros as here).
    DeepSpeed (0.19, ZeRO-1/2 and its bf16 optimizer) links each parameter to its slice of the AdamW state
    once, right after the first parameter group's first step, when the later groups have no state yet:
    their parameters would never see exp_avg. Linking again once every state exists fixes both."""
    inner = _inner_optimizer(engine)
    # the tensors AdamW steps: ZeRO-3 swaps its flat fp32 partitions into the groups at each step
    flat = getattr(engine.optimizer, "fp32_partitioned_groups_flat", None) or [
        p for group in inner.param_groups for p in group["params"]]
    for p in flat:
        state = inner.state[p]
        if not state:
            state.update(step=torch.tensor(0.0), exp_avg=torch.zeros_like(p), exp_avg_sq=torch.zeros_like(p))
    if hasattr(engine.optimizer, "_hp_optimizer_states_linked"):
        engine.optimizer._hp_optimizer_states_linked = False
        engine.optimizer._lazy_init_hp_params_optimizer_state()


def optimizer_step_count(engine) -> int:
    """AdamW's step counter (applied updates; its bias correction depends on it)."""
    steps = {int(s["step"]) for s in _inner_optimizer(engine).state.values() if "step" in s}
    if len(steps) > 1:
        raise RuntimeError(f"AdamW parameter groups disagree on the step count: {sorted(steps)}")
    return steps.pop() if steps else 0


def _full_over_zero(p: torch.nn.Parameter, key: str) -> torch.Tensor:
    """This TP rank's whole fp32 ``key`` of parameter ``p`` (gathered over the ZeRO partition; a collective)."""
    from deepspeed.utils import safe_get_full_fp32_param, safe_get_full_optimizer_state

    t = safe_get_full_fp32_param(p) if key == "fp32" else safe_get_full_optimizer_state(p, key)
    if t is None:
        raise RuntimeError(f"DeepSpeed holds no {key} for a parameter of shape {tuple(p.shape)} (not under ZeRO?)")
    return t.float().reshape(getattr(p, "ds_shape", p.shape))


def save_universal(engine, model, directory: Path, rank: int, world: int) -> None:
    """Write ``directory`` (all ranks call this, in the same order of parameters)."""
    from safetensors.torch import save_file

    from xlstm_pretrain.parallel import gather_full_state_dict

    directory.mkdir(parents=True, exist_ok=True)
    _ensure_adamw_state(engine)
    mine, owner = {}, {}
    for i, (name, p) in enumerate(model.named_parameters()):
        owner[name] = i % world
        for key in STATES:
            full = gather_full_state_dict(model, {name: _full_over_zero(p, key)})[name]
            if owner[name] == rank:
                mine[f"{name}/{key}"] = full.cpu().contiguous()
            del full
    save_file(mine, str(directory / f"part_{rank:05d}.safetensors"), metadata={"format": "pt"})
    if rank == 0:
        index = {"optimizer_step": optimizer_step_count(engine), "states": list(STATES),
                 "params": {name: f"part_{r:05d}.safetensors" for name, r in owner.items()}}
        (directory / INDEX).write_text(json.dumps(index, indent=1) + "\n")


def has_universal(checkpoint: Path) -> bool:
    return (checkpoint / UNIVERSAL / INDEX).is_file()


def load_universal(engine, model, directory: Path) -> None:
    """Restore master weights, working weights, AdamW moments and step count into any layout."""
    from deepspeed.utils import safe_set_full_fp32_param, safe_set_full_optimizer_state
    from safetensors import safe_open

    from xlstm_pretrain.parallel.layers import shard_tensor

    index = json.loads((directory / INDEX).read_text())
    params = dict(model.named_parameters())
    missing = sorted(set(params) - set(index["params"]))
    extra = sorted(set(index["params"]) - set(params))
    if missing or extra:
        raise ConfigError(f"{directory}: its parameters do not match the model (missing {missing[:6]}, "
                          f"unexpected {extra[:6]})")
    _ensure_adamw_state(engine)
    state = model.parallel_state
    files: dict[str, object] = {}
    for name, p in params.items():
        part = index["params"][name]
        if part not in files:
            files[part] = safe_open(str(directory / part), framework="pt", device="cpu")
        for key in STATES:
            full = files[part].get_tensor(f"{name}/{key}")
            if getattr(p, "tensor_model_parallel", False):
                local = shard_tensor(full, p.partition_dim, p.partition_chunks, state.tp_rank, state.tp)
            else:
                local = full
            shape = tuple(getattr(p, "ds_shape", p.shape))
            if tuple(local.shape) != shape:
                raise ConfigError(f"{directory}/{part}: {name}/{key} has shape {tuple(full.shape)}, which does "
                                  f"not give this rank's shape {shape}")
            local = local.to(p.device)
            if key == "fp32":
                safe_set_full_fp32_param(p, local)
                _set_working_weight(p, local)
            else:
                safe_set_full_optimizer_state(p, local, key)
    step = index["optimizer_step"]
    for s in _inner_optimizer(engine).state.values():
        if "step" in s:
            s["step"] = torch.tensor(float(step)) if torch.is_tensor(s["step"]) else step


def _set_working_weight(p: torch.nn.Parameter, local: torch.Tensor) -> None:
    """The weight the forward uses (fp32 or bf16), from the master value."""
    if hasattr(p, "ds_tensor"):  # ZeRO-3: this rank keeps a flat partition (the last one padded)
        n = p.ds_tensor.numel()
        flat = local.flatten()[dist.get_rank(p.ds_process_group) * n:][:n]
        p.ds_tensor.data[: flat.numel()].copy_(flat)
    else:  # ZeRO-1/2: every rank holds the whole (TP-local) weight
        p.data.copy_(local)
