"""Global batch size per optimizer step: an optional Megatron-style ramp-up, then ``train.global_batch_size``.

``train.batch_size_rampup: [{global_batch_size: 128, steps: 2000}, {global_batch_size: 256, steps: 2000}]``
with ``train.global_batch_size: 512`` (the xLSTM 7B recipe) trains steps 0-1999 on 128 sequences,
2000-3999 on 256 and every later step on 512. Steps are 0-based (the step being taken). The data
position before step s is the sum of the batches of steps 0 .. s-1, computed per stage (closed form),
so a resume at any step finds the same samples. Pure Python (no torch): the sweep and FLOP tools use it.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass


@dataclass(frozen=True)
class BatchSchedule:
    stages: tuple[tuple[int, int], ...]  # (global batch size, steps) in order from step 0
    final: int  # the global batch size after the ramp-up

    def __post_init__(self):
        for size, steps in (*self.stages, (self.final, 1)):
            if size < 1 or steps < 1:
                raise ValueError(f"batch sizes and stage lengths must be positive, got {self.stages} then {self.final}")
        ends, starts, consumed = [], [], 0
        for size, steps in self.stages:
            starts.append(consumed)
            consumed += size * steps
            ends.append((ends[-1] if ends else 0) + steps)
        object.__setattr__(self, "_ends", tuple(ends))  # first step after each stage
        object.__setattr__(self, "_starts", tuple(starts))  # samples consumed before each stage
        object.__setattr__(self, "_ramp_samples", consumed)

    @classmethod
    def from_config(cls, train_cfg) -> BatchSchedule:
        """From a ``TrainConfig`` (its ``batch_size_rampup`` stages and ``global_batch_size``)."""
        return cls(tuple((s.global_batch_size, s.steps) for s in train_cfg.batch_size_rampup),
                   train_cfg.global_batch_size)

    @property
    def ramp_steps(self) -> int:
        """Steps taken before the batch reaches ``final`` (0 without a ramp-up)."""
        return self._ends[-1] if self._ends else 0

    @property
    def ramped(self) -> bool:
        return bool(self.stages)

    @property
    def max_batch_size(self) -> int:
        return max([self.final, *(size for size, _ in self.stages)])

    def batch_size(self, step: int) -> int:
        """The global batch size of step ``step`` (0-based)."""
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        j = bisect.bisect_right(self._ends, step)
        return self.stages[j][0] if j < len(self.stages) else self.final

    def consumed_samples(self, step: int) -> int:
        """Global samples consumed by steps 0 .. step-1 (the data position when step ``step`` starts)."""
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        if step >= self.ramp_steps:
            return self._ramp_samples + (step - self.ramp_steps) * self.final
        j = bisect.bisect_right(self._ends, step)
        stage_start = self._ends[j - 1] if j else 0
        return self._starts[j] + (step - stage_start) * self.stages[j][0]

    def grad_accum(self, step: int, micro_batch_size: int, dp_size: int) -> int:
        """Micro-batches per data-parallel rank at step ``step`` (DeepSpeed's gradient_accumulation_steps)."""
        size, per_step = self.batch_size(step), micro_batch_size * dp_size
        if size % per_step:
            raise ValueError(f"global batch {size} at step {step} is not a multiple of micro_batch_size x "
                             f"dp_size = {micro_batch_size} x {dp_size}")
        return size // per_step

    def describe(self) -> str:
        """e.g. ``128 (2000 steps) -> 256 (2000 steps) -> 512``; just the size without a ramp-up."""
        return " -> ".join([*(f"{size} ({steps} steps)" for size, steps in self.stages), str(self.final)])
