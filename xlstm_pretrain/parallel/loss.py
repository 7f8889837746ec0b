"""Cross entropy over vocabulary-sharded logits: three small all-reduces (max, target logit, sum-exp),
never a vocabulary-sized one."""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F

from .mappings import _all_reduce, _world


class _VocabParallelCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, target, vocab_start, group, comm):
        logits = logits.float()
        local_max = logits.amax(-1)
        global_max = _all_reduce(local_max, group, "vocab_ce.max", op=dist.ReduceOp.MAX, comm=comm)
        shifted = logits - global_max[..., None]
        V_local = logits.shape[-1]
        outside = (target < vocab_start) | (target >= vocab_start + V_local)
        local_target = (target - vocab_start).masked_fill(outside, 0)
        target_logit = shifted.gather(-1, local_target[..., None])[..., 0].masked_fill(outside, 0.0)
        target_logit = _all_reduce(target_logit, group, "vocab_ce.target", comm=comm)
        exp = shifted.exp()
        sum_exp = _all_reduce(exp.sum(-1), group, "vocab_ce.sumexp", comm=comm)
        loss = sum_exp.log() - target_logit
        ctx.save_for_backward(exp / sum_exp[..., None], local_target, outside)
        return loss

    @staticmethod
    def backward(ctx, g):
        softmax, local_target, outside = ctx.saved_tensors
        grad = softmax.clone()
        grad.scatter_add_(-1, local_target[..., None], -(~outside).to(grad.dtype)[..., None])
        return grad * g[..., None], None, None, None, None


def vocab_parallel_cross_entropy(logits, labels, group=None, vocab_start: int = 0, ignore_index: int = -100,
                                 comm=None):
    """Per-token loss (shape of ``labels``; 0 where ``labels == ignore_index``) from this rank's vocab slice.
    ``comm``: the ``mappings.CommContext`` that logs the three all-reduces (None: not logged)."""
    ignore = labels == ignore_index
    safe = labels.masked_fill(ignore, 0)
    if _world(group) == 1:
        loss = F.cross_entropy(logits.float().flatten(0, -2), safe.flatten(), reduction="none").view_as(labels)
    else:
        loss = _VocabParallelCrossEntropy.apply(logits, safe, vocab_start, group, comm)
    return loss.masked_fill(ignore, 0.0)
