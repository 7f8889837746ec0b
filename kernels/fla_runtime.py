"""flash-linear-attention at run time: the one place that imports FLA, and the one place that patches it.

Public API (re-exported as ``xlstm_kernels.import_fla`` / ``xlstm_kernels.FLA_INSTALL_HINT``): the FLA
mLSTM backend (``mlstm/fla.py``) and the model's fused ops (``xlstm_pretrain/model/fused_fla.py``) import
every FLA module through ``import_fla``, so both get the same install hint and the same interpreter shims.

Patching. On a GPU nothing of FLA is touched. Under the Triton interpreter (TRITON_INTERPRET=1, the CPU
tests) FLA 0.6.0 runs only after two shims, applied by ``import_fla`` after each import (idempotent: a
module already patched is skipped, so repeated imports and every caller see the same state):
  1. its ``triton.autotune`` kernels would benchmark configs through the GPU driver (``0 active drivers``):
     every FLA autotuner is reduced to its first config (no benchmarking; configs only change speed);
  2. ``fla.ops.common.chunk_h`` calls ``.to(tl.int64)`` on ``for i_t in range(NT)`` loop indices, which the
     interpreter leaves as Python ints (``'int' object has no attribute 'to'``): that module gets a ``range``
     that yields interpreter scalars (its only ``range`` calls are those kernel loops).
"""

from __future__ import annotations

import builtins
import importlib
import os
import sys
import threading
import warnings

FLA_INSTALL_HINT = "pip install flash-linear-attention (or: pip install 'xlstm-pretrain[fla]')"

_lock = threading.RLock()
_patched: set[str] = set()  # FLA modules whose autotuners the interpreter shim already reduced


def interpreting() -> bool:
    """Whether Triton runs under its CPU interpreter (the only case in which FLA is patched)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _interpreter_range(*args):
    from triton.runtime import interpreter

    for t in builtins.range(*(int(a) for a in args)):
        yield interpreter.interpreter_semantic.to_tensor(t, False)


def _apply_interpreter_shims() -> None:
    """The two shims of the module docstring, on every FLA module imported so far not yet patched."""
    from triton.runtime.autotuner import Autotuner

    importlib.import_module("fla.ops.common.chunk_h")  # shim 2 must be in place before any kernel runs
    for name, mod in list(sys.modules.items()):
        if not name.startswith("fla.") or mod is None or name in _patched:
            continue
        for obj in list(vars(mod).values()):
            for _ in range(4):  # heuristics(autotune(jit(fn))): follow .fn down to the autotuner
                if isinstance(obj, Autotuner):
                    obj.configs = obj.configs[:1]
                    break
                obj = getattr(obj, "fn", None)
                if obj is None:
                    break
        if name == "fla.ops.common.chunk_h":
            mod.range = _interpreter_range
        _patched.add(name)


def import_fla(name: str, needed_by: str):
    """Import the FLA module ``name`` (e.g. ``"fla.modules.norm.layernorm"``): an ImportError with the
    install hint (naming ``needed_by``) when FLA is missing; under TRITON_INTERPRET=1 the shims above."""
    with _lock:
        try:
            with warnings.catch_warnings():  # FLA warns "Triton is not supported ..." on CPU-only machines
                warnings.filterwarnings("ignore", message="Triton is not supported on current platform")
                mod = importlib.import_module(name)
        except ImportError as e:
            raise ImportError(f"{needed_by} needs flash-linear-attention >= 0.6: {FLA_INSTALL_HINT} "
                              f"({type(e).__name__}: {e})") from e
        if interpreting():
            _apply_interpreter_shims()
    return mod


__all__ = ["FLA_INSTALL_HINT", "import_fla", "interpreting"]
