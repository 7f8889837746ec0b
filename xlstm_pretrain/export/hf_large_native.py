"""Large family <-> ``transformers`` ``xLSTMForCausalLM`` (``model_type: xlstm``, the public xLSTM-7B layout).

Tensor names: ours are HF's minus the ``backbone.`` prefix, except the embedding
(``embedding.weight`` <-> ``backbone.embeddings.weight``). Sizes: HF builds its layers like we do
(qk_dim = int(d * qk_dim_factor)), but sizes its generation cache with its own rounding
(``xLSTMConfig.qk_dim = round_up(d * qk_dim_factor, 64)``), and rounds the FFN width with
``((x + m - 1) // m) * m``, which differs from a true ceiling when ``d * ffn_proj_factor`` is not an
integer. ``check_hf_expressible`` compares what HF will compute with what we compute and refuses
any difference; facts read from transformers 5.23 ``models/xlstm/configuration_xlstm.py``.
"""

from __future__ import annotations

from types import SimpleNamespace

import torch

from xlstm_pretrain.model.config import ModelConfig
from xlstm_pretrain.model.importers import config_from_hf, import_large_state_dict

from .errors import ExportError

# Runtime choices of transformers' xLSTM (kernels, mode, state dtype). They do not change the function
# computed; we write HF's own defaults, which run everywhere (pure PyTorch kernels) and can generate.
HF_RUNTIME_FIELDS = {
    "chunkwise_kernel": "chunkwise--native_autograd",
    "sequence_kernel": "native_sequence__native",
    "step_kernel": "native",
    "mode": "inference",
    "return_last_states": True,
    "autocast_kernel_dtype": "bfloat16",
    "inference_state_dtype": "float32",
    "max_inference_chunksize": 16384,
    "weight_mode": "single",
    "use_cache": True,
}


# xLSTMConfig's defaults for the fields that define the model: transformers fills a config.json key that is
# absent with these, so an import must too.
HF_MODEL_DEFAULTS = {
    "vocab_size": 50304, "hidden_size": 4096, "num_hidden_layers": 32, "num_heads": 8, "use_bias": False,
    "norm_reduction_force_float32": True, "tie_word_embeddings": False, "add_out_norm": True, "norm_eps": 1e-6,
    "qk_dim_factor": 0.5, "v_dim_factor": 1.0, "chunk_size": 64, "eps": 1e-6, "ffn_proj_factor": 2.667,
    "ffn_round_up_to_multiple_of": 64, "gate_soft_cap": 15.0, "output_logit_soft_cap": 30.0,
}


def hf_round_up(x: float, multiple: int) -> int:
    """transformers' (and xlstm_large's) ``round_up_to_next_multiple_of``, reproduced exactly."""
    return int(((x + multiple - 1) // multiple) * multiple)


def hf_sizes(cfg: ModelConfig) -> dict[str, int]:
    """The sizes transformers derives from the config.json we would write."""
    d, NH = cfg.embedding_dim, cfg.num_heads
    return {
        "qk_dim (layers)": int(d * cfg.qk_dim_factor),
        "v_dim (layers)": int(d * cfg.v_dim_factor),
        "qk_head_dim (cache)": hf_round_up(d * cfg.qk_dim_factor, 64) // NH,
        "v_head_dim (cache)": hf_round_up(d * cfg.v_dim_factor, 64) // NH,
        "ffn_dim": hf_round_up(d * cfg.ffn_proj_factor, cfg.ffn_round_up_to),
    }


def check_hf_expressible(cfg: ModelConfig, untie_embeddings: bool = False) -> None:
    """Raise ExportError listing every way transformers' xLSTM would not compute exactly our model."""
    if cfg.family != "large":
        raise ExportError(f"only the large family maps to transformers' xLSTMForCausalLM, got family={cfg.family!r}")
    problems = []
    if cfg.tie_embeddings and not untie_embeddings:
        problems.append(
            "tie_embeddings=True: transformers' xLSTMForCausalLM never ties lm_head to the embedding (it has no "
            "tied-weights entry, whatever tie_word_embeddings says), so fine-tuning it would untie them; pass "
            "untie_embeddings=True (--untie-embeddings) to export lm_head as a copy of the embedding")
    ours = {
        "qk_dim (layers)": cfg.qk_dim, "v_dim (layers)": cfg.v_dim, "qk_head_dim (cache)": cfg.qk_head_dim,
        "v_head_dim (cache)": cfg.v_head_dim, "ffn_dim": cfg.ffn_dim,
    }
    for name, hf_value in hf_sizes(cfg).items():
        if hf_value != ours[name]:
            problems.append(f"{name}: transformers computes {hf_value}, this model uses {ours[name]} "
                            f"(embedding_dim={cfg.embedding_dim}, num_heads={cfg.num_heads}, qk_dim_factor="
                            f"{cfg.qk_dim_factor}, v_dim_factor={cfg.v_dim_factor}, ffn_proj_factor="
                            f"{cfg.ffn_proj_factor}, ffn_round_up_to={cfg.ffn_round_up_to})")
    if problems:
        raise ExportError("cannot export to transformers xLSTM without changing the model:\n  - "
                          + "\n  - ".join(problems))


def large_config_to_hf(cfg: ModelConfig, dtype: torch.dtype, token_ids: dict[str, int | None]) -> dict:
    """config.json of transformers' xLSTMConfig for ``cfg`` (every field written explicitly)."""
    out = {
        "architectures": ["xLSTMForCausalLM"],
        "model_type": "xlstm",
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.embedding_dim,
        "embedding_dim": cfg.embedding_dim,
        "num_hidden_layers": cfg.num_blocks,
        "num_blocks": cfg.num_blocks,
        "num_heads": cfg.num_heads,
        "use_bias": False,
        "norm_reduction_force_float32": True,  # our norms always reduce in fp32
        "tie_word_embeddings": False,  # HF never ties; a tied model is exported untied (see check_hf_expressible)
        "add_out_norm": True,
        "norm_eps": cfg.norm_eps,
        "qk_dim_factor": cfg.qk_dim_factor,
        "v_dim_factor": cfg.v_dim_factor,
        "chunk_size": cfg.chunk_size,
        "eps": cfg.eps,
        "ffn_proj_factor": cfg.ffn_proj_factor,
        "ffn_round_up_to_multiple_of": cfg.ffn_round_up_to,
        "gate_soft_cap": cfg.gate_soft_cap,
        "output_logit_soft_cap": cfg.logit_soft_cap,
        "dtype": str(dtype).removeprefix("torch."),
        # None, not absent: absent ids would take xLSTMConfig's defaults (bos 0, pad 1, eos 2)
        **{k: token_ids.get(k) for k in ("bos_token_id", "eos_token_id", "pad_token_id")},
        **HF_RUNTIME_FIELDS,
    }
    return dict(sorted(out.items()))


def large_state_dict_to_hf(sd: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """Our state dict -> HF names (lm_head always present: HF has no tying)."""
    out = {"backbone.embeddings.weight": sd["embedding.weight"]}
    for name, t in sd.items():
        if name.startswith("blocks.") or name == "out_norm.weight":
            out["backbone." + name] = t
    out["lm_head.weight"] = sd["embedding.weight"] if cfg.tie_embeddings else sd["lm_head.weight"]
    extra = set(sd) - {"embedding.weight", "lm_head.weight"} - {k.removeprefix("backbone.") for k in out}
    if extra:
        raise ExportError(f"tensors with no place in transformers' xLSTM: {sorted(extra)[:8]}")
    return out


def large_from_hf(hf_config: dict, hf_sd: dict[str, torch.Tensor], **cfg_overrides) -> tuple[ModelConfig, dict]:
    """(ModelConfig, our state dict) from a transformers xLSTM config.json dict and its tensors."""
    # xLSTMConfig accepts either name of the width and the depth; one fills the other
    hf_config = dict(hf_config)
    for a, b in (("hidden_size", "embedding_dim"), ("num_hidden_layers", "num_blocks")):
        if hf_config.get(a) is None:
            hf_config[a] = hf_config.get(b)
        if hf_config.get(b) not in (None, hf_config[a]):
            raise ExportError(f"config.json has {a}={hf_config[a]} but {b}={hf_config[b]}: they must agree")
    hf_config = {**HF_MODEL_DEFAULTS, **{k: v for k, v in hf_config.items() if v is not None}}
    get = hf_config.get
    if get("norm_reduction_force_float32") is False:
        raise ExportError("norm_reduction_force_float32=False is not supported: our norms always reduce in fp32")
    try:
        # untied whatever tie_word_embeddings says: transformers ignores it for xLSTM and uses the stored lm_head
        cfg = config_from_hf(SimpleNamespace(**hf_config), **cfg_overrides)
        sd = import_large_state_dict(hf_sd, cfg)
    except (KeyError, ValueError, AttributeError) as e:
        raise ExportError(f"cannot import this transformers xLSTM checkpoint: {e}") from e
    return cfg, sd
