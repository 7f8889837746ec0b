"""DataConfig: which tokenized shards to train and validate on, and how to cut and order them.

YAML example (paths are data_prep output folders or single shard prefixes)::

    data:
      train:
        - {path: data/slimpajama_gpt2, weight: 1.0}
        - {path: data/github_gpt2, weight: 0.1}
      validation:
        - {path: data/slimpajama_gpt2, split: val}
      seq_len: 2048
      seed: 1234
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from xlstm_pretrain.config_loader import ConfigError
from xlstm_pretrain.data.mixture import slot_counts


@dataclass
class ShardSetConfig:
    # A data_prep output folder (its manifest.json lists the shards of each split), or the prefix of
    # one .bin/.idx pair (e.g. a shard made by Megatron-LM or gpt-neox tools).
    path: str = ""
    weight: float = 1.0  # relative share of training samples (ignored for validation sets)
    split: str = "train"  # which split of a data_prep folder ("train" or "val"); ignored for a prefix


@dataclass
class DataConfig:
    train: list[ShardSetConfig] = field(default_factory=list)
    validation: list[ShardSetConfig] = field(default_factory=list)  # concatenated, in order
    seq_len: int = 2048  # tokens per sample (each sample reads seq_len + 1 tokens)
    seed: int = 1234  # the whole sample order is a function of this and the global sample index
    mixture_block_size: int = 10_000  # weights are exact per block of this many global samples
    num_workers: int = 2  # DataLoader worker processes per rank
    pin_memory: bool = True

    def validate(self) -> None:
        def need(cond: bool, msg: str):
            if not cond:
                raise ConfigError(msg)

        for group in ("train", "validation"):
            for j, s in enumerate(getattr(self, group)):
                need(bool(s.path), f"{group}[{j}].path is empty: give a data_prep output folder or a shard prefix")
                need(
                    s.weight > 0 and math.isfinite(s.weight),
                    f"{group}[{j}].weight must be positive and finite, got {s.weight}",
                )
                need(s.split in ("train", "val"), f"{group}[{j}].split must be 'train' or 'val', got {s.split!r}")
        need(self.seq_len > 0, f"seq_len must be positive, got {self.seq_len}")
        need(self.num_workers >= 0, f"num_workers must be >= 0, got {self.num_workers}")
        need(
            self.mixture_block_size >= max(len(self.train), 1),
            f"mixture_block_size={self.mixture_block_size} must be at least the number of train sets ({len(self.train)})",
        )
        if len(self.train) > 1:
            try:
                slot_counts([s.weight for s in self.train], self.mixture_block_size)
            except ValueError as e:
                raise ConfigError(str(e).replace("shard set", "train set")) from None
