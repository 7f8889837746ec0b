"""The root config: one dataclass per section, loaded from YAML with dotted overrides.

    cfg = load(["configs/model/xlstm_1_0_125m.yaml"], ["model.num_blocks=12"])

Sections are added here as the stack grows (parallel, data, train); each validates itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

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


def load(path: str | Path | None = None, overrides: Iterable[str] = ()) -> Config:
    return load_config(Config, path, overrides)


__all__ = ["CheckpointConfig", "Config", "ConfigError", "DataConfig", "EvalConfig", "LoggingConfig", "ModelConfig",
           "OptimConfig", "ParallelConfig", "TrainConfig", "dump_yaml", "load", "to_dict"]
