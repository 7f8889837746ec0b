"""Batches for data-parallel training: which global samples each rank loads, and how they are stacked.

Global batch ``b`` after the resume point is samples ``[consumed + b*G, consumed + (b+1)*G)`` of the
mixture (G = global batch size). Rank ``r`` of ``dp_size`` takes the contiguous slice
``[r*G/dp, (r+1)*G/dp)`` of it, in micro-batches. The sampler yields index lists from the main
process and DataLoader hands each list to one worker, so workers never duplicate or skip samples; and
since ``dataset[g]`` is a pure function, the global batches are identical for any DP size, worker count
or resume point.
"""

from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader


class GlobalBatchSampler:
    """Yields this rank's micro-batches (lists of global sample indices), step after step.

    ``consumed_samples``: global samples already trained on (the resume point; 0 at the start).
    ``num_steps``: global batches to produce; None = unbounded (the training mixture never runs out).
    """

    def __init__(
        self,
        global_batch_size: int,
        micro_batch_size: int,
        dp_rank: int = 0,
        dp_size: int = 1,
        consumed_samples: int = 0,
        num_steps: int | None = None,
    ):
        if dp_size < 1 or not 0 <= dp_rank < dp_size:
            raise ValueError(f"bad data-parallel rank {dp_rank} of {dp_size}")
        if global_batch_size % (micro_batch_size * dp_size):
            raise ValueError(
                f"global_batch_size={global_batch_size} must be a multiple of "
                f"micro_batch_size * dp_size = {micro_batch_size} * {dp_size}"
            )
        if consumed_samples < 0:
            raise ValueError(f"consumed_samples must be >= 0, got {consumed_samples}")
        self.global_batch_size = global_batch_size
        self.micro_batch_size = micro_batch_size
        self.dp_rank, self.dp_size = dp_rank, dp_size
        self.consumed_samples = consumed_samples
        self.num_steps = num_steps
        self.per_rank = global_batch_size // dp_size

    @property
    def micro_batches_per_step(self) -> int:
        """Gradient-accumulation steps per global batch on each rank."""
        return self.per_rank // self.micro_batch_size

    def __iter__(self) -> Iterator[list[int]]:
        step = 0
        while self.num_steps is None or step < self.num_steps:
            first = self.consumed_samples + step * self.global_batch_size + self.dp_rank * self.per_rank
            for m in range(self.micro_batches_per_step):
                start = first + m * self.micro_batch_size
                yield list(range(start, start + self.micro_batch_size))
            step += 1

    def __len__(self) -> int:
        if self.num_steps is None:
            raise TypeError("an unbounded sampler has no length (give num_steps)")
        return self.num_steps * self.micro_batches_per_step


def collate_samples(samples: Sequence[dict[str, np.ndarray]]) -> dict[str, torch.Tensor]:
    """Stack sample dicts into the model's batch: input_ids, labels (B, S) int64; doc_boundaries (B, S) bool."""
    return {
        "input_ids": torch.from_numpy(np.stack([s["input_ids"] for s in samples]).astype(np.int64, copy=False)),
        "labels": torch.from_numpy(np.stack([s["labels"] for s in samples]).astype(np.int64, copy=False)),
        "doc_boundaries": torch.from_numpy(np.stack([s["doc_boundaries"] for s in samples]).astype(bool, copy=False)),
    }


def build_dataloader(
    dataset,
    sampler: GlobalBatchSampler,
    num_workers: int = 2,
    pin_memory: bool = False,
) -> DataLoader:
    """A DataLoader over ``dataset[global index]`` driven by ``sampler`` (batches stay in sampler order)."""
    return DataLoader(
        dataset,
        batch_sampler=sampler,
        num_workers=num_workers,
        collate_fn=collate_samples,
        pin_memory=pin_memory,
        persistent_workers=num_workers > 0,
    )
