"""Everything the training loop needs before its first step: config, processes, data, model, engine.

The order matters and is the loop's promise: every config, data-path and tokenizer problem raises a
``ConfigError`` before the model is built, before DeepSpeed starts, and before anything is written.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
import torch.distributed as dist

from xlstm_pretrain.config import Config, ConfigError, load
from xlstm_pretrain.config_loader import deep_merge

from .optim import build_optimizer

# ---- command line and config --------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m xlstm_pretrain.train",
        description="Pretrain an xLSTM language model (run under torchrun or the deepspeed launcher).",
        epilog="example: torchrun --nproc_per_node 2 -m xlstm_pretrain.train --config configs/quickstart.yaml "
               "parallel.tensor_parallel=2 train.steps=100")
    p.add_argument("--config", action="append", default=[], metavar="YAML",
                   help="run config; repeat to merge several (later files win), e.g. a run and a layout")
    p.add_argument("--resume", default="auto",
                   help="auto: continue from RUN_DIR/checkpoints/latest if it exists (default); none: start "
                        "fresh (refuses a run_dir that has checkpoints); or a checkpoint directory")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    p.add_argument("--print-deepspeed-config", action="store_true",
                   help="print the DeepSpeed JSON generated from the config for --world-size processes and exit")
    p.add_argument("--world-size", type=int, default=None, help="with --print-deepspeed-config")
    p.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)  # deepspeed launcher
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.steps=100 optim.lr=3e-3")
    return p.parse_args(argv)


def load_run_config(paths: Sequence[str | Path], overrides: Sequence[str] = ()) -> Config:
    """Merge several YAML files (each with its include chain; later files win), then apply overrides."""
    return load(paths, overrides)


# ---- processes and devices ----------------------------------------------------------------------


@dataclass
class Runtime:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    device_name: str | None  # torch.cuda.get_device_name(), None on CPU (no MFU then)

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_distributed(device: str = "auto", local_rank: int | None = None) -> Runtime:
    """Join the process group that torchrun / the deepspeed launcher describe in the environment
    (one process without a launcher). CUDA + NCCL when available (or asked), else CPU + gloo."""
    env = os.environ
    if local_rank is not None:
        env.setdefault("LOCAL_RANK", str(local_rank))
    if "RANK" not in env:  # plain `python -m xlstm_pretrain.train`: a world of one
        env.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", LOCAL_WORLD_SIZE="1")
        env.setdefault("MASTER_ADDR", "127.0.0.1")
        env.setdefault("MASTER_PORT", str(_free_port()))
    rank, world, local = int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", 0))
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if use_cuda:
        if not torch.cuda.is_available():
            raise ConfigError("train.device=cuda but no CUDA device is visible")
        torch.cuda.set_device(local)
        dev, backend, name = torch.device("cuda", local), "nccl", torch.cuda.get_device_name(local)
    else:
        dev, backend, name = torch.device("cpu"), "gloo", None
    if not dist.is_initialized():
        timeout = datetime.timedelta(minutes=int(env.get("XLSTM_DIST_TIMEOUT_MIN", 30)))
        kwargs = {"device_id": dev} if use_cuda else {}
        if "TORCHELASTIC_RESTART_COUNT" in env:  # under torchrun: a store private to this restart round
            kwargs.update(store=_round_store(rank, world, timeout), rank=rank, world_size=world)
        dist.init_process_group(backend, timeout=timeout, **kwargs)
    return Runtime(rank, world, local, dev, name)


def _round_store(rank: int, world: int, timeout: datetime.timedelta) -> dist.Store:
    """torchrun's worker store, with keys private to this restart round (``rendezvous.join_round``: the
    same name on every node, whatever each node's restart count; stale keys of earlier rounds are never read).

    Joining waits at most ``XLSTM_DIST_JOIN_TIMEOUT_S`` (default 300) and names the ranks that did not come.
    """
    from .rendezvous import JoinTimeout, join_round

    env = os.environ
    join_timeout_s = float(env.get("XLSTM_DIST_JOIN_TIMEOUT_S", 300))
    agent_hosts_store = env.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
    address = f"{env['MASTER_ADDR']}:{env['MASTER_PORT']}"
    try:  # no wait_for_workers: join_round waits for the ranks itself, with a message that names them
        store = dist.TCPStore(env["MASTER_ADDR"], int(env["MASTER_PORT"]),
                              is_master=not agent_hosts_store and rank == 0,
                              timeout=datetime.timedelta(seconds=join_timeout_s), wait_for_workers=False)
    except RuntimeError as e:  # DistNetworkError
        raise JoinTimeout(f"rank {rank}: cannot reach the process-group store at {address} "
                          f"({'torchrun agent of the first node' if agent_hosts_store else 'rank 0'}): {e}") from e
    name = join_round(store, rank, world, join_timeout_s, int(env.get("LOCAL_WORLD_SIZE", 1)))
    store.set_timeout(timeout)  # from here on the process group's own timeout
    return dist.PrefixStore(f"xlstm_pretrain/round_{name}", store)


# ---- data ---------------------------------------------------------------------------------------


@dataclass
class Data:
    train: object  # ShuffledMixture: train[g] = global sample g
    validation: object | None  # PackedSamples
    tokenizer_sha256: str | None


def build_data(cfg: Config) -> Data:
    """Open the train/validation shards and check the tokenizer; every problem is a ConfigError."""
    from data_prep.tokenizer_info import TokenizerError, describe_tokenizer

    from xlstm_pretrain.data import build_train_dataset, build_validation_dataset, find_shard_set

    train = build_train_dataset(cfg.data)  # missing paths and mixed tokenizers raise ConfigError here
    validation = build_validation_dataset(cfg.data)
    sets = [(f"data.train[{j}]", e) for j, e in enumerate(cfg.data.train)]
    sets += [(f"data.validation[{j}]", e) for j, e in enumerate(cfg.data.validation)]
    hashes = {key: find_shard_set(e.path, e.split) for key, e in sets}
    tokenizer_sha = None
    if cfg.train.tokenizer:
        try:
            info = describe_tokenizer(cfg.train.tokenizer)
        except TokenizerError as e:
            raise ConfigError(f"train.tokenizer: {e}") from None
        tokenizer_sha = info.sha256
        for key, shard_set in hashes.items():
            if shard_set.tokenizer_sha256 and shard_set.tokenizer_sha256 != tokenizer_sha:
                raise ConfigError(
                    f"{key} ({dict(sets)[key].path}) was tokenized with another tokenizer: manifest sha256 "
                    f"{shard_set.tokenizer_sha256[:12]}..., train.tokenizer {cfg.train.tokenizer} has "
                    f"{tokenizer_sha[:12]}...")
        if info.vocab_size > cfg.model.vocab_size:
            raise ConfigError(f"model.vocab_size={cfg.model.vocab_size} is smaller than the tokenizer's "
                              f"{info.vocab_size} ids ({cfg.train.tokenizer})")
    else:
        found = {s.tokenizer_sha256 for s in hashes.values() if s.tokenizer_sha256}
        if len(found) > 1:
            raise ConfigError(f"the train and validation sets were made with different tokenizers: {sorted(found)}")
        tokenizer_sha = found.pop() if found else None
    for key, shard_set in hashes.items():
        if shard_set.vocab_size and shard_set.vocab_size > cfg.model.vocab_size:
            raise ConfigError(f"{key}: its tokenizer has {shard_set.vocab_size} ids but model.vocab_size="
                              f"{cfg.model.vocab_size}")
    return Data(train, validation, tokenizer_sha)


# ---- model --------------------------------------------------------------------------------------


def build_parallel_model(cfg: Config, state, device: torch.device):
    """The plain model from ``train.seed`` (or ``train.init_from``), sharded for TP, on ``device``."""
    from xlstm_pretrain.parallel import build_sharded_model, load_full_state_dict

    torch.manual_seed(cfg.train.seed)  # the same random stream on every rank; each keeps its TP slice
    model = build_sharded_model(cfg.model, state, device)  # never holds the full model
    full = None
    if cfg.train.init_from:
        full = load_consolidated(cfg.train.init_from)
        if cfg.model.tie_embeddings and "embedding.weight" in full:
            full["lm_head.weight"] = full["embedding.weight"]  # a plain checkpoint stores tied weights once
        if set(full) != set(model.state_dict()):
            diff = sorted(set(full) ^ set(model.state_dict()))
            raise ConfigError(f"train.init_from={cfg.train.init_from}: its tensors do not match model.* "
                              f"(differing names: {diff[:6]})")
    if full is not None:
        load_full_state_dict(model, {k: v.to(device=device, dtype=torch.float32) for k, v in full.items()})
    if cfg.train.activation_checkpointing:
        enable_activation_checkpointing(model)
    return model


def load_consolidated(path: str | Path) -> dict[str, torch.Tensor]:
    """model.safetensors of a plain checkpoint dir (a training checkpoint's consolidated/ included)."""
    from safetensors.torch import load_file

    p = Path(path)
    for candidate in (p / "model.safetensors", p / "consolidated" / "model.safetensors", p):
        if candidate.is_file():
            return load_file(str(candidate))
    raise ConfigError(f"{path}: no model.safetensors (give a plain checkpoint dir or a training checkpoint dir)")


def enable_activation_checkpointing(model) -> None:
    """Recompute every block in backward (non-reentrant checkpointing). TP collectives are redone; the
    context-parallel messages (state summaries, the sLSTM ring, conv halos) are replayed, not resent."""
    from torch.utils.checkpoint import checkpoint

    from xlstm_pretrain.parallel import checkpoint_context_fn

    context_fn = checkpoint_context_fn(model)  # the model's CP messages: recorded in forward, replayed in recompute
    for block in model.blocks:
        forward = block.forward

        def checkpointed(x, state=None, reset=None, return_state=False, _forward=forward):
            return checkpoint(_forward, x, state, reset, return_state, use_reentrant=False,
                              context_fn=context_fn)

        block.forward = checkpointed


# ---- DeepSpeed ----------------------------------------------------------------------------------


def deepspeed_config_for(cfg: Config, dp_size: int, grad_accum: int) -> dict:
    """The DeepSpeed JSON, generated from the config (the one source of truth; saved in the run dir)."""
    from xlstm_pretrain.parallel.zero import deepspeed_config

    t = cfg.train
    ds = deepspeed_config(zero_stage=t.zero_stage, micro_batch_size=t.micro_batch_size, grad_accum_steps=grad_accum,
                          dp_size=dp_size, bf16=t.precision == "bf16-params", grad_clip=cfg.optim.grad_clip or None)
    ds["checkpoint"] = {"tag_validation": "Ignore"}
    deep_merge(ds, json.loads(json.dumps(t.deepspeed)))  # e.g. {zero_optimization: {overlap_comm: true}}
    if ds["zero_optimization"]["stage"] != t.zero_stage:
        raise ConfigError("train.deepspeed sets zero_optimization.stage: use train.zero_stage")
    return ds


def build_engine(cfg: Config, model, state, grad_accum: int):
    """DeepSpeed engine over the (TP-sharded) model, with our AdamW and weights_only checkpoint loads."""
    from xlstm_pretrain.parallel.zero import initialize_deepspeed

    from .checkpoint import install_safe_checkpoint_engine

    if next(model.parameters()).device.type == "cpu" and os.environ.get("XLSTM_DS_CPU_SHM", "0") != "1":
        _skip_deepspeed_cpu_shm_op()
    if cfg.train.precision == "bf16-params":
        model = model.to(torch.bfloat16)
    optimizer = build_optimizer(model, cfg.optim)
    engine = initialize_deepspeed(model, optimizer, state, deepspeed_config_for(cfg, state.dp, grad_accum))
    install_safe_checkpoint_engine(engine)
    return engine, optimizer


def _skip_deepspeed_cpu_shm_op() -> None:
    """On CPU, DeepSpeed JIT-compiles a shared-memory all-reduce op at its first init (about a minute on
    two cores, and it needs a C++ compiler); gloo does the same job. Mark the op unavailable
    (DeepSpeed keeps its probe result in one dict meant to be edited). XLSTM_DS_CPU_SHM=1 keeps it."""
    import deepspeed.ops

    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False


def autocast(cfg: Config, device: torch.device):
    """The forward's autocast context: bf16 compute over fp32 parameters for precision=bf16."""
    if cfg.train.precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()

