"""The parallel plan: how every layer of both model families is split across ranks, as data, and the one
function that applies it. To change how a layer is sharded, change its entry here.

Tensor parallelism (TP, with Megatron sequence parallelism, SP): ``MODEL_PLAN`` (embedding, output norm,
LM head) and ``BLOCK_PLANS`` (one table per block type) map submodule paths to a spec:

    Column(chunks, enter_region)   nn.Linear -> ColumnParallelLinear: output features split by heads; a
                                   fused projection of ``chunks`` blocks (e.g. [x_m; z]) splits each block
    Row(chunks)                    nn.Linear -> RowParallelLinear: input features split, partials summed
    HeadGate(input_chunks)         nn.Linear(features of all heads -> one value per head) -> HeadParallelGate
    VocabParallel()                nn.Embedding -> VocabParallelEmbedding (vocabulary rows split)
    Local(params, divide, region)  the module keeps this rank's heads / channels / hidden units: each
                                   parameter in ``params`` sliced along the dim given, each head or channel
                                   count named in ``divide`` divided by TP; ``region`` says how activations
                                   enter it: "enter" (once, for several column-parallel projections of the
                                   same input) or "channels" (a layer without projections, the sLSTM: its
                                   input is split by channels, its output gathered back)
    SequenceShared()               replicated weights (norms); under SP they see this rank's part of the
                                   sequence only, so their gradient is summed over TP

Regions per block (SP: activations between regions are split along the sequence):
- paper mLSTM layer: proj_up is column-parallel ([x_m; z] split by heads), conv/q/k/v/norm/skip are
  local to the heads, the gates on concat(q, k, v) reduce-scatter partial pre-activations to the local
  heads (B*S*NH floats), proj_down is row-parallel.
- paper sLSTM layer (no output projection): the input is split by channels (heads) on entry and
  gathered back on exit; the gated FFN after it is column/row-parallel.
- large mLSTM layer and SwiGLU: input entered once, q/k/v/o/i/f and up/gate column-parallel,
  out/down projections row-parallel.
- embedding: vocab-parallel; LM head: column-parallel over the vocabulary (logits stay sharded).
Every parameter must be named by the plan (``check_plan_covers``): a new layer cannot stay replicated, or
a new block type go unsharded, by accident.

Context parallelism (CP): ``CONTEXT_PARALLEL_PLAN`` maps each module type to the wrapper that passes
state across sequence shards (``context_parallel.py``).

``apply_plan`` rebuilds the module tree bottom-up: a module with a spec is replaced by what the spec
builds (new modules holding copies or slices of its weights; a CP wrapper around it), each ancestor of a
replaced module by a fresh copy holding the new children; untouched subtrees are kept. The input model's
modules are not modified (at degree 1 nothing is rebuilt: the input is returned, annotated). Parameter
names stay those of the plain model, so a TP=N model holds exactly the TP=1 weights, sliced.
Each plan is applied once per model: ``parallelize_model`` or ``apply_context_parallel`` on a model that
already went through it raises (a sharded model cannot be sliced again), and so does TP after CP.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Callable, ClassVar, Literal

from torch import nn

from xlstm_pretrain.model.blocks_large import LargeBlock
from xlstm_pretrain.model.blocks_paper import PaperMLSTMBlock, PaperSLSTMBlock
from xlstm_pretrain.model.cells import MLSTMCell, SLSTMCell
from xlstm_pretrain.model.components import CausalConv1d

from .config import ParallelConfig, check_layout
from .context_parallel import ContextParallelCausalConv1d, ContextParallelMLSTMCell, ContextParallelSLSTMCell
from .layers import (ColumnParallelLinear, HeadParallelGate, RowParallelLinear, VocabParallelEmbedding,
                     enter_tp_region, replicated_parameter, sharded_parameter)
from .mappings import gather_from_tp, sequence_to_tp, split_to_tp, tp_to_sequence
from .state import ParallelState

# ---- specs --------------------------------------------------------------------------------------
# ``spec.build(module, state)`` gets a fresh copy of the plain module (``apply_plan``), so a spec may change
# it; ``spec.covers(name)``: whether the spec decides how the module's own parameter ``name`` is held.


@dataclass(frozen=True)
class _LayerSpec:
    """The module is replaced by a tensor-parallel layer built from it (``layer(module, state, **fields)``),
    which holds all its parameters."""
    source: ClassVar[type[nn.Module]] = nn.Linear
    layer: ClassVar[type[nn.Module]]

    def covers(self, param: str) -> bool:
        return True

    def build(self, module: nn.Module, state: ParallelState) -> nn.Module:
        if not isinstance(module, self.source):
            raise TypeError(f"{self} applies to {self.source.__name__}, got {type(module).__name__}")
        return self.layer(module, state, **{f.name: getattr(self, f.name) for f in fields(self)})


@dataclass(frozen=True)
class Column(_LayerSpec):
    layer = ColumnParallelLinear
    chunks: int = 1
    enter_region: bool = True


@dataclass(frozen=True)
class Row(_LayerSpec):
    layer = RowParallelLinear
    chunks: int = 1


@dataclass(frozen=True)
class HeadGate(_LayerSpec):
    layer = HeadParallelGate
    input_chunks: int


@dataclass(frozen=True)
class VocabParallel(_LayerSpec):
    source = nn.Embedding
    layer = VocabParallelEmbedding


@dataclass(frozen=True)
class SequenceShared:
    """Replicated weights (norms), copied; under SP their gradient is summed over TP."""

    def covers(self, param: str) -> bool:
        return True

    def build(self, module: nn.Module, state: ParallelState) -> nn.Module:
        for name, p in module._parameters.items():
            if p is not None:
                module._parameters[name] = replicated_parameter(p, state)
        return module


@dataclass(frozen=True)
class Local:
    """The module keeps this rank's heads / channels / hidden units (see the module docstring)."""

    params: dict[str, int] = field(default_factory=dict)  # parameter name -> the dim that indexes heads/channels
    divide: tuple[str, ...] = ()  # head / channel / hidden-unit counts the module reads in forward
    region: Literal["enter", "channels"] | None = None

    def covers(self, param: str) -> bool:
        return param in self.params

    def build(self, module: nn.Module, state: ParallelState) -> nn.Module:
        for name, dim in self.params.items():
            p = getattr(module, name)
            if p is not None:  # an optional parameter (e.g. a conv without bias)
                module._parameters[name] = sharded_parameter(p, state, dim)
        for attr in self.divide:
            n = getattr(module, attr)
            if n % state.tp:
                raise ValueError(f"{type(module).__name__}.{attr}={n} is not divisible by tensor_parallel={state.tp}")
            setattr(module, attr, n // state.tp)
        if self.region == "enter":
            module.register_forward_pre_hook(lambda m, args: (enter_tp_region(args[0], state), *args[1:]))
        elif self.region == "channels":
            group, comm = state.tp_group, state.comm
            enter, leave = (sequence_to_tp, tp_to_sequence) if state.sequence_parallel else (split_to_tp, gather_from_tp)
            module.register_forward_pre_hook(lambda m, args: (enter(args[0], group, comm), *args[1:]))
            module.register_forward_hook(lambda m, args, out: (leave(out[0], group, comm), out[1]))
        return module


@dataclass(frozen=True)
class Wrap:
    """Context parallelism: the module, wrapped (it stays the wrapper's ``local``)."""
    wrapper: Callable[[nn.Module, ParallelState], nn.Module]

    def build(self, module: nn.Module, state: ParallelState) -> nn.Module:
        return self.wrapper(module, state)


Spec = Column | Row | HeadGate | VocabParallel | SequenceShared | Local | Wrap

# ---- the plans ----------------------------------------------------------------------------------

CONV = Local(params={"weight": 0, "bias": 0}, divide=("channels",))  # depthwise: channels belong to heads
HEADWISE = Local(params={"weight": 0}, divide=("num_blocks",))  # block-diagonal: one block per head group
HEAD_NORM = Local(params={"weight": 0}, divide=("num_heads",))  # per-head norm, per-channel scale

MODEL_PLAN: dict[str, Spec] = {
    "embedding": VocabParallel(),
    "out_norm": SequenceShared(),
    "lm_head": Column(),
}

BLOCK_PLANS: dict[type[nn.Module], dict[str, Spec]] = {
    PaperMLSTMBlock: {
        "norm": SequenceShared(),
        "mlstm": Local(params={"learnable_skip": 0}, divide=("inner_dim", "num_heads")),
        "mlstm.proj_up": Column(chunks=2),  # [x_m; z], each split by heads
        "mlstm.conv": CONV,
        "mlstm.q_proj": HEADWISE,
        "mlstm.k_proj": HEADWISE,
        "mlstm.v_proj": HEADWISE,
        "mlstm.igate": HeadGate(input_chunks=3),  # input is [q; k; v]
        "mlstm.fgate": HeadGate(input_chunks=3),
        "mlstm.outnorm": HEAD_NORM,
        "mlstm.proj_down": Row(),
    },
    PaperSLSTMBlock: {
        "norm": SequenceShared(),
        # no projection: its heads read and write a slice of the channels
        "slstm": Local(params={"recurrent_kernel": 1, "bias": 1}, divide=("num_heads",), region="channels"),
        "slstm.conv": CONV,  # optional (slstm_conv1d_kernel_size=0)
        "slstm.igate": HEADWISE,
        "slstm.fgate": HEADWISE,
        "slstm.zgate": HEADWISE,
        "slstm.ogate": HEADWISE,
        "slstm.group_norm": HEAD_NORM,
        "ffn_norm": SequenceShared(),
        "ffn": Local(divide=("hidden",)),
        "ffn.proj_up": Column(chunks=2),  # [gate; up]
        "ffn.proj_down": Row(),
    },
    LargeBlock: {
        "norm_mlstm": SequenceShared(),
        "mlstm_layer": Local(divide=("num_heads",), region="enter"),  # one entry for six projections
        **{f"mlstm_layer.{name}": Column(enter_region=False)
           for name in ("q", "k", "v", "ogate_preact", "igate_preact", "fgate_preact")},
        "mlstm_layer.multihead_norm": HEAD_NORM,
        "mlstm_layer.out_proj": Row(),
        "norm_ffn": SequenceShared(),
        "ffn": Local(region="enter"),
        "ffn.proj_up_gate": Column(enter_region=False),
        "ffn.proj_up": Column(enter_region=False),
        "ffn.proj_down": Row(),
    },
}

CONTEXT_PARALLEL_PLAN: dict[type[nn.Module], Spec] = {
    MLSTMCell: Wrap(ContextParallelMLSTMCell),
    SLSTMCell: Wrap(ContextParallelSLSTMCell),
    CausalConv1d: Wrap(ContextParallelCausalConv1d),
}

# ---- applying a plan ----------------------------------------------------------------------------


def tensor_parallel_specs(model: nn.Module) -> dict[str, Spec]:
    """The TP plan of ``model``, by full submodule path (optional submodules that are absent left out)."""
    specs = dict(MODEL_PLAN)
    for idx, block in enumerate(model.blocks):
        plan = BLOCK_PLANS.get(type(block))
        if plan is None:
            raise TypeError(f"no tensor-parallel plan for block type {type(block).__name__}: add one to "
                            "BLOCK_PLANS in xlstm_pretrain/parallel/plan.py")
        for path, spec in plan.items():
            if _submodule(block, path, f"blocks.{idx}") is not None:
                specs[f"blocks.{idx}.{path}"] = spec
    return specs


def _submodule(root: nn.Module, path: str, where: str) -> nn.Module | None:
    """``root.<path>``; None where the path ends in an optional submodule that is set to None."""
    module = root
    for atom in path.split("."):
        if atom in module._modules:
            module = module._modules[atom]
        elif getattr(module, atom, 0) is None:
            module = None
        else:
            raise ValueError(f"the parallel plan names {where}.{path}, which {type(root).__name__} does not have")
        if module is None:
            return None
    return module


def check_plan_covers(model: nn.Module, specs: dict[str, Spec]) -> None:
    """Raise if a parameter of ``model`` is named by no spec (neither sharded nor declared replicated)."""
    missing = []
    for name, _ in model.named_parameters(remove_duplicate=False):
        path, _, param = name.rpartition(".")
        spec = specs.get(path)
        if spec is None or not spec.covers(param):
            missing.append(name)
    if missing:
        raise ValueError(f"the tensor-parallel plan (xlstm_pretrain/parallel/plan.py) says nothing about "
                         f"{len(missing)} parameter(s): {missing[:6]}; give their modules an entry")


def _fresh_copy(module: nn.Module) -> nn.Module:
    """A new module object of the same class and attributes, with its own parameter/child/hook dicts (so
    changing the copy leaves ``module`` as it was); tensors and child modules are shared until replaced."""
    new = object.__new__(type(module))
    new.__dict__.update({k: v.copy() if isinstance(v, (dict, set, list)) else v for k, v in module.__dict__.items()})
    return new


def apply_plan(model: nn.Module, spec_at: Callable[[str, nn.Module], Spec | None], state: ParallelState) -> nn.Module:
    """The model with every submodule that has a spec (``spec_at(path, module)``) replaced by what the spec
    builds, and its ancestors by fresh copies holding the new children; ``model`` itself is not modified."""

    def rebuild(module: nn.Module, path: str) -> nn.Module:
        children = {}
        for name, child in module.named_children():
            new_child = rebuild(child, f"{path}.{name}" if path else name)
            if new_child is not child:
                children[name] = new_child
        spec = spec_at(path, module)
        if spec is None and not children:
            return module
        new = _fresh_copy(module)
        new._modules.update(children)
        return new if spec is None else spec.build(new, state)

    return rebuild(model, "")


def _annotate(model: nn.Module, plan: str, state: ParallelState) -> nn.Module:
    model.parallel_state = state
    model.parallel_plans = (*getattr(model, "parallel_plans", ()), plan)
    return model


def parallelize_model(model: nn.Module, state: ParallelState) -> nn.Module:
    """This rank's tensor-parallel model (sequence-parallel too if ``state.sequence_parallel``), built from
    the plain ``model`` by the plan above; a fresh annotated root sharing everything, for tp=1. Raises if the
    model is already tensor- or context-parallel."""
    applied = getattr(model, "parallel_plans", ())
    if "tensor" in applied:
        raise RuntimeError(f"parallelize_model: this model is already tensor-parallel (TP="
                           f"{model.parallel_state.tp}); the plan slices a plain model, once")
    if "context" in applied:
        raise RuntimeError("parallelize_model: apply tensor parallelism before context parallelism "
                           "(apply_context_parallel(parallelize_model(model, state), state))")
    if state.tp == 1:  # nothing to shard; a fresh root all the same, so ``model`` stays plain
        return _annotate(_fresh_copy(model), "tensor", state)
    check_layout(model.cfg, ParallelConfig(state.tp, state.cp, state.sequence_parallel), state.tp * state.cp * state.dp)
    specs = tensor_parallel_specs(model)
    check_plan_covers(model, specs)
    new = apply_plan(model, lambda path, module: specs.get(path), state)
    if model.cfg.tie_embeddings:
        new.lm_head.weight = new.embedding.weight
    return _annotate(new, "tensor", state)


def apply_context_parallel(model: nn.Module, state: ParallelState) -> nn.Module:
    """``model`` with every cell and causal conv wrapped in its context-parallel version (for cp=1, a fresh
    annotated root sharing everything). CP adds no parameters: the wrapped modules keep theirs, under the
    same names. Raises if the model is already context-parallel."""
    if "context" in getattr(model, "parallel_plans", ()):
        raise RuntimeError("apply_context_parallel: this model is already context-parallel; its cells are "
                           "wrapped once")
    if state.cp == 1:  # nothing to wrap; a fresh root all the same, so ``model`` stays plain
        return _annotate(_fresh_copy(model), "context", state)
    new = apply_plan(model, lambda path, module: CONTEXT_PARALLEL_PLAN.get(type(module)), state)
    return _annotate(new, "context", state)
