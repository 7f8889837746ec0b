"""Turning DataConfig entries into datasets: find a set's shards, check the sets agree on the tokenizer.

A set's ``path`` is a data_prep output folder (``manifest.json`` lists its shards per split) or the
prefix of one ``.bin``/``.idx`` pair made elsewhere (Megatron-LM, gpt-neox).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from xlstm_pretrain.config_loader import ConfigError
from xlstm_pretrain.data.config import DataConfig, ShardSetConfig
from xlstm_pretrain.data.mixture import ShuffledMixture
from xlstm_pretrain.data.packed import PackedSamples, TokenStream

MANIFEST_NAME = "manifest.json"  # written by data_prep/manifest.py


@dataclass
class ShardSet:
    prefixes: list[str]  # in stream order
    tokenizer_sha256: str | None = None  # known when the set comes with a data_prep manifest
    vocab_size: int | None = None


def find_shard_set(path: str | Path, split: str = "train") -> ShardSet:
    """The non-empty shards of ``split`` in a data_prep folder, or the single shard at a prefix."""
    p = Path(path)
    if p.is_dir():
        manifest_file = p / MANIFEST_NAME
        if not manifest_file.is_file():
            raise FileNotFoundError(
                f"{path} is a folder without {MANIFEST_NAME}: not a finished data_prep output "
                "(rerun data_prep.tokenize, or give a shard prefix instead)"
            )
        manifest = json.loads(manifest_file.read_text())
        prefixes = [str(p / s["name"]) for s in manifest["shards"] if s["split"] == split and s["num_tokens"] > 0]
        if not prefixes:
            raise ValueError(f"{path}: the manifest lists no non-empty {split!r} shards")
        tok = manifest.get("tokenizer", {})
        return ShardSet(prefixes, tok.get("sha256"), tok.get("vocab_size"))
    if Path(f"{path}.idx").is_file() and Path(f"{path}.bin").is_file():
        return ShardSet([str(path)])
    raise FileNotFoundError(f"{path}: neither a data_prep output folder nor a shard prefix ({path}.bin/.idx)")


def _load_sets(entries: list[ShardSetConfig], group: str, seq_len: int) -> list[tuple[ShardSet, PackedSamples]]:
    loaded = []
    for j, entry in enumerate(entries):
        try:
            shard_set = find_shard_set(entry.path, entry.split)
            loaded.append((shard_set, PackedSamples(TokenStream(shard_set.prefixes), seq_len)))
        except (OSError, ValueError) as e:
            raise ConfigError(f"data.{group}[{j}] (path {entry.path!r}): {e}") from None
    hashes = {s.tokenizer_sha256 for s, _ in loaded if s.tokenizer_sha256}
    if len(hashes) > 1:
        raise ConfigError(f"data.{group}: the shard sets were made with different tokenizers (sha256 {sorted(hashes)})")
    return loaded


def build_train_dataset(cfg: DataConfig) -> ShuffledMixture:
    """The shuffled, weighted training mixture: ``dataset[g]`` is global sample ``g``."""
    if not cfg.train:
        raise ConfigError("data.train is empty: list at least one {path, weight}")
    loaded = _load_sets(cfg.train, "train", cfg.seq_len)
    return ShuffledMixture(
        [samples for _, samples in loaded],
        [entry.weight for entry in cfg.train],
        seed=cfg.seed,
        block_size=cfg.mixture_block_size,
    )


def build_validation_dataset(cfg: DataConfig) -> PackedSamples | None:
    """All validation sets' shards as one unshuffled stream of samples (None without validation sets)."""
    if not cfg.validation:
        return None
    loaded = _load_sets(cfg.validation, "validation", cfg.seq_len)
    prefixes = [p for shard_set, _ in loaded for p in shard_set.prefixes]
    return PackedSamples(TokenStream(prefixes), cfg.seq_len)


def tokenizer_vocab_size(cfg: DataConfig) -> int | None:
    """Vocabulary size recorded by data_prep for the train sets (for checking model.vocab_size)."""
    sizes = [find_shard_set(e.path, e.split).vocab_size for e in cfg.train]
    known = [s for s in sizes if s is not None]
    return max(known) if known else None
