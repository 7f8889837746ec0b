"""Export our checkpoints to Hugging Face folders, and import Hugging Face xLSTM folders.

    python -m xlstm_pretrain.export.hf --checkpoint CKPT_DIR --out HF_DIR [--max-shard-size 5GB]
           [--dtype bfloat16] [--untie-embeddings] [--eos-token-id N] ...
    python -m xlstm_pretrain.export.hf --from-hf HF_DIR --out CKPT_DIR [--context-length 4096]

- large family -> native ``transformers`` ``xLSTMForCausalLM`` (``hf_large_native.py``);
- paper family -> a folder with our standalone remote code (``hf_paper_remote_code.py``, ``hf_paper/``);
- import: a transformers xLSTM folder (e.g. NX-AI/xLSTM-7b: config.json + sharded safetensors), or a
  paper folder exported here, -> a plain checkpoint (``plain.py``) for continued pretraining.

Everything runs on the CPU and never builds the model for export (tensors are renamed, not recomputed),
so a 7B export needs memory for its weights only. ``export_state_dict_to_hf`` takes a full state dict:
sharded training checkpoints (TP, ZeRO) are consolidated before it (see ``plain.py``).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import torch

from xlstm_pretrain.config import Config
from xlstm_pretrain.model import build_model
from xlstm_pretrain.model.config import ModelConfig

from . import hf_nonweight_files
from .errors import ExportError
from .hf_large_native import check_hf_expressible, large_config_to_hf, large_from_hf, large_state_dict_to_hf
from .hf_paper_remote_code import MODEL_TYPE as PAPER_MODEL_TYPE
from .hf_paper_remote_code import copy_remote_code, paper_config_to_hf, paper_from_hf, paper_state_dict_to_hf
from .plain import TOKEN_ID_KEYS, TOKENIZER_FILES, read_plain_checkpoint, write_plain_checkpoint
from .safetensors_io import DEFAULT_MAX_SHARD_BYTES, load_safetensors, parse_size, save_safetensors

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def check_state_dict(cfg: ModelConfig, sd: dict[str, torch.Tensor]) -> None:
    """Names and shapes of ``sd`` must be exactly those of our model for ``cfg`` (a tied lm_head may be absent)."""
    want = {k: tuple(v.shape) for k, v in build_model(cfg, device="meta").state_dict().items()}
    optional = {"lm_head.weight"} if cfg.tie_embeddings else set()
    missing = sorted(set(want) - set(sd) - optional)
    unexpected = sorted(set(sd) - set(want))
    wrong = [f"{k}: {tuple(sd[k].shape)} != {want[k]}" for k in sd if k in want and tuple(sd[k].shape) != want[k]]
    if missing or unexpected or wrong:
        raise ExportError(f"state dict does not match the model config: missing {missing[:8]}, "
                          f"unexpected {unexpected[:8]}, wrong shapes {wrong[:8]}")


def _resolve_dtype(sd: dict[str, torch.Tensor], dtype: str | torch.dtype | None) -> torch.dtype:
    if dtype is not None:
        if isinstance(dtype, str) and dtype not in DTYPES:
            raise ExportError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
        return DTYPES[dtype] if isinstance(dtype, str) else dtype
    found = {t.dtype for t in sd.values()}
    if len(found) != 1:
        raise ExportError(f"the checkpoint mixes dtypes {sorted(map(str, found))}; choose one with dtype=/--dtype")
    return found.pop()


def _prepare_out_dir(out_dir: str | Path) -> Path:
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise ExportError(f"output folder {out_dir} is not empty (stale shards would mix with the new ones)")
    out_dir.mkdir(parents=True, exist_ok=True)
    return out_dir


def export_state_dict_to_hf(
    model_cfg: ModelConfig, state_dict: dict[str, torch.Tensor], out_dir: str | Path, *,
    token_ids: dict[str, int | None] | None = None, tokenizer_files: list[Path] = (),
    dtype: str | torch.dtype | None = None, untie_embeddings: bool = False,
    max_shard_size: str | int = DEFAULT_MAX_SHARD_BYTES,
) -> Path:
    """Write a Hugging Face folder for a model given as its config and full (consolidated) state dict."""
    check_state_dict(model_cfg, state_dict)
    if model_cfg.family == "large":
        check_hf_expressible(model_cfg, untie_embeddings)
    max_shard_bytes = parse_size(max_shard_size)
    dtype = _resolve_dtype(state_dict, dtype)
    token_ids = dict(token_ids or {})
    out_dir = _prepare_out_dir(out_dir)

    if model_cfg.family == "large":
        config, hf_sd = large_config_to_hf(model_cfg, dtype, token_ids), large_state_dict_to_hf(state_dict, model_cfg)
    else:
        config, hf_sd = paper_config_to_hf(model_cfg, dtype, token_ids), paper_state_dict_to_hf(state_dict, model_cfg)
        copy_remote_code(out_dir)
    save_safetensors({k: v.to(dtype) for k, v in hf_sd.items()}, out_dir, max_shard_bytes)
    hf_nonweight_files.write_config(out_dir, config)
    hf_nonweight_files.write_generation_config(out_dir, token_ids)
    hf_nonweight_files.copy_tokenizer(list(tokenizer_files), out_dir, token_ids, model_cfg.context_length)
    return out_dir


def _plain_dir(path: str | Path) -> Path:
    p = Path(path)
    latest = p / "checkpoints" / "latest"
    if latest.is_file():  # a run dir
        p = latest.parent / latest.read_text().strip()
    if (p / "consolidated" / "model.safetensors").is_file():  # a training checkpoint
        p = p / "consolidated"
    return p


def export_to_hf(checkpoint_dir: str | Path, out_dir: str | Path, *, token_ids: dict[str, int | None] | None = None,
                 **kwargs) -> Path:
    """Export a plain checkpoint, a training checkpoint (its consolidated/ TP=1 state dict, written at any
    TP/CP/ZeRO layout) or a run dir (its latest checkpoint). Token ids: ``token_ids`` over the checkpoint's
    generation_config.json over ``<|endoftext|>`` of its tokenizer (bos = eos); ids known nowhere are null."""
    ckpt = read_plain_checkpoint(_plain_dir(checkpoint_dir))
    tokenizer_json = ckpt.directory / "tokenizer.json"
    ids = {**hf_nonweight_files.eod_token_ids(tokenizer_json if tokenizer_json.is_file() else None), **ckpt.token_ids,
           **(token_ids or {})}
    return export_state_dict_to_hf(ckpt.cfg.model, ckpt.state_dict, out_dir, token_ids=ids,
                                   tokenizer_files=ckpt.tokenizer_files, **kwargs)


def import_from_hf(hf_dir: str | Path, out_dir: str | Path, **cfg_overrides) -> Path:
    """A Hugging Face folder (transformers xLSTM, or a paper folder exported here) -> a plain checkpoint.

    ``cfg_overrides`` set ModelConfig fields HF does not store (e.g. ``context_length``). Tensors keep their
    dtype and values bit for bit; tokenizer files and token ids are carried over."""
    hf_dir = Path(hf_dir)
    if not (hf_dir / "config.json").is_file():
        raise ExportError(f"no config.json in {hf_dir}")
    hf_config = json.loads((hf_dir / "config.json").read_text())
    importers = {"xlstm": large_from_hf, PAPER_MODEL_TYPE: paper_from_hf}
    model_type = hf_config.get("model_type")
    if model_type not in importers:  # checked before reading gigabytes of weights
        raise ExportError(f"cannot import model_type={model_type!r}: expected 'xlstm' (transformers' xLSTM) "
                          f"or {PAPER_MODEL_TYPE!r} (a paper-family folder exported by this project)")
    cfg, sd = importers[model_type](hf_config, load_safetensors(hf_dir), **cfg_overrides)
    check_state_dict(cfg, sd)

    generation = hf_dir / "generation_config.json"
    source = json.loads(generation.read_text()) if generation.is_file() else hf_config
    token_ids = {k: source.get(k, hf_config.get(k)) for k in TOKEN_ID_KEYS}
    out_dir = _prepare_out_dir(out_dir)
    write_plain_checkpoint(Config(model=cfg), sd, out_dir, token_ids=token_ids)
    for name in TOKENIZER_FILES:
        if (hf_dir / name).is_file():
            shutil.copyfile(hf_dir / name, out_dir / name)
    return out_dir


# ---- command line -------------------------------------------------------------------------------


def _token_id(text: str) -> int | None:
    return None if text.lower() in ("none", "null") else int(text)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m xlstm_pretrain.export.hf", description=__doc__.split("\n\n")[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", help="plain checkpoint folder to export (config.yaml + model.safetensors)")
    src.add_argument("--from-hf", help="Hugging Face folder to import into a plain checkpoint")
    p.add_argument("--out", required=True, help="output folder (must be empty or absent)")
    p.add_argument("--max-shard-size", default="5GB", help="export: shard size limit (default 5GB)")
    p.add_argument("--dtype", choices=sorted(DTYPES), help="export: cast the weights (default: keep)")
    p.add_argument("--untie-embeddings", action="store_true",
                   help="export, large family: write a tied lm_head as a copy of the embedding")
    for key in TOKEN_ID_KEYS:
        p.add_argument("--" + key.replace("_", "-"), type=_token_id, default=argparse.SUPPRESS,
                       help=f"export: {key} (an int or 'none'; default: from the checkpoint or its tokenizer)")
    p.add_argument("--context-length", type=int, help="import: training context to record (HF does not store it)")
    args = p.parse_args(argv)
    try:
        if args.checkpoint:
            ids = {k: getattr(args, k) for k in TOKEN_ID_KEYS if hasattr(args, k)}  # only those given
            out = export_to_hf(args.checkpoint, args.out, token_ids=ids, dtype=args.dtype,
                               untie_embeddings=args.untie_embeddings, max_shard_size=args.max_shard_size)
        else:
            overrides = {"context_length": args.context_length} if args.context_length else {}
            out = import_from_hf(args.from_hf, args.out, **overrides)
    except ExportError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {out}: {', '.join(sorted(f.name for f in out.iterdir()))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
