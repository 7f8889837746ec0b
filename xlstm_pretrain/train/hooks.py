"""Callbacks at fixed points of the training loop, for tests and debugging (not a config section).

    micro_batch_loss(step, loss) -> loss   each micro-batch's loss before backward (a test makes it NaN)
    checkpoint_written(step)               this rank has written its checkpoint files; not yet committed
    after_step(step, loss)                 the step is done: logged, evaluated, checkpointed

``trainer.train(cfg, hooks=TrainerHooks(...))`` takes them directly. ``python -m xlstm_pretrain.train``
(every rank under torchrun) installs the ones named by the environment variable ``XLSTM_TRAIN_HOOKS``:
comma-separated ``module:function`` or ``path/to/file.py:function`` entries, each function called with the
run's ``TrainerHooks`` to append its callbacks (the fault-tolerance tests use ``tests/fault_hooks.py``).
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from xlstm_pretrain.config import ConfigError

HOOKS_ENV = "XLSTM_TRAIN_HOOKS"


@dataclass
class TrainerHooks:
    micro_batch_loss: list[Callable[[int, torch.Tensor], torch.Tensor]] = field(default_factory=list)
    checkpoint_written: list[Callable[[int], None]] = field(default_factory=list)
    after_step: list[Callable[[int, float], None]] = field(default_factory=list)

    def transform_loss(self, step: int, loss: torch.Tensor) -> torch.Tensor:
        for hook in self.micro_batch_loss:
            loss = hook(step, loss)
        return loss

    def on_checkpoint_written(self, step: int) -> None:
        for hook in self.checkpoint_written:
            hook(step)

    def on_step_done(self, step: int, loss: float) -> None:
        for hook in self.after_step:
            hook(step, loss)


def hooks_from_env(environ=os.environ) -> TrainerHooks:
    """Hooks installed by the entries of ``XLSTM_TRAIN_HOOKS`` (none when it is unset or empty)."""
    hooks = TrainerHooks()
    for entry in filter(None, (e.strip() for e in environ.get(HOOKS_ENV, "").split(","))):
        _load_installer(entry)(hooks)
    return hooks


def _load_installer(entry: str) -> Callable[[TrainerHooks], None]:
    target, sep, name = entry.rpartition(":")
    if not sep or not target or not name:
        raise ConfigError(f"{HOOKS_ENV}={entry!r}: expected module:function or path/to/file.py:function")
    if target.endswith(".py"):
        path = Path(target)
        spec = importlib.util.spec_from_file_location(f"_xlstm_train_hooks_{path.stem}", path)
        if spec is None or not path.is_file():
            raise ConfigError(f"{HOOKS_ENV}: {path} is not a Python file")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    else:
        module = importlib.import_module(target)
    installer = getattr(module, name, None)
    if not callable(installer):
        raise ConfigError(f"{HOOKS_ENV}={entry!r}: {target} has no function {name!r}")
    return installer
