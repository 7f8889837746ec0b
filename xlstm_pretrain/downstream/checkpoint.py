"""Load a checkpoint for evaluation at any tensor-parallel degree.

The weights are the consolidated (TP=1) state dict, so any TP degree can load them: each rank keeps its
slice. One process (no launcher, or WORLD_SIZE=1, TP=1) needs no process group; under torchrun the
layout comes from the overrides (``parallel.tensor_parallel=N``).
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from xlstm_pretrain.config import ConfigError

# how to compute: "auto" = the run's training precision (bf16 autocast on CUDA for precision=bf16)
DTYPES = {"auto": None, "float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16}


def resolve_checkpoint(path: str | Path) -> Path:
    """The plain (consolidated) checkpoint dir behind a run dir, a training checkpoint or a plain dir."""
    from xlstm_pretrain.train.checkpoint import latest_checkpoint

    p = Path(path)
    if (p / "checkpoints").is_dir():
        found = latest_checkpoint(p)
        if found is None:
            raise ConfigError(f"{p} has no complete checkpoint (no checkpoints/latest)")
        p = found
    if (p / "consolidated" / "model.safetensors").is_file():
        p = p / "consolidated"
    if not (p / "model.safetensors").is_file() or not (p / "config.yaml").is_file():
        raise ConfigError(f"{path}: not a run dir, a training checkpoint with consolidated/, or a plain checkpoint "
                          "(config.yaml + model.safetensors)")
    return p


@dataclass
class LoadedModel:
    model: Any  # xLSTMLM, tensor-parallel when the layout says so
    cfg: Any  # the root Config
    plain: Path  # the consolidated checkpoint dir the weights came from
    device: torch.device
    parallel_state: Any
    autocast: Callable[[], Any] = contextlib.nullcontext
    tokenizer: Any = None  # tokenizers.Tokenizer, when the checkpoint carries tokenizer.json
    token_ids: dict[str, int | None] = field(default_factory=dict)


def _layout_overrides(overrides) -> list[str]:
    # the training layout does not carry over: one process unless the overrides say otherwise
    return ["parallel.tensor_parallel=1", "parallel.context_parallel=1", "parallel.sequence_parallel=false",
            *overrides]


def load_for_eval(checkpoint: str | Path, overrides=(), dtype: str = "auto", need_tokenizer: bool = True) -> LoadedModel:
    """Model (in eval mode), config, tokenizer and token ids of ``checkpoint`` (see ``resolve_checkpoint``)."""
    from safetensors.torch import load_file

    from xlstm_pretrain.model import build_model
    from xlstm_pretrain.train import setup

    if dtype not in DTYPES:
        raise ConfigError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    plain = resolve_checkpoint(checkpoint)
    cfg = setup.load_run_config([plain / "config.yaml"], _layout_overrides(overrides))
    full = load_file(str(plain / "model.safetensors"))
    if cfg.model.tie_embeddings:
        full["lm_head.weight"] = full["embedding.weight"]
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1 or cfg.parallel.tensor_parallel > 1
    if distributed:
        from xlstm_pretrain.parallel import check_layout, init_parallel_state, load_full_state_dict, parallelize_model

        if cfg.parallel.context_parallel != 1:
            raise ConfigError("downstream evaluation runs with parallel.context_parallel=1 (TP and DP only)")
        rt = setup.init_distributed(cfg.train.device)
        check_layout(cfg.model, cfg.parallel, rt.world_size, cfg.data.seq_len)
        state = init_parallel_state(cfg.parallel, rt.device.type)
        device = rt.device
        with torch.device(device):
            model = build_model(cfg.model)
        model = parallelize_model(model, state)
        load_full_state_dict(model, {k: v.to(device, torch.float32) for k, v in full.items()})
    else:
        use_cuda = cfg.train.device == "cuda" or (cfg.train.device == "auto" and torch.cuda.is_available())
        device = torch.device("cuda" if use_cuda else "cpu")
        state = None
        with torch.device(device):
            model = build_model(cfg.model)
        model.load_state_dict({k: v.to(device, torch.float32) for k, v in full.items()})
    if DTYPES[dtype] is not None:
        model.to(DTYPES[dtype])
        autocast = contextlib.nullcontext
    else:
        autocast = lambda: setup.autocast(cfg, device)  # noqa: E731
    model.eval()
    tokenizer = None
    if (plain / "tokenizer.json").is_file():
        from tokenizers import Tokenizer

        tokenizer = Tokenizer.from_file(str(plain / "tokenizer.json"))
    elif need_tokenizer:
        raise ConfigError(f"{plain} has no tokenizer.json: downstream tasks need the tokenizer the model was "
                          "trained with (train.tokenizer puts it into every consolidated checkpoint)")
    token_ids = {}
    if (plain / "generation_config.json").is_file():
        token_ids = {k: v for k, v in json.loads((plain / "generation_config.json").read_text()).items()
                     if k in ("bos_token_id", "eos_token_id", "pad_token_id") and v is not None}
    return LoadedModel(model, cfg, plain, device, state, autocast, tokenizer, token_ids)
