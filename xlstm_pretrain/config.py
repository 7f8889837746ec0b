"""The root config: one dataclass per section, loaded from YAML with dotted overrides.

    cfg = load(["configs/runs/RUN.yaml", "configs/layout/LAYOUT.yaml"], ["model.num_blocks=12"])

Sections are added here as the stack grows (parallel, data, train); each validates itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

from .config_loader import ConfigError, dump_yaml, load_config, to_dict
from .data.config import DataConfig
from .model.config import ModelConfig
from .parallel.config import ParallelConfig
from .train.config import CheckpointConfig, EvalConfig, LoggingConfig, OptimConfig, TrainConfig


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


# Sections that were removed, with the defaults older checkpoints' config.yaml files still carry
RETIRED_SECTIONS = {
    "train.fault": ({"nonfinite_at_steps": [], "kill_at_step": None, "kill_during_checkpoint_at_step": None,
                     "kill_rank": 0, "only_first_attempt": True},
                    "fault injection is a test hook now (XLSTM_TRAIN_HOOKS, see xlstm_pretrain/train/hooks.py)"),
}


def load(paths: str | Path | Sequence[str | Path] | None = None, overrides: Iterable[str] = ()) -> Config:
    """The run config from YAML files (later files win) and dotted overrides."""
    return load_config(Config, paths, overrides, retired=RETIRED_SECTIONS)


__all__ = ["CheckpointConfig", "Config", "ConfigError", "DataConfig", "EvalConfig", "LoggingConfig", "ModelConfig",
           "OptimConfig", "ParallelConfig", "TrainConfig", "dump_yaml", "load", "to_dict"]
