"""Training data: memory-mapped Megatron shards -> packed samples -> deterministic mixture -> batches.

Typical use by a trainer::

    dataset = build_train_dataset(cfg.data)                     # ShuffledMixture, dataset[g] = global sample g
    sampler = GlobalBatchSampler(global_batch_size, micro_batch_size, dp_rank, dp_size, consumed_samples)
    loader = build_dataloader(dataset, sampler, cfg.data.num_workers, cfg.data.pin_memory)
    for batch in loader: ...  # {"input_ids", "labels": (B, S) int64, "doc_boundaries": (B, S) bool}

The torch-dependent names (loader.py) are imported lazily, so data_prep's worker processes can use the
shard reader (shard_reader.py) without importing torch.
"""

from xlstm_pretrain.data.config import DataConfig, ShardSetConfig
from xlstm_pretrain.data.mixture import SampleLocation, ShuffledMixture
from xlstm_pretrain.data.packed import PackedSamples, TokenStream
from xlstm_pretrain.data.permutation import IndexPermutation
from xlstm_pretrain.data.shard_reader import IndexedDataset, token_dtype_for_vocab
from xlstm_pretrain.data.shard_sets import (
    ShardSet,
    build_train_dataset,
    build_validation_dataset,
    find_shard_set,
    tokenizer_vocab_size,
)

_TORCH_NAMES = {"GlobalBatchSampler", "build_dataloader", "collate_samples"}


def __getattr__(name: str):
    if name in _TORCH_NAMES:
        from xlstm_pretrain.data import loader

        return getattr(loader, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "DataConfig",
    "GlobalBatchSampler",
    "IndexPermutation",
    "IndexedDataset",
    "PackedSamples",
    "SampleLocation",
    "ShardSet",
    "ShardSetConfig",
    "ShuffledMixture",
    "TokenStream",
    "build_dataloader",
    "build_train_dataset",
    "build_validation_dataset",
    "collate_samples",
    "find_shard_set",
    "token_dtype_for_vocab",
    "tokenizer_vocab_size",
]
