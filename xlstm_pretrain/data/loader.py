"""Batches for data-parallel training: which global samples each rank loads, and how they are stacked.

Global batch ``b`` after the resume point is samples ``[consumed + b*G, consumed + (b+1)*G)`` of the
mixture (G = global batch size). Rank ``r`` of ``dp_size`` takes the contiguous slice
``[r*G/dp, (r+1)*G/dp)`` of it, in micro-batches. With a batch-size ramp-up (G a function of the step)
step s takes the next G(s) samples of the same order, ``[consumed_s, consumed_s + G(s))``. The sampler
yields index lists from the main process and DataLoader hands each list to one worker, so workers never
duplicate or skip samples; and since ``dataset[g]`` is a pure function, the global batches are identical
for any DP size, worker count or resume point.
"""

from __future__ import annotations

from typing import Callable, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader


class GlobalBatchSampler:
    """Yields this rank's micro-batches (lists of global sample indices), step after step.

    ``global_batch_size``: an int, or a function of the 0-based optimizer step returning that step's global
    batch (a ramp-up, e.g. ``BatchSchedule.batch_size``); every value must be a multiple of micro x dp.
    ``consumed_samples``: global samples already trained on (the resume point; 0 at the start).
    ``num_steps``: global batches to produce; None = unbounded (the training mixture never runs out).
    ``first_step``: the optimizer step of the first batch (the resume step; used only by a function).
    """

    def __init__(
        self,
        global_batch_size: int | Callable[[int], int],
        micro_batch_size: int,
        dp_rank: int = 0,
        dp_size: int = 1,
        consumed_samples: int = 0,
        num_steps: int | None = None,
        first_step: int = 0,
    ):
        if dp_size < 1 or not 0 <= dp_rank < dp_size:
            raise ValueError(f"bad data-parallel rank {dp_rank} of {dp_size}")
        if consumed_samples < 0:
            raise ValueError(f"consumed_samples must be >= 0, got {consumed_samples}")
        self.micro_batch_size = micro_batch_size
        self.dp_rank, self.dp_size = dp_rank, dp_size
        self.consumed_samples = consumed_samples
        self.num_steps = num_steps
        self.first_step = first_step
        if callable(global_batch_size):
            self._batch_size_fn = global_batch_size
            self.global_batch_size = None  # varies with the step
        else:
            self._check(global_batch_size)
            self._batch_size_fn = None
            self.global_batch_size = global_batch_size
            self.per_rank = global_batch_size // dp_size

    def batch_size_at(self, step: int) -> int:
        """The global batch of optimizer step ``step``."""
        return self.global_batch_size if self._batch_size_fn is None else self._batch_size_fn(step)

    def _check(self, global_batch_size: int, step: int | None = None) -> None:
        if global_batch_size < 1 or global_batch_size % (self.micro_batch_size * self.dp_size):
            at = "" if step is None else f" (step {step})"
            raise ValueError(
                f"global_batch_size={global_batch_size}{at} must be a multiple of "
                f"micro_batch_size * dp_size = {self.micro_batch_size} * {self.dp_size}"
            )

    def micro_batches_at(self, step: int) -> int:
        """Gradient-accumulation steps of optimizer step ``step`` on each rank."""
        size = self.batch_size_at(step)
        self._check(size, step)
        return size // self.dp_size // self.micro_batch_size

    @property
    def micro_batches_per_step(self) -> int:
        """Gradient-accumulation steps per global batch on each rank (a constant global batch only)."""
        if self.global_batch_size is None:
            raise TypeError("the global batch varies with the step: use micro_batches_at(step)")
        return self.per_rank // self.micro_batch_size

    def __iter__(self) -> Iterator[list[int]]:
        step, consumed = 0, self.consumed_samples  # consumed: the first sample of this step's global batch
        while self.num_steps is None or step < self.num_steps:
            size = self.batch_size_at(self.first_step + step)
            self._check(size, self.first_step + step)
            per_rank = size // self.dp_size
            first = consumed + self.dp_rank * per_rank
            for m in range(per_rank // self.micro_batch_size):
                start = first + m * self.micro_batch_size
                yield list(range(start, start + self.micro_batch_size))
            consumed += size
            step += 1

    def __len__(self) -> int:
        if self.num_steps is None:
            raise TypeError("an unbounded sampler has no length (give num_steps)")
        if self.global_batch_size is not None:
            return self.num_steps * self.micro_batches_per_step
        return sum(self.micro_batches_at(self.first_step + k) for k in range(self.num_steps))


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
