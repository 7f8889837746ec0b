"""Hugging Face export and import (``python -m xlstm_pretrain.export.hf``; see ``hf.py``).

    plain.py          the plain checkpoint format (config.yaml + model.safetensors [+ tokenizer files])
    hf.py             export_to_hf / export_state_dict_to_hf / import_from_hf and the command line
    large_hf.py       large family <-> transformers xLSTMForCausalLM (names, config, what HF cannot express)
    paper_hf.py       paper family <-> a folder with our remote code (hf_paper/)
    hf_files.py       config.json, generation_config.json, tokenizer files
    safetensors_io.py single or sharded safetensors with the standard index
"""

from .errors import ExportError
from .plain import load_plain_checkpoint, read_plain_checkpoint, save_plain_checkpoint

_HF_API = ("export_to_hf", "export_state_dict_to_hf", "import_from_hf")


def __getattr__(name):
    # hf.py is also run as a script (python -m ...hf); importing it lazily avoids runpy's double-import warning.
    if name in _HF_API:
        from . import hf

        return getattr(hf, name)
    raise AttributeError(name)


__all__ = ["ExportError", "load_plain_checkpoint", "read_plain_checkpoint", "save_plain_checkpoint", *_HF_API]
