"""Losses, logits and TP-independent state dicts of a tensor-parallel ``xLSTMLM``.

How the model is sharded is the plan in ``plan.py`` (``parallelize_model`` is defined there and re-exported
here); the LM head's logits stay sharded over the vocabulary: use ``lm_loss`` (``vocab_parallel_cross_entropy``)
or ``gather_logits``.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from xlstm_pretrain.model.lm import xLSTMLM

from .layers import shard_tensor, unshard_tensors
from .loss import vocab_parallel_cross_entropy
from .mappings import gather_from_tp
from .plan import parallelize_model

__all__ = ["fused_loss_applies", "gather_full_state_dict", "gather_logits", "lm_loss", "lm_loss_from_hidden",
           "load_full_state_dict", "parallelize_model"]


# ---- loss and logits ----------------------------------------------------------------------------


def lm_loss(model: xLSTMLM, logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = -100):
    """Per-token cross entropy for the (possibly vocab-sharded) logits of ``model``."""
    state = getattr(model, "parallel_state", None)
    if state is None or state.tp == 1:
        return vocab_parallel_cross_entropy(logits, labels, None, 0, ignore_index)
    return vocab_parallel_cross_entropy(logits, labels, state.tp_group, model.embedding.vocab_start, ignore_index,
                                        state.comm)


def fused_loss_applies(model: xLSTMLM) -> bool:
    """Whether the training loss goes through ``lm_loss_from_hidden`` (``model.cfg.fused_ops == "fla"``,
    TP == 1, a plain ``nn.Linear`` head). TP > 1 keeps the logits path: the head is vocab-parallel behind
    our sequence-parallel gather, and FLA's process-group variant does not plug into those mappings.
    Soft-capped logits (the large family) keep the logits path too: FLA's ``logit_softcapping`` computes the
    same cap * tanh(z / cap), but its tanh does not run under the Triton interpreter, so it is untested here."""
    state = getattr(model, "parallel_state", None)
    return (model.cfg.fused_ops == "fla" and (state is None or state.tp == 1)
            and type(model.lm_head) is nn.Linear and model.cfg.family != "large")


def lm_loss_from_hidden(model: xLSTMLM, hidden: torch.Tensor, labels: torch.Tensor, ignore_index: int = -100):
    """Sum of the token losses (a scalar; ignored labels add 0) from the output-normed hidden states
    (``model(..., return_hidden=True)``), = ``lm_loss(model, logits, labels).sum()``.

    FLA's fused linear cross entropy (``model/fused_fla.py``, logit soft cap included) where
    ``fused_fla.use_fla(hidden)`` holds and the head weight is a plain tensor; otherwise (CPU without the
    interpreter, fp64, ZeRO-3 partitioned weights: those carry ``ds_id`` and are only gathered inside the
    head's own forward) the head is applied as a module and the logits path computes the loss.
    Only for ``fused_loss_applies(model)`` models (TP == 1).
    """
    from xlstm_pretrain.model import fused_fla

    cap = model.cfg.logit_soft_cap if model.cfg.family == "large" else None
    weight = model.lm_head.weight
    if cap is None and fused_fla.use_fla(hidden) and not hasattr(weight, "ds_id"):
        return fused_fla.linear_cross_entropy_sum(hidden, weight, labels, cap, ignore_index)
    logits = model.logits_from_hidden(hidden)
    return vocab_parallel_cross_entropy(logits, labels, None, 0, ignore_index).sum()


def gather_logits(model: xLSTMLM, logits: torch.Tensor) -> torch.Tensor:
    """Full-vocabulary logits on every rank (for evaluation and tests; training never needs this)."""
    state = getattr(model, "parallel_state", None)
    return logits if state is None or state.tp == 1 else gather_from_tp(logits, state.tp_group, state.comm)


# ---- TP-independent state dicts -----------------------------------------------------------------


def _partition_info(model: nn.Module) -> dict[str, tuple[int, int]]:
    info = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        if getattr(p, "tensor_model_parallel", False):
            info[name] = (p.partition_dim, p.partition_chunks)
    return info


def gather_full_state_dict(model: xLSTMLM, tensors: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """The TP=1 state dict (names and shapes of the plain model) on every rank.

    ``tensors`` defaults to ``model.state_dict()``; pass e.g. gradients keyed by parameter name.
    """
    state = getattr(model, "parallel_state", None)
    tensors = model.state_dict() if tensors is None else tensors
    if state is None or state.tp == 1:
        return {k: v.detach().clone() for k, v in tensors.items()}
    info = _partition_info(model)
    out = {}
    for name, t in tensors.items():
        t = t.detach().contiguous()
        if name in info:
            dim, chunks = info[name]
            parts = [torch.empty_like(t) for _ in range(state.tp)]
            dist.all_gather(parts, t, group=state.tp_group)
            out[name] = unshard_tensors(parts, dim, chunks)
        else:
            out[name] = t.clone()
    return out


def load_full_state_dict(model: xLSTMLM, full: dict[str, torch.Tensor]) -> None:
    """Load a TP=1 state dict into a (possibly) tensor-parallel model: each rank keeps its slice."""
    state = getattr(model, "parallel_state", None)
    info = _partition_info(model) if state is not None and state.tp > 1 else {}
    local = {}
    for name, t in full.items():
        if name in info:
            dim, chunks = info[name]
            local[name] = shard_tensor(t, dim, chunks, state.tp_rank, state.tp)
        else:
            local[name] = t
    model.load_state_dict(local)
