"""Import official checkpoints into our model, so users can continue training them.

- paper family: a state_dict (and config) of the official ``xlstm`` package's ``xLSTMLMModel``.
- large family: a state_dict of ``xlstm.xlstm_large`` ``xLSTMLarge`` or of ``transformers``
  ``xLSTMForCausalLM`` (the public xLSTM-7B layout), in "single" or "fused" weight mode.

Each importer returns a state_dict for ``xLSTMLM`` and checks that every source tensor was used
and every target tensor was filled (no silent drops), raising with the offending names otherwise.

Tied embeddings: our config ties exactly when the source computes with one shared tensor. The paper
family ties when the official config says ``tie_weights``; the large family never ties (transformers'
``xLSTMForCausalLM`` has no tied-weights entry, so ``tie_word_embeddings`` changes nothing there, and
``xLSTMLarge`` has no such option). A tied import leaves ``lm_head.weight`` out of the returned
state_dict (our lm_head *is* the embedding, as in our plain checkpoints), and refuses a source whose
lm_head differs from its embedding rather than drop it.
"""

from __future__ import annotations

import torch

from .config import ModelConfig

# ---- paper family (official xlstm.xLSTMLMModel) -------------------------------------------------

_PAPER_MLSTM_RENAMES = {
    "xlstm_norm.weight": "norm.weight",
    "xlstm.proj_up.weight": "mlstm.proj_up.weight",
    "xlstm.q_proj.weight": "mlstm.q_proj.weight",
    "xlstm.k_proj.weight": "mlstm.k_proj.weight",
    "xlstm.v_proj.weight": "mlstm.v_proj.weight",
    "xlstm.conv1d.conv.weight": "mlstm.conv.weight",
    "xlstm.conv1d.conv.bias": "mlstm.conv.bias",
    "xlstm.mlstm_cell.igate.weight": "mlstm.igate.weight",
    "xlstm.mlstm_cell.igate.bias": "mlstm.igate.bias",
    "xlstm.mlstm_cell.fgate.weight": "mlstm.fgate.weight",
    "xlstm.mlstm_cell.fgate.bias": "mlstm.fgate.bias",
    "xlstm.mlstm_cell.outnorm.weight": "mlstm.outnorm.weight",
    "xlstm.learnable_skip": "mlstm.learnable_skip",
    "xlstm.proj_down.weight": "mlstm.proj_down.weight",
}
_PAPER_SLSTM_RENAMES = {
    "xlstm_norm.weight": "norm.weight",
    "xlstm.conv1d.conv.weight": "slstm.conv.weight",
    "xlstm.conv1d.conv.bias": "slstm.conv.bias",
    # The official layer feeds its module named ``fgate`` into the input-gate slot and ``igate`` into
    # the forget-gate slot (xlstm/blocks/slstm/layer.py); our names follow the slot they feed.
    "xlstm.fgate.weight": "slstm.igate.weight",
    "xlstm.igate.weight": "slstm.fgate.weight",
    "xlstm.zgate.weight": "slstm.zgate.weight",
    "xlstm.ogate.weight": "slstm.ogate.weight",
    "xlstm.group_norm.weight": "slstm.group_norm.weight",
    "ffn_norm.weight": "ffn_norm.weight",
    "ffn.proj_up.weight": "ffn.proj_up.weight",
    "ffn.proj_down.weight": "ffn.proj_down.weight",
}


def config_from_official_paper(official_cfg, **overrides) -> ModelConfig:
    """ModelConfig from an official ``xLSTMLMModelConfig``; raises for features we do not model."""
    m = official_cfg.mlstm_block.mlstm if official_cfg.mlstm_block is not None else None
    s = official_cfg.slstm_block.slstm if official_cfg.slstm_block is not None else None
    ffn = official_cfg.slstm_block.feedforward if official_cfg.slstm_block is not None else None
    slstm_at = list(range(official_cfg.num_blocks)) if official_cfg.slstm_at == "all" else list(official_cfg.slstm_at)
    unsupported = []
    if official_cfg.bias or (m is not None and m.bias):
        unsupported.append("bias=True")
    if official_cfg.dropout or (m is not None and m.dropout) or (s is not None and s.dropout):
        unsupported.append("dropout > 0")
    if getattr(official_cfg, "add_embedding_dropout", False):
        unsupported.append("add_embedding_dropout")
    if not official_cfg.add_post_blocks_norm:
        unsupported.append("add_post_blocks_norm=False")
    if s is not None and slstm_at:
        if s.function != "slstm":
            unsupported.append(f"sLSTM function={s.function!r}")
        if s.gradient_recurrent_cut or s.gradient_recurrent_clipval is not None or s.forward_clipval is not None:
            unsupported.append("sLSTM gradient/forward clipping")
        if ffn.act_fn != "gelu":
            unsupported.append(f"FFN act_fn={ffn.act_fn!r}")
        if ffn.bias or ffn.dropout:
            unsupported.append("FFN bias/dropout")
    if m is not None and m.round_proj_up_dim_up is False:
        unsupported.append("round_proj_up_dim_up=False")
    if unsupported:
        raise ValueError(f"official xLSTMLMModelConfig uses features this project does not implement: {unsupported}")
    kw = dict(
        family="paper", vocab_size=official_cfg.vocab_size, embedding_dim=official_cfg.embedding_dim,
        num_blocks=official_cfg.num_blocks, context_length=official_cfg.context_length,
        tie_embeddings=official_cfg.tie_weights, slstm_at=slstm_at,
    )
    if m is not None:
        kw.update(num_heads=m.num_heads, mlstm_proj_factor=m.proj_factor, conv1d_kernel_size=m.conv1d_kernel_size,
                  qkv_proj_blocksize=m.qkv_proj_blocksize)
    if s is not None and slstm_at:
        kw.update(slstm_num_heads=s.num_heads, slstm_conv1d_kernel_size=s.conv1d_kernel_size,
                  ffn_proj_factor=ffn.proj_factor, ffn_round_up_to=ffn.round_proj_up_to_multiple_of)
    kw.update(overrides)
    cfg = ModelConfig(**kw)
    cfg.validate()
    return cfg


def import_official_paper_state_dict(sd: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """Official ``xLSTMLMModel.state_dict()`` -> our ``xLSTMLM`` state_dict (paper family)."""
    out, used = {}, set()

    def take(src, dst, fn=lambda t: t):
        if src not in sd:
            raise KeyError(f"official state_dict is missing {src!r}")
        out[dst] = fn(sd[src])
        used.add(src)

    take("token_embedding.weight", "embedding.weight")
    take("xlstm_block_stack.post_blocks_norm.weight", "out_norm.weight")
    head = _lm_head_entry(sd.get("lm_head.weight"), out["embedding.weight"], cfg)
    if head is not None:
        out["lm_head.weight"] = head
    used.add("lm_head.weight")
    for idx, kind in enumerate(cfg.block_types):
        src_prefix, dst_prefix = f"xlstm_block_stack.blocks.{idx}.", f"blocks.{idx}."
        renames = _PAPER_MLSTM_RENAMES if kind == "mlstm" else _PAPER_SLSTM_RENAMES
        for src, dst in renames.items():
            if kind == "slstm" and "conv" in src and cfg.slstm_conv1d_kernel_size == 0:
                continue
            take(src_prefix + src, dst_prefix + dst)
        if kind == "slstm":
            NH, DH = cfg.slstm_num_heads, cfg.embedding_dim // cfg.slstm_num_heads
            # vanilla internal layout: R_int[h, g*DH + e, d] multiplies y[h, d] into gate g, output e
            take(src_prefix + "xlstm.slstm_cell._recurrent_kernel_", dst_prefix + "slstm.recurrent_kernel",
                 lambda r: r.reshape(NH, 4, DH, DH).permute(1, 0, 3, 2).contiguous())
            take(src_prefix + "xlstm.slstm_cell._bias_", dst_prefix + "slstm.bias",
                 lambda b: b.reshape(4, NH, DH).contiguous())  # gate-major (i, f, z, o)
    leftover = [k for k in sd if k not in used and not k.endswith("causal_mask")]
    if leftover:
        raise ValueError(f"official state_dict has tensors with no counterpart in our model: {leftover[:8]}")
    return out


def from_official_paper_model(official_model, **cfg_overrides):
    """Build our model holding exactly the weights of an official ``xLSTMLMModel``."""
    from .lm import build_model

    cfg = config_from_official_paper(official_model.config, **cfg_overrides)
    model = build_model(cfg)
    load_imported_state_dict(model, import_official_paper_state_dict(official_model.state_dict(), cfg))
    return model


def _lm_head_entry(head: torch.Tensor | None, embedding: torch.Tensor, cfg: ModelConfig) -> torch.Tensor | None:
    """Our ``lm_head.weight`` for a source head (None if the source has none): None when tied."""
    if not cfg.tie_embeddings:
        if head is None:
            raise KeyError("state_dict has no 'lm_head.weight' but the config is untied (tie_embeddings=False)")
        return head
    if head is not None and not torch.equal(head, embedding):
        # tying would silently replace the trained output layer with the embedding
        raise ValueError("tie_embeddings=True but the state_dict's lm_head.weight differs from its embedding; "
                         "import it untied (tie_embeddings=False) to keep both")
    return None


def load_imported_state_dict(model, sd: dict[str, torch.Tensor]) -> None:
    """Strict load of an importer's state_dict; a tied model's lm_head (left out) is its embedding."""
    if model.cfg.tie_embeddings:
        sd = {**sd, "lm_head.weight": sd["embedding.weight"]}
    model.load_state_dict(sd)


# ---- large family (xlstm_large / transformers xLSTM) --------------------------------------------

_LARGE_BLOCK_KEYS = (
    "norm_mlstm.weight", "mlstm_layer.q.weight", "mlstm_layer.k.weight", "mlstm_layer.v.weight",
    "mlstm_layer.ogate_preact.weight", "mlstm_layer.igate_preact.weight", "mlstm_layer.igate_preact.bias",
    "mlstm_layer.fgate_preact.weight", "mlstm_layer.fgate_preact.bias", "mlstm_layer.multihead_norm.weight",
    "mlstm_layer.out_proj.weight", "norm_ffn.weight", "ffn.proj_up_gate.weight", "ffn.proj_up.weight",
    "ffn.proj_down.weight",
)


def config_from_hf(hf_cfg, **overrides) -> ModelConfig:
    """ModelConfig from a ``transformers`` ``xLSTMConfig`` (or an ``xlstm_large`` ``xLSTMLargeConfig``).

    Always untied: neither source ever ties its lm_head to the embedding (``xLSTMForCausalLM`` ignores
    ``tie_word_embeddings``, checked against transformers 5.24), so copying that flag would drop a
    distinct lm_head. ``tie_embeddings=True`` may still be passed as an override; the importer then
    requires the source's lm_head to equal its embedding."""
    get = lambda *names, default=None: next((getattr(hf_cfg, n) for n in names if getattr(hf_cfg, n, None) is not None), default)  # noqa: E731
    d = get("hidden_size", "embedding_dim")
    nb = get("num_hidden_layers", "num_blocks")
    if get("use_bias", default=False):
        raise ValueError("xLSTM config has use_bias=True, which this project does not implement")
    if not get("add_out_norm", default=True):
        raise ValueError("xLSTM config has add_out_norm=False, which this project does not implement")
    kw = dict(
        family="large", vocab_size=hf_cfg.vocab_size, embedding_dim=d, num_blocks=nb, num_heads=hf_cfg.num_heads,
        qk_dim_factor=hf_cfg.qk_dim_factor, v_dim_factor=hf_cfg.v_dim_factor,
        ffn_proj_factor=hf_cfg.ffn_proj_factor, ffn_round_up_to=hf_cfg.ffn_round_up_to_multiple_of,
        gate_soft_cap=hf_cfg.gate_soft_cap, logit_soft_cap=hf_cfg.output_logit_soft_cap,
        norm_eps=hf_cfg.norm_eps, eps=hf_cfg.eps, chunk_size=hf_cfg.chunk_size,
        tie_embeddings=False,
    )
    kw.update(overrides)
    cfg = ModelConfig(**kw)
    cfg.validate()
    return cfg


def import_large_state_dict(sd: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """xlstm_large / HF xLSTM state_dict (single or fused weights) -> our ``xLSTMLM`` state_dict."""
    sd = dict(sd)
    out = {}
    # embeddings: xlstm_large "embedding.weight", HF "backbone.embeddings.weight"
    for name in ("backbone.embeddings.weight", "embedding.weight"):
        if name in sd:
            out["embedding.weight"] = sd.pop(name)
            break
    out["out_norm.weight"] = sd.pop("backbone.out_norm.weight")
    if "embedding.weight" not in out:
        raise KeyError("xLSTM state_dict has no embedding ('backbone.embeddings.weight' or 'embedding.weight')")
    head = _lm_head_entry(sd.pop("lm_head.weight", None), out["embedding.weight"], cfg)
    if head is not None:
        out["lm_head.weight"] = head
    for idx in range(cfg.num_blocks):
        p = f"backbone.blocks.{idx}."
        _unfuse_large_block(sd, p, cfg)
        for key in _LARGE_BLOCK_KEYS:
            if p + key not in sd:
                raise KeyError(f"xLSTM state_dict is missing {p + key!r}")
            out[f"blocks.{idx}.{key}"] = sd.pop(p + key)
    if sd:
        raise ValueError(f"xLSTM state_dict does not match the config: unused {sorted(sd)[:8]}")
    return out


def _unfuse_large_block(sd: dict, p: str, cfg: ModelConfig) -> None:
    """weight_mode="fused" -> "single": split qkv_opreact [q; k; v; o], ifgate_preact [i; f], proj_up_gate_z."""
    if p + "mlstm_layer.qkv_opreact.weight" in sd:
        q, k, v, o = torch.split(sd.pop(p + "mlstm_layer.qkv_opreact.weight"),
                                 [cfg.qk_dim, cfg.qk_dim, cfg.v_dim, cfg.v_dim])
        sd.update({p + "mlstm_layer.q.weight": q, p + "mlstm_layer.k.weight": k,
                   p + "mlstm_layer.v.weight": v, p + "mlstm_layer.ogate_preact.weight": o})
    if p + "mlstm_layer.ifgate_preact.weight" in sd:
        NH = cfg.num_heads
        iw, fw = torch.split(sd.pop(p + "mlstm_layer.ifgate_preact.weight"), [NH, NH])
        ib, fb = torch.split(sd.pop(p + "mlstm_layer.ifgate_preact.bias"), [NH, NH])
        sd.update({p + "mlstm_layer.igate_preact.weight": iw, p + "mlstm_layer.igate_preact.bias": ib,
                   p + "mlstm_layer.fgate_preact.weight": fw, p + "mlstm_layer.fgate_preact.bias": fb})
    if p + "ffn.proj_up_gate_z.weight" in sd:
        gate, up = torch.split(sd.pop(p + "ffn.proj_up_gate_z.weight"), [cfg.ffn_dim, cfg.ffn_dim])
        sd.update({p + "ffn.proj_up_gate.weight": gate, p + "ffn.proj_up.weight": up})


def from_hf_model(hf_model, **cfg_overrides):
    """Build our model holding exactly the weights of a ``transformers`` ``xLSTMForCausalLM`` (or an
    ``xlstm_large`` ``xLSTMLarge``)."""
    from .lm import build_model

    cfg = config_from_hf(hf_model.config, **cfg_overrides)
    model = build_model(cfg)
    load_imported_state_dict(model, import_large_state_dict(hf_model.state_dict(), cfg))
    return model

