"""Paper family <-> a Hugging Face folder with our standalone remote code (``hf_paper/``).

transformers has no class for mLSTM + sLSTM blocks, so the folder carries ``configuration_xlstm_paper.py``
and ``modeling_xlstm_paper.py`` (copied from ``hf_paper/``) and an ``auto_map`` pointing at them; load it
with ``AutoModelForCausalLM.from_pretrained(dir, trust_remote_code=True)``. Tensor names are ours with a
``backbone.`` prefix (``lm_head.weight`` stays); a tied lm_head is not stored (the remote model ties it).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from xlstm_pretrain.model.config import ModelConfig

from . import hf_paper
from .errors import ExportError

MODEL_TYPE = "xlstm_paper"
AUTO_MAP = {
    "AutoConfig": "configuration_xlstm_paper.xLSTMPaperConfig",
    "AutoModel": "modeling_xlstm_paper.xLSTMPaperModel",
    "AutoModelForCausalLM": "modeling_xlstm_paper.xLSTMPaperForCausalLM",
}
# ModelConfig fields stored under the same name in xLSTMPaperConfig (tie_embeddings is tie_word_embeddings).
PAPER_FIELDS = ("vocab_size", "embedding_dim", "num_blocks", "num_heads", "slstm_at", "slstm_num_heads",
                "mlstm_proj_factor", "conv1d_kernel_size", "qkv_proj_blocksize", "slstm_conv1d_kernel_size",
                "ffn_proj_factor", "ffn_round_up_to", "chunk_size", "eps", "context_length")


def paper_config_to_hf(cfg: ModelConfig, dtype: torch.dtype, token_ids: dict[str, int | None]) -> dict:
    if cfg.family != "paper":
        raise ExportError(f"expected the paper family, got family={cfg.family!r}")
    out = {f: getattr(cfg, f) for f in PAPER_FIELDS}
    out["slstm_at"] = sorted(cfg.slstm_at)
    out.update(
        architectures=["xLSTMPaperForCausalLM"], model_type=MODEL_TYPE, auto_map=AUTO_MAP,
        tie_word_embeddings=cfg.tie_embeddings, use_cache=True, dtype=str(dtype).removeprefix("torch."),
        **{k: token_ids.get(k) for k in ("bos_token_id", "eos_token_id", "pad_token_id")},
    )
    return dict(sorted(out.items()))


def paper_state_dict_to_hf(sd: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    out = {}
    for name, t in sd.items():
        if name == "lm_head.weight":
            if not cfg.tie_embeddings:
                out[name] = t
        else:
            out["backbone." + name] = t
    return out


def copy_remote_code(out_dir: Path) -> None:
    src = Path(hf_paper.__file__).parent
    for name in hf_paper.MODULE_FILES:
        shutil.copyfile(src / name, out_dir / name)


def paper_from_hf(hf_config: dict, hf_sd: dict[str, torch.Tensor], **cfg_overrides) -> tuple[ModelConfig, dict]:
    """(ModelConfig, our state dict) from a folder this module exported."""
    missing = [f for f in PAPER_FIELDS if f not in hf_config]
    if missing:
        raise ExportError(f"{MODEL_TYPE} config.json lacks {missing}")
    kw = {f: hf_config[f] for f in PAPER_FIELDS}
    kw.update(family="paper", tie_embeddings=bool(hf_config.get("tie_word_embeddings", False)), **cfg_overrides)
    cfg = ModelConfig(**kw)
    cfg.validate()
    sd = {}
    for name, t in hf_sd.items():
        if name != "lm_head.weight" and not name.startswith("backbone."):
            raise ExportError(f"unexpected tensor {name!r} in a {MODEL_TYPE} checkpoint")
        sd[name.removeprefix("backbone.")] = t
    if cfg.tie_embeddings:
        sd.pop("lm_head.weight", None)
    return cfg, sd
