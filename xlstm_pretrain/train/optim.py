"""AdamW with the official xLSTM weight-decay groups, and the learning-rate schedules.

Weight decay (xlstm_pretrain/REFERENCE.md §4.2, the NeurIPS code's ``WeightDecayOptimGroupMixin``): a parameter
is decayed iff ``"weight"`` is in its name and ``"norm"`` is not, and it is not the token embedding
(unless ``optim.weight_decay_on_embedding``). So norms, biases (gate biases included), the learnable
skip and the sLSTM recurrent kernel and bias are not decayed; projection, conv, gate and LM-head weights
are. For the large family this is the xlstm-jax rule too (decay on Dense kernels only). Parameter
names are those of the plain model (tensor parallelism keeps them), so the groups do not depend on TP.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .config import OptimConfig


def weight_decay_groups(model: nn.Module, cfg: OptimConfig) -> list[dict]:
    """[{params: decayed, weight_decay: wd}, {params: the rest, weight_decay: 0}] (tied weights once)."""
    embedding = getattr(getattr(model, "embedding", None), "weight", None)
    decay, no_decay, seen = [], [], set()
    for name, p in model.named_parameters():
        if id(p) in seen or not p.requires_grad:
            continue
        seen.add(id(p))
        is_embedding = p is embedding and not cfg.weight_decay_on_embedding
        if "weight" in name and "norm" not in name and not is_embedding:
            decay.append(p)
        else:
            no_decay.append(p)
    return [{"params": decay, "weight_decay": cfg.weight_decay, "name": "decay"},
            {"params": no_decay, "weight_decay": 0.0, "name": "no_decay"}]


def decay_names(model: nn.Module, cfg: OptimConfig) -> tuple[list[str], list[str]]:
    """(decayed names, other names): the groups above by parameter name, for tests and the run log."""
    groups = weight_decay_groups(model, cfg)
    ids = {id(p) for p in groups[0]["params"]}
    names = dict((id(p), n) for n, p in reversed(list(model.named_parameters())))
    return sorted(names[i] for i in ids), sorted(n for i, n in names.items() if i not in ids)


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.AdamW:
    """A torch AdamW (handed to DeepSpeed, which shards its state under ZeRO). The lr is set every step."""
    return torch.optim.AdamW(weight_decay_groups(model, cfg), lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps,
                             foreach=False)


class LRSchedule:
    """lr as a pure function of the optimizer step (see ``OptimConfig`` for the formulas).

    Being stateless, it resumes exactly from the step number alone; ``state_dict`` records it anyway.
    """

    def __init__(self, cfg: OptimConfig, total_steps: int):
        self.cfg, self.total = cfg, total_steps
        self.cooldown_start = total_steps - cfg.cooldown_steps
        self.decay_steps = cfg.decay_steps or max(self.cooldown_start - cfg.warmup_steps, 1)

    def main(self, step: int) -> float:
        c = self.cfg
        if step < c.warmup_steps:
            return c.lr * (step + 1) / c.warmup_steps
        s = step - c.warmup_steps
        if c.schedule == "cosine":
            lr_min = c.min_lr_ratio * c.lr
            return lr_min + (c.lr - lr_min) * 0.5 * (1 + math.cos(math.pi * min(s / self.decay_steps, 1.0)))
        if c.schedule == "exponential":
            return c.lr * c.min_lr_ratio ** (s / self.decay_steps)
        return c.lr  # wsd (stable phase), constant

    def __call__(self, step: int) -> float:
        c = self.cfg
        if c.cooldown_steps == 0 or step < self.cooldown_start:
            return self.main(step)
        start, end = self.main(self.cooldown_start), c.cooldown_min_ratio * c.lr
        progress = (step - self.cooldown_start + 1) / c.cooldown_steps
        weight = 1 - progress if c.cooldown_shape == "linear" else 1 - math.sqrt(progress)
        return end + (start - end) * weight

    def state_dict(self, step: int) -> dict:
        return {"step": step, "lr": self(step), "total_steps": self.total, "schedule": self.cfg.schedule}


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
