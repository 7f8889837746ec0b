"""The training sample order: a weighted mixture of shard sets, each shuffled per epoch.

Global sample ``g`` (counted from the start of training, across epochs) is a pure function of
(seed, g): no state, no precomputed index. Resuming at any step, with any number of data-parallel
ranks or DataLoader workers, therefore sees exactly the same samples in the same order.

How ``g`` is placed:
  1. Mixture. Global samples come in blocks of ``block_size``. In every block, set ``j`` owns exactly
     ``counts[j]`` slots (its weight times the block size, rounded by largest remainder); which
     positions of the block those are is a keyed permutation of the block. So the weights hold exactly
     per block, and set ``j``'s draws are numbered ``k = 0, 1, 2, ...`` without gaps or repeats.
  2. Epochs. Draw ``k`` of set ``j`` is in that set's epoch ``k // len(set)``, at position
     ``k % len(set)`` of a permutation keyed by (seed, j, epoch): each epoch visits every sample of the
     set exactly once, in a fresh order. Smaller sets with large weights simply cycle more epochs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from xlstm_pretrain.data.packed import PackedSamples
from xlstm_pretrain.data.permutation import IndexPermutation

_MIXTURE_STREAM = 1  # key domains, so the slot and epoch permutations never share a key
_EPOCH_STREAM = 2


@dataclass(frozen=True)
class SampleLocation:
    set_index: int  # which shard set
    epoch: int  # that set's epoch
    sample_index: int  # window index within the set (PackedSamples index)


def slot_counts(weights: Sequence[float], block_size: int) -> list[int]:
    """Integer slots per set in a block of ``block_size`` (largest-remainder rounding, ties to the
    lower index); raises if a set would get no slot at all."""
    total = float(sum(weights))
    exact = [w / total * block_size for w in weights]
    counts = [math.floor(x) for x in exact]
    by_remainder = sorted(range(len(weights)), key=lambda j: (-(exact[j] - counts[j]), j))
    for j in by_remainder[: block_size - sum(counts)]:
        counts[j] += 1
    for j, c in enumerate(counts):
        if c == 0:
            raise ValueError(
                f"shard set {j} (weight {weights[j]}) gets no slot in a mixture block of {block_size} samples; "
                "raise mixture_block_size"
            )
    return counts


class ShuffledMixture:
    """Map-style dataset over global sample indices ``0, 1, 2, ...`` (unbounded: epochs repeat).

    ``dataset[g]`` -> the sample dict of ``PackedSamples`` (input_ids, labels, doc_boundaries).
    """

    def __init__(
        self,
        sets: Sequence[PackedSamples],
        weights: Sequence[float] | None = None,
        seed: int = 0,
        block_size: int = 10_000,
        shuffle: bool = True,
    ):
        if not sets:
            raise ValueError("a mixture needs at least one shard set")
        weights = list(weights) if weights is not None else [1.0] * len(sets)
        if len(weights) != len(sets):
            raise ValueError(f"{len(sets)} shard sets but {len(weights)} weights")
        if any(not (w > 0 and math.isfinite(w)) for w in weights):
            raise ValueError(f"weights must be positive and finite, got {weights}")
        self.sets = list(sets)
        self.weights = [w / sum(weights) for w in weights]
        self.seed = seed
        self.shuffle = shuffle
        self.block_size = block_size
        self.counts = slot_counts(weights, block_size) if len(sets) > 1 else [block_size]
        self._slot_starts = np.concatenate([[0], np.cumsum(self.counts)])

    def locate(self, g: int) -> SampleLocation:
        """Where global sample ``g`` comes from (pure function of seed and g)."""
        if g < 0:
            raise IndexError(f"negative sample index {g}")
        if len(self.sets) == 1:
            set_index, draw = 0, g
        else:
            block, position = divmod(g, self.block_size)
            slot = IndexPermutation(self.block_size, self.seed, _MIXTURE_STREAM, block)(position) if self.shuffle else position
            set_index = int(np.searchsorted(self._slot_starts, slot, side="right")) - 1
            draw = block * self.counts[set_index] + slot - int(self._slot_starts[set_index])
        n = len(self.sets[set_index])
        epoch, position = divmod(draw, n)
        if self.shuffle:
            position = IndexPermutation(n, self.seed, _EPOCH_STREAM, set_index, epoch)(position)
        return SampleLocation(set_index, epoch, position)

    def __getitem__(self, g: int) -> dict[str, np.ndarray]:
        loc = self.locate(int(g))
        return self.sets[loc.set_index][loc.sample_index]

