"""Tensor-parallel layers built from the plain model's layers (weights sliced, names unchanged).

Every sharded parameter carries ``tensor_model_parallel=True``, ``partition_dim`` and
``partition_chunks`` (how many interleaved blocks the full tensor has along that dim, e.g. 2 for the
fused [x; z] up-projection): DeepSpeed's gradient-norm code reads the first attribute; our
state-dict gather/scatter reads the others.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .mappings import (all_reduce_grad_hook, copy_to_tp, gather_from_sequence, reduce_from_tp,
                       reduce_scatter_to_sequence, reduce_scatter_to_tp)
from .state import ParallelState


# ---- slicing ------------------------------------------------------------------------------------


def shard_tensor(full: torch.Tensor, dim: int, chunks: int, rank: int, world: int) -> torch.Tensor:
    """This rank's slice: each of the ``chunks`` blocks along ``dim`` is split ``world`` ways."""
    blocks = full.chunk(chunks, dim=dim)
    if any(b.shape[dim] % world for b in blocks):
        raise ValueError(f"cannot shard a tensor of shape {tuple(full.shape)} along dim {dim} "
                         f"({chunks} block(s)) across {world} ranks")
    return torch.cat([b.chunk(world, dim=dim)[rank] for b in blocks], dim=dim).clone()


def unshard_tensors(locals_: list[torch.Tensor], dim: int, chunks: int) -> torch.Tensor:
    """Inverse of shard_tensor over all ranks' slices (in rank order)."""
    per_rank = [t.chunk(chunks, dim=dim) for t in locals_]
    return torch.cat([torch.cat([r[c] for r in per_rank], dim=dim) for c in range(chunks)], dim=dim)


def sharded_parameter(full: torch.Tensor, state: ParallelState, dim: int, chunks: int = 1) -> nn.Parameter:
    p = nn.Parameter(shard_tensor(full.detach(), dim, chunks, state.tp_rank, state.tp), requires_grad=full.requires_grad)
    p.tensor_model_parallel, p.partition_dim, p.partition_chunks = True, dim, chunks
    return p


def replicated_parameter(full: torch.Tensor, state: ParallelState) -> nn.Parameter:
    """A copy of a parameter every TP rank holds whole. Under sequence parallelism it is applied to this
    rank's part of the sequence only (norms, row-parallel biases), so its gradient is summed over TP."""
    p = nn.Parameter(full.detach().clone(), requires_grad=full.requires_grad)
    if state.sequence_parallel:
        p.sequence_parallel = True
        p.register_hook(all_reduce_grad_hook(state.tp_group, state.comm))
    return p


# ---- entering / leaving a TP region -------------------------------------------------------------


def enter_tp_region(x: torch.Tensor, state: ParallelState) -> torch.Tensor:
    """Replicated (or, with SP, sequence-sharded) activations -> the full input every TP rank needs."""
    enter = gather_from_sequence if state.sequence_parallel else copy_to_tp
    return enter(x, state.tp_group, state.comm)


def exit_tp_region(partial: torch.Tensor, state: ParallelState) -> torch.Tensor:
    """Per-rank partial sums -> their sum, replicated (or, with SP, sequence-sharded)."""
    leave = reduce_scatter_to_sequence if state.sequence_parallel else reduce_from_tp
    return leave(partial, state.tp_group, state.comm)


# ---- layers -------------------------------------------------------------------------------------


class ColumnParallelLinear(nn.Module):
    """Output features split across TP ranks. ``enter_region`` folds in the input all-gather (SP) or
    the identity/all-reduce pair; pass False when the caller already entered the region once for
    several projections of the same input."""

    def __init__(self, linear: nn.Linear, state: ParallelState, chunks: int = 1, enter_region: bool = True):
        super().__init__()
        self.state, self.enter_region = state, enter_region
        self.in_features = linear.in_features
        self.out_features = linear.out_features // state.tp
        self.weight = sharded_parameter(linear.weight, state, 0, chunks)
        self.bias = sharded_parameter(linear.bias, state, 0, chunks) if linear.bias is not None else None

    def forward(self, x):
        if self.enter_region:
            x = enter_tp_region(x, self.state)
        return F.linear(x, self.weight, self.bias)


class RowParallelLinear(nn.Module):
    """Input features split across TP ranks; partial outputs summed (all-reduce, or reduce-scatter
    along the sequence with SP). The bias is replicated and added once, after the reduction."""

    def __init__(self, linear: nn.Linear, state: ParallelState, chunks: int = 1):
        super().__init__()
        self.state = state
        self.in_features = linear.in_features // state.tp
        self.out_features = linear.out_features
        self.weight = sharded_parameter(linear.weight, state, 1, chunks)
        self.bias = replicated_parameter(linear.bias, state) if linear.bias is not None else None

    def forward(self, x):
        y = exit_tp_region(F.linear(x, self.weight), self.state)
        return y + self.bias if self.bias is not None else y


class HeadParallelGate(nn.Module):
    """Gate pre-activations of *all* heads from features split across ranks (the paper mLSTM block's
    Linear(concat(q, k, v) -> NH)): each rank computes partial pre-activations for every head from
    its q/k/v columns; a reduce-scatter over the head dim sums them and leaves each rank its heads."""

    def __init__(self, linear: nn.Linear, state: ParallelState, input_chunks: int):
        super().__init__()
        self.state = state
        self.weight = sharded_parameter(linear.weight, state, 1, input_chunks)
        self.bias = sharded_parameter(linear.bias, state, 0) if linear.bias is not None else None

    def forward(self, x_local):
        y = reduce_scatter_to_tp(F.linear(x_local, self.weight), self.state.tp_group, self.state.comm)
        return y + self.bias if self.bias is not None else y


class VocabParallelEmbedding(nn.Module):
    """Vocabulary rows split across TP ranks: ids outside this rank's range look up zeros, then the
    ranks' rows are summed (all-reduce, or reduce-scatter along the sequence with SP)."""

    def __init__(self, embedding: nn.Embedding, state: ParallelState):
        super().__init__()
        self.state = state
        self.num_embeddings = embedding.num_embeddings
        per_rank = embedding.num_embeddings // state.tp
        self.vocab_start, self.vocab_end = state.tp_rank * per_rank, (state.tp_rank + 1) * per_rank
        self.weight = sharded_parameter(embedding.weight, state, 0)

    def forward(self, ids):
        outside = (ids < self.vocab_start) | (ids >= self.vocab_end)
        local = (ids - self.vocab_start).masked_fill(outside, 0)
        emb = F.embedding(local, self.weight).masked_fill(outside[..., None], 0.0)
        return exit_tp_region(emb, self.state)
