"""Apply tensor (and Megatron sequence) parallelism to a plain ``xLSTMLM`` from outside.

The plain model is built on every rank from the same seed (or loaded from a TP=1 checkpoint); this
module swaps its projections for column/row-parallel ones, slices per-head/per-channel parameters to
the local heads, and adds the collectives at region boundaries with forward hooks. Parameter names
stay those of the plain model, so a TP=N model holds exactly the TP=1 weights, sliced.

Regions per block (SP = sequence parallel: activations between regions are split along the sequence):
- paper mLSTM layer: proj_up is column-parallel ([x_m; z] split by heads), conv/q/k/v/norm/skip are
  local to the heads, the gates on concat(q, k, v) reduce-scatter partial pre-activations to the local
  heads (B*S*NH floats), proj_down is row-parallel.
- paper sLSTM layer (no output projection): the input is split by channels (heads) on entry and
  gathered back on exit; the gated FFN after it is column/row-parallel.
- large mLSTM layer and SwiGLU: input entered once, q/k/v/o/i/f and up/gate column-parallel,
  out/down projections row-parallel.
- embedding: vocab-parallel; LM head: column-parallel over the vocabulary (logits stay sharded; use
  ``vocab_parallel_cross_entropy`` or ``gather_logits``).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from xlstm_pretrain.model.blocks_large import LargeBlock
from xlstm_pretrain.model.blocks_paper import PaperMLSTMBlock, PaperSLSTMBlock
from xlstm_pretrain.model.components import soft_cap
from xlstm_pretrain.model.lm import xLSTMLM

from .config import ParallelConfig, check_layout
from .layers import (ColumnParallelLinear, HeadParallelGate, RowParallelLinear, VocabParallelEmbedding,
                     enter_tp_region, mark_sequence_parallel_, shard_parameter_, shard_tensor, unshard_tensors)
from .loss import vocab_parallel_cross_entropy
from .mappings import gather_from_tp, sequence_to_tp, split_to_tp, tp_to_sequence
from .state import ParallelState


def parallelize_model(model: xLSTMLM, state: ParallelState) -> xLSTMLM:
    """Shard ``model`` in place for ``state.tp`` ranks (no-op for tp=1)."""
    model.parallel_state = state
    if state.tp == 1:
        return model
    check_layout(model.cfg, ParallelConfig(state.tp, state.cp, state.sequence_parallel), state.tp * state.cp * state.dp)
    tied = model.cfg.tie_embeddings
    model.embedding = VocabParallelEmbedding(model.embedding, state)
    for block in model.blocks:
        if isinstance(block, PaperMLSTMBlock):
            _parallelize_paper_mlstm(block, state)
        elif isinstance(block, PaperSLSTMBlock):
            _parallelize_paper_slstm(block, state)
        elif isinstance(block, LargeBlock):
            _parallelize_large(block, state)
        else:
            raise TypeError(f"no tensor-parallel plan for block type {type(block).__name__}")
    model.lm_head = ColumnParallelLinear(model.lm_head, state)
    if tied:
        model.lm_head.weight = model.embedding.weight
    for p in model.out_norm.parameters():
        mark_sequence_parallel_(p, state)
    return model


def _enter_hook(state):
    def hook(module, args):
        return (enter_tp_region(args[0], state), *args[1:])

    return hook


def _shard_conv(conv, state: ParallelState) -> None:
    """A depthwise conv over channels that belong to heads: keep the local heads' channels."""
    shard_parameter_(conv, "weight", state, 0)
    shard_parameter_(conv, "bias", state, 0)
    conv.channels //= state.tp


def _parallelize_paper_mlstm(block: PaperMLSTMBlock, state: ParallelState) -> None:
    tp = state.tp
    for p in block.norm.parameters():
        mark_sequence_parallel_(p, state)
    layer = block.mlstm
    layer.proj_up = ColumnParallelLinear(layer.proj_up, state, chunks=2)  # [x_m; z], each split by heads
    layer.inner_dim //= tp
    layer.num_heads //= tp
    _shard_conv(layer.conv, state)
    for proj in (layer.q_proj, layer.k_proj, layer.v_proj):
        shard_parameter_(proj, "weight", state, 0)
        proj.num_blocks //= tp
    layer.igate = HeadParallelGate(layer.igate, state, input_chunks=3)  # input is [q; k; v]
    layer.fgate = HeadParallelGate(layer.fgate, state, input_chunks=3)
    shard_parameter_(layer.outnorm, "weight", state, 0)
    layer.outnorm.num_heads //= tp
    shard_parameter_(layer, "learnable_skip", state, 0)
    layer.proj_down = RowParallelLinear(layer.proj_down, state)


def _parallelize_paper_slstm(block: PaperSLSTMBlock, state: ParallelState) -> None:
    tp = state.tp
    for norm in (block.norm, block.ffn_norm):
        for p in norm.parameters():
            mark_sequence_parallel_(p, state)
    layer = block.slstm
    if layer.conv is not None:
        _shard_conv(layer.conv, state)
    for gate in (layer.igate, layer.fgate, layer.zgate, layer.ogate):
        shard_parameter_(gate, "weight", state, 0)
        gate.num_blocks //= tp
    shard_parameter_(layer, "recurrent_kernel", state, 1)
    shard_parameter_(layer, "bias", state, 1)
    shard_parameter_(layer.group_norm, "weight", state, 0)
    layer.group_norm.num_heads //= tp
    layer.num_heads //= tp
    # The sLSTM has no projection: its heads read and write a slice of the channels. Enter by keeping
    # the local channels (with SP: all-to-all from sequence shards), leave by gathering them back.
    group = state.tp_group
    if state.sequence_parallel:
        layer.register_forward_pre_hook(lambda m, args: (sequence_to_tp(args[0], group), *args[1:]))
        layer.register_forward_hook(lambda m, args, out: (tp_to_sequence(out[0], group), out[1]))
    else:
        layer.register_forward_pre_hook(lambda m, args: (split_to_tp(args[0], group), *args[1:]))
        layer.register_forward_hook(lambda m, args, out: (gather_from_tp(out[0], group), out[1]))
    ffn = block.ffn
    ffn.proj_up = ColumnParallelLinear(ffn.proj_up, state, chunks=2)  # [gate; up]
    ffn.hidden //= tp
    ffn.proj_down = RowParallelLinear(ffn.proj_down, state)


def _parallelize_large(block: LargeBlock, state: ParallelState) -> None:
    tp = state.tp
    for norm in (block.norm_mlstm, block.norm_ffn):
        for p in norm.parameters():
            mark_sequence_parallel_(p, state)
    layer = block.mlstm_layer
    layer.register_forward_pre_hook(_enter_hook(state))  # one entry for six projections of the same input
    for name in ("q", "k", "v", "ogate_preact", "igate_preact", "fgate_preact"):
        setattr(layer, name, ColumnParallelLinear(getattr(layer, name), state, enter_region=False))
    shard_parameter_(layer.multihead_norm, "weight", state, 0)
    layer.multihead_norm.num_heads //= tp
    layer.num_heads //= tp
    layer.out_proj = RowParallelLinear(layer.out_proj, state)
    ffn = block.ffn
    ffn.register_forward_pre_hook(_enter_hook(state))
    ffn.proj_up_gate = ColumnParallelLinear(ffn.proj_up_gate, state, enter_region=False)
    ffn.proj_up = ColumnParallelLinear(ffn.proj_up, state, enter_region=False)
    ffn.proj_down = RowParallelLinear(ffn.proj_down, state)


# ---- loss and logits ----------------------------------------------------------------------------


def lm_loss(model: xLSTMLM, logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = -100):
    """Per-token cross entropy for the (possibly vocab-sharded) logits of ``model``."""
    state = getattr(model, "parallel_state", None)
    if state is None or state.tp == 1:
        return vocab_parallel_cross_entropy(logits, labels, None, 0, ignore_index)
    return vocab_parallel_cross_entropy(logits, labels, state.tp_group, model.embedding.vocab_start, ignore_index)


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
    logits = model.lm_head(hidden)
    if cap is not None:
        logits = soft_cap(logits.float(), cap)
    return vocab_parallel_cross_entropy(logits, labels, None, 0, ignore_index).sum()


def gather_logits(model: xLSTMLM, logits: torch.Tensor) -> torch.Tensor:
    """Full-vocabulary logits on every rank (for evaluation and tests; training never needs this)."""
    state = getattr(model, "parallel_state", None)
    return logits if state is None or state.tp == 1 else gather_from_tp(logits, state.tp_group)


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
