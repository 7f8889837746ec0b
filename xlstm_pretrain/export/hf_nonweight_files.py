"""The non-weight files of a Hugging Face folder: config.json, generation_config.json, tokenizer files."""

from __future__ import annotations

import json
import shutil
from importlib import metadata
from pathlib import Path

from .plain import TOKEN_ID_KEYS

EOD_TOKEN = "<|endoftext|>"  # the end-of-document token data_prep appends (GPT-2 and GPT-NeoX-20B have it)


def transformers_version() -> str | None:
    """The installed transformers version, recorded as transformers does (None when it is not installed)."""
    try:
        return metadata.version("transformers")
    except metadata.PackageNotFoundError:
        return None


def write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def write_config(out_dir: Path, config: dict) -> None:
    version = transformers_version()
    write_json(out_dir / "config.json", {**config, **({"transformers_version": version} if version else {})})


def write_generation_config(out_dir: Path, token_ids: dict[str, int | None]) -> None:
    data = {k: token_ids.get(k) for k in TOKEN_ID_KEYS}
    version = transformers_version()
    write_json(out_dir / "generation_config.json", {**data, **({"transformers_version": version} if version else {})})


def eod_token_ids(tokenizer_json: Path | None) -> dict[str, int]:
    """bos = eos = the id of ``<|endoftext|>`` when the tokenizer has it (our data marks document ends with
    it, so it is what a model trained here emits at the end of a text); {} otherwise."""
    if tokenizer_json is None or not tokenizer_json.is_file():
        return {}
    from tokenizers import Tokenizer

    eod = Tokenizer.from_file(str(tokenizer_json)).token_to_id(EOD_TOKEN)
    return {} if eod is None else {"bos_token_id": eod, "eos_token_id": eod}


def copy_tokenizer(files: list[Path], out_dir: Path, token_ids: dict[str, int | None], model_max_length: int) -> None:
    """Copy the tokenizer files; when there is a tokenizer.json without a tokenizer_config.json, write one so
    that ``AutoTokenizer.from_pretrained(out_dir)`` works (a fast tokenizer over tokenizer.json)."""
    for f in files:
        shutil.copyfile(f, out_dir / f.name)
    names = {f.name for f in files}
    if "tokenizer.json" not in names or "tokenizer_config.json" in names:
        return
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(out_dir / "tokenizer.json"))
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": model_max_length}
    for key in TOKEN_ID_KEYS:
        if token_ids.get(key) is not None:
            config[key.removesuffix("_id")] = tok.id_to_token(token_ids[key])
    write_json(out_dir / "tokenizer_config.json", config)
