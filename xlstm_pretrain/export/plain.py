"""The plain checkpoint: the minimal, single-file-per-concern format the export reads and the import writes.

    DIR/config.yaml              our root config (``xlstm_pretrain.config.dump_yaml``; has a ``model:`` section)
    DIR/model.safetensors        the full (unsharded) ``xLSTMLM`` state_dict, fp32 or bf16; a tied
                                 ``lm_head.weight`` is not stored (it is the embedding)
    DIR/tokenizer.json           optional, with any other tokenizer files (tokenizer_config.json, ...)
    DIR/generation_config.json   optional: bos/eos/pad token ids for generation (Hugging Face's file)

Training checkpoints (TP/CP/ZeRO) are not in this format yet. Where they plug in: turn one into a full
TP=1 state dict on the CPU (TP: join each sharded parameter along its partition dim, as
``xlstm_pretrain.parallel.gather_full_state_dict`` does on a live model; ZeRO: gather the flat
partitions; CP shards no parameters), then either write it with ``write_plain_checkpoint`` or hand it to
``export.hf.export_state_dict_to_hf`` directly. ``read_plain_checkpoint`` is the one reader to extend.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file

from xlstm_pretrain.config import Config, ModelConfig, dump_yaml, load
from xlstm_pretrain.model import build_model, xLSTMLM

from .errors import ExportError
from .safetensors_io import save_safetensors

CONFIG_FILE = "config.yaml"
WEIGHTS_FILE = "model.safetensors"
GENERATION_FILE = "generation_config.json"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json", "merges.txt",
                   "tokenizer.model", "added_tokens.json")
TOKEN_ID_KEYS = ("bos_token_id", "eos_token_id", "pad_token_id")


@dataclass
class PlainCheckpoint:
    cfg: Config
    state_dict: dict[str, torch.Tensor]
    directory: Path

    @property
    def tokenizer_files(self) -> list[Path]:
        return [self.directory / name for name in TOKENIZER_FILES if (self.directory / name).is_file()]

    @property
    def token_ids(self) -> dict[str, int | None]:
        """bos/eos/pad ids from generation_config.json ({} when there is none)."""
        path = self.directory / GENERATION_FILE
        if not path.is_file():
            return {}
        data = json.loads(path.read_text())
        return {k: data[k] for k in TOKEN_ID_KEYS if k in data}


def model_state_dict(model: xLSTMLM) -> dict[str, torch.Tensor]:
    """The state dict to store: a tied lm_head is the embedding, so it is left out."""
    sd = model.state_dict()
    if model.cfg.tie_embeddings:
        sd.pop("lm_head.weight", None)
    return sd


def save_plain_checkpoint(model: xLSTMLM, cfg: Config | ModelConfig, directory: str | Path,
                          tokenizer_file: str | Path | None = None,
                          token_ids: dict[str, int | None] | None = None) -> Path:
    """Write ``model`` and its config as a plain checkpoint; optionally copy a tokenizer.json (and the
    tokenizer files beside it) and record bos/eos/pad ids (``token_ids``) in generation_config.json."""
    root = cfg if isinstance(cfg, Config) else Config(model=cfg)
    write_plain_checkpoint(root, model_state_dict(model), directory, token_ids=token_ids)
    if tokenizer_file is not None:
        copy_tokenizer_files(Path(tokenizer_file), Path(directory))
    return Path(directory)


def write_plain_checkpoint(cfg: Config, state_dict: dict[str, torch.Tensor], directory: str | Path,
                           token_ids: dict[str, int | None] | None = None) -> None:
    """The writer behind ``save_plain_checkpoint``, from a state dict (used by the Hugging Face import)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    dump_yaml(cfg, directory / CONFIG_FILE)
    # one model.safetensors whatever the size; save_safetensors copes with tensors that share memory
    save_safetensors(state_dict, directory, max_shard_bytes=2**62)
    if token_ids:
        write_token_ids(directory, token_ids)


def copy_tokenizer_files(tokenizer_file: Path, directory: Path) -> None:
    """Copy ``tokenizer_file`` (a tokenizer.json) and the known tokenizer files next to it."""
    if not tokenizer_file.is_file():
        raise ExportError(f"tokenizer file not found: {tokenizer_file}")
    shutil.copyfile(tokenizer_file, directory / "tokenizer.json")
    for name in TOKENIZER_FILES[1:]:
        if (tokenizer_file.parent / name).is_file():
            shutil.copyfile(tokenizer_file.parent / name, directory / name)


def write_token_ids(directory: Path, token_ids: dict[str, int | None]) -> None:
    unknown = set(token_ids) - set(TOKEN_ID_KEYS)
    if unknown:
        raise ExportError(f"unknown token id keys {sorted(unknown)}; expected some of {TOKEN_ID_KEYS}")
    (Path(directory) / GENERATION_FILE).write_text(json.dumps(dict(token_ids), indent=2) + "\n")


def read_plain_checkpoint(directory: str | Path) -> PlainCheckpoint:
    """Config and full state dict of a plain checkpoint, on the CPU, without building the model."""
    directory = Path(directory)
    if not (directory / CONFIG_FILE).is_file() or not (directory / WEIGHTS_FILE).is_file():
        raise ExportError(
            f"{directory} is not a plain checkpoint (it needs {CONFIG_FILE} and {WEIGHTS_FILE}); sharded "
            "training checkpoints (TP/ZeRO) must first be consolidated into a full state dict")
    cfg = load(directory / CONFIG_FILE)
    return PlainCheckpoint(cfg, load_file(str(directory / WEIGHTS_FILE), device="cpu"), directory)


def model_from_state_dict(model_cfg: ModelConfig, state_dict: dict[str, torch.Tensor]) -> xLSTMLM:
    """Build the model and load ``state_dict`` strictly (a tied lm_head may be absent)."""
    model = build_model(model_cfg)
    try:
        missing, unexpected = model.load_state_dict(state_dict, strict=False)
    except RuntimeError as e:  # shape mismatches
        raise ExportError(f"state dict does not match the config: {e}") from e
    missing = sorted(set(missing) - ({"lm_head.weight"} if model_cfg.tie_embeddings else set()))
    if missing or unexpected:
        raise ExportError(f"state dict does not match the config: missing {missing[:8]}, "
                          f"unexpected {sorted(unexpected)[:8]}")
    return model


def load_plain_checkpoint(directory: str | Path) -> tuple[xLSTMLM, Config]:
    """(model, root config) of a plain checkpoint; the model keeps the stored dtype."""
    ckpt = read_plain_checkpoint(directory)
    model = model_from_state_dict(ckpt.cfg.model, ckpt.state_dict)
    dtypes = {t.dtype for t in ckpt.state_dict.values()}
    if len(dtypes) == 1:
        model.to(dtypes.pop())
    return model, ckpt.cfg
