"""xLSTMLM: token embedding -> blocks -> output norm -> LM head, for both families. Read top to bottom."""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from .blocks_large import LargeBlock
from .blocks_paper import PaperMLSTMBlock, PaperSLSTMBlock
from .components import LayerNorm, RMSNorm, set_fused_ops, small_init_, soft_cap, upcast
from .config import ModelConfig


class xLSTMLM(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        d = cfg.embedding_dim
        device = torch.get_default_device()  # honours an enclosing `with torch.device(...)`
        # The structure is built on the meta device (nothing allocated, no random numbers drawn); the
        # weights are then allocated and initialised unit by unit in init_units() order, so the values
        # depend only on the seed, and a sharded build (parallel/materialize.py) can initialise one full
        # unit at a time and keep its slice: it gets exactly these weights without ever holding them all.
        with torch.device("meta"):
            self.embedding = nn.Embedding(cfg.vocab_size, d)
            if cfg.family == "paper":
                block_cls = {"mlstm": PaperMLSTMBlock, "slstm": PaperSLSTMBlock}
                self.blocks = nn.ModuleList(block_cls[t](cfg, idx) for idx, t in enumerate(cfg.block_types))
                self.out_norm = LayerNorm(d)
            else:
                self.blocks = nn.ModuleList(LargeBlock(cfg, idx) for idx in range(cfg.num_blocks))
                self.out_norm = RMSNorm(d, cfg.norm_eps)
            self.lm_head = nn.Linear(d, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.embedding.weight
        set_fused_ops(self, cfg.fused_ops)
        if device.type != "meta":
            materialize_(self, device)

    def init_units(self):
        """(submodule name, initialiser) in initialisation order: the official initialisation of each
        family (xlstm_pretrain/REFERENCE.md §4). The random stream is consumed in this order."""
        d = self.cfg.embedding_dim
        yield "embedding", lambda m: small_init_(m.weight, d)
        for idx in range(len(self.blocks)):
            yield f"blocks.{idx}", lambda m: m.reset_parameters()
        yield "out_norm", lambda m: m.reset_parameters()
        if not self.cfg.tie_embeddings:
            yield "lm_head", lambda m: small_init_(m.weight, d)

    def reset_parameters(self):
        for name, init in self.init_units():
            init(self.get_submodule(name))

    def forward(self, input_ids, state=None, doc_boundaries=None, return_state=False, return_hidden=False):
        """input_ids (B, S) -> logits (B, S, V) [, new state].

        return_hidden: return the output-normed hidden states (B, S, D) instead of the logits, for a loss
        that applies the LM head itself (``parallel.lm_loss_from_hidden``: fused linear cross entropy).

        state: list with one entry per block (as returned with ``return_state=True``), or None for the
        zero state. doc_boundaries: optional bool (B, S), True at the first token of each packed document;
        every block resets its recurrent and conv state there.
        """
        if state is not None and len(state) != len(self.blocks):
            raise ValueError(f"state has {len(state)} entries, the model has {len(self.blocks)} blocks")
        x = self.embedding(input_ids)
        new_state = []
        for idx, block in enumerate(self.blocks):
            x, block_state = block(x, None if state is None else state[idx], doc_boundaries, return_state)
            new_state.append(block_state)
        if return_hidden:
            hidden = self.out_norm(x)
            return (hidden, new_state) if return_state else hidden
        logits = self.logits_from_hidden(self.out_norm(x))
        return (logits, new_state) if return_state else logits

    def logits_from_hidden(self, hidden: torch.Tensor) -> torch.Tensor:
        """The LM head on output-normed hidden states, and the large family's logit soft cap (in fp32, or
        fp64 for an fp64 model). Under TP the logits are this rank's vocabulary shard."""
        logits = self.lm_head(hidden)
        if self.cfg.family == "large":
            logits = soft_cap(upcast(logits), self.cfg.logit_soft_cap)
        return logits


def swap_parameter_(param: nn.Parameter, data: torch.Tensor) -> None:
    """Give ``param`` new storage (e.g. meta -> a device) keeping the Python object: ties, hooks and
    attributes (tensor_model_parallel, ...) that refer to it stay valid."""
    attrs = dict(param.__dict__)
    hooks = param._backward_hooks  # swap_tensors moves the C++ hook registration to the other tensor
    torch.utils.swap_tensors(param, nn.Parameter(data, requires_grad=param.requires_grad))
    param.__dict__.update(attrs)
    if hooks:
        param._backward_hooks = hooks  # the setter registers them with autograd again


def materialize_(model: xLSTMLM, device) -> None:
    """Allocate the meta model's weights on ``device`` and initialise them (init_units order)."""
    for name, init in model.init_units():
        unit = model.get_submodule(name)
        for p in unit.parameters():
            if p.is_meta:
                swap_parameter_(p, torch.empty_like(p, device=device))
        init(unit)
    left = [n for n, p in model.named_parameters() if p.is_meta]
    if left:
        raise RuntimeError(f"parameters not covered by init_units(): {left[:5]}")


def build_model(cfg: ModelConfig, device=None) -> xLSTMLM:
    """Build and initialise a model. ``device="meta"`` builds it without allocating memory."""
    with torch.device(device) if device is not None else contextlib.nullcontext():
        return xLSTMLM(cfg)


def count_params(model_or_cfg, exclude_embedding: bool = False) -> int:
    """Number of parameters (tied weights counted once). Accepts a model or a ModelConfig (built on meta)."""
    model = build_model(model_or_cfg, device="meta") if isinstance(model_or_cfg, ModelConfig) else model_or_cfg
    params = {id(p): p for p in model.parameters()}
    if exclude_embedding:
        params.pop(id(model.embedding.weight), None)
    return sum(p.numel() for p in params.values())
