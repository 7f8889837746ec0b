"""Reading and writing Hugging Face style safetensors weights: one ``model.safetensors`` or, above a size,
``model-0000i-of-0000n.safetensors`` shards listed in ``model.safetensors.index.json``
({"metadata": {"total_size": bytes}, "weight_map": {tensor name: shard file}})."""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .errors import ExportError

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
DEFAULT_MAX_SHARD_BYTES = 5 * 10**9  # transformers' customary 5GB shards


def parse_size(text: str | int) -> int:
    """'5GB', '500MB', '10KB' or a plain byte count -> bytes (decimal units, as transformers uses)."""
    if isinstance(text, int):
        return text
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMG]?B)?\s*", str(text).upper())
    if not m:
        raise ExportError(f"cannot parse a size from {text!r} (examples: 5GB, 500MB, 1000000)")
    unit = {None: 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9}[m.group(2)]
    return int(float(m.group(1)) * unit)


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def save_safetensors(state_dict: dict[str, torch.Tensor], out_dir: str | Path,
                     max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES) -> list[str]:
    """Write ``state_dict`` (in its order) as one file, or as shards of at most ``max_shard_bytes`` each
    (a single larger tensor gets a shard of its own). Returns the file names written."""
    out_dir = Path(out_dir)
    # safetensors refuses tensors that share memory (tied weights, views of a split fused weight): give
    # every tensor that does not own its whole storage, or whose storage was seen already, its own copy.
    seen, tensors = set(), {}
    for name, t in state_dict.items():
        t = t.detach().cpu()
        storage = t.untyped_storage()
        owns_storage = t.is_contiguous() and storage.nbytes() == _nbytes(t) and storage.data_ptr() not in seen
        tensors[name] = t if owns_storage else t.clone(memory_format=torch.contiguous_format)
        seen.add(tensors[name].untyped_storage().data_ptr())

    shards, current, size = [], {}, 0
    for name, t in tensors.items():
        if current and size + _nbytes(t) > max_shard_bytes:
            shards.append(current)
            current, size = {}, 0
        current[name] = t
        size += _nbytes(t)
    shards.append(current)

    metadata = {"format": "pt"}  # transformers checks this key
    if len(shards) == 1:
        save_file(shards[0], str(out_dir / SINGLE_FILE), metadata=metadata)
        return [SINGLE_FILE]
    names = [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    weight_map = {}
    for fname, shard in zip(names, shards):
        save_file(shard, str(out_dir / fname), metadata=metadata)
        weight_map.update({name: fname for name in shard})
    index = {"metadata": {"total_size": sum(_nbytes(t) for t in tensors.values())}, "weight_map": weight_map}
    (out_dir / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")
    return [*names, INDEX_FILE]


def load_safetensors(folder: str | Path) -> dict[str, torch.Tensor]:
    """All tensors of a folder holding ``model.safetensors`` or an index with shards (on the CPU)."""
    folder = Path(folder)
    if (folder / INDEX_FILE).is_file():
        weight_map = json.loads((folder / INDEX_FILE).read_text())["weight_map"]
        out = {}
        for fname in dict.fromkeys(weight_map.values()):  # each shard once, in order
            out.update(load_file(str(folder / fname), device="cpu"))
        missing = sorted(set(weight_map) - out.keys())
        if missing:
            raise ExportError(f"{folder / INDEX_FILE} lists tensors its shards do not hold: {missing[:8]}")
        return out
    if (folder / SINGLE_FILE).is_file():
        return load_file(str(folder / SINGLE_FILE), device="cpu")
    others = sorted(p.name for p in folder.glob("*.bin")) if folder.is_dir() else []
    hint = f" (found {others}: convert pickled .bin weights to safetensors first)" if others else ""
    raise ExportError(f"no {SINGLE_FILE} or {INDEX_FILE} in {folder}{hint}")
