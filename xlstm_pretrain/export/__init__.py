"""Hugging Face export and import (``python -m xlstm_pretrain.export.hf``; see ``hf.py``).

    plain.py                  the plain checkpoint format (config.yaml + model.safetensors [+ tokenizer files])
    hf.py                     export_to_hf / export_state_dict_to_hf / import_from_hf and the command line
    hf_large_native.py        large family <-> transformers' own xLSTMForCausalLM (names, config, what HF
                              cannot express)
    hf_paper_remote_code.py   paper family <-> a folder that carries our remote code (copied from hf_paper/)
    hf_paper/                 that remote code: the files copied verbatim into every paper-family folder
    hf_nonweight_files.py     config.json, generation_config.json, tokenizer files
    safetensors_io.py         single or sharded safetensors with the standard index
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
