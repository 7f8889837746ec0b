"""The root config: one dataclass per section, loaded from YAML with dotted overrides.

    cfg = load(["configs/model/xlstm_1_0_125m.yaml"], ["model.num_blocks=12"])

Sections are added here as the stack grows (parallel, data, train); each validates itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from .config_loader import ConfigError, dump_yaml, load_config, to_dict
from .model.config import ModelConfig


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)


def load(path: str | Path | None = None, overrides: Iterable[str] = ()) -> Config:
    return load_config(Config, path, overrides)


__all__ = ["Config", "ConfigError", "ModelConfig", "dump_yaml", "load", "to_dict"]
