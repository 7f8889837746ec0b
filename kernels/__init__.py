"""xLSTM cell kernels (installed as ``xlstm_kernels``): the public API, nothing else.

Everything outside ``kernels/`` (the model, the trainer, tools, tests of the model) uses these names only.
Where things live:
  ``dispatch.py``     the backend registry (``MLSTM_BACKENDS`` / ``SLSTM_BACKENDS``: torch, triton, fla),
                      ``mlstm`` / ``slstm`` (call a backend by name), ``resolve_backend`` (what ``"auto"``
                      picks, and why), the self-check hook;
  ``selfcheck.py``    the self-check of the Triton kernels against the torch reference (modes, probes);
  ``chunking.py``     the one chunk-length rule of the chunkwise mLSTM (``chunk_plan``);
  ``boundaries.py``   document boundaries in FLA's varlen layout (``register_document_boundaries``);
  ``fla_runtime.py``  the one place that imports (and, under the Triton interpreter, patches) FLA;
  ``mlstm/``, ``slstm/``  the kernels: torch references (``naive.py``, ``chunkwise.py``), Triton, FLA.
"""

from __future__ import annotations

from .boundaries import document_segments, register_document_boundaries
from .chunking import ChunkPlan, chunk_plan
from .dispatch import (AUTO_CUDA_ORDER, MISSING_BACKENDS, MLSTM_BACKENDS, MLSTM_TORCH_FORMS, SLSTM_BACKENDS,
                       _without_autocast, mlstm, register_backend, resolve_backend, slstm)
from .fla_runtime import FLA_INSTALL_HINT, import_fla
from .mlstm import (MLSTMState, mlstm_chunkwise, mlstm_final_state, mlstm_parallel, mlstm_recurrent,
                    mlstm_sequence_summary, mlstm_step,
                    zero_state)
from .slstm import SLSTMState, slstm_recurrent, slstm_recurrent_manual_backward, slstm_step, slstm_zero_state

__all__ = [
    "AUTO_CUDA_ORDER", "ChunkPlan", "FLA_INSTALL_HINT", "MISSING_BACKENDS", "MLSTMState", "MLSTM_BACKENDS",
    "MLSTM_TORCH_FORMS", "SLSTMState", "SLSTM_BACKENDS", "chunk_plan", "document_segments", "import_fla", "mlstm",
    "mlstm_chunkwise", "mlstm_final_state", "mlstm_parallel", "mlstm_recurrent", "mlstm_sequence_summary",
    "mlstm_step", "register_backend",
    "register_document_boundaries", "resolve_backend", "slstm", "slstm_recurrent", "slstm_recurrent_manual_backward", "slstm_step", "slstm_zero_state",
    "zero_state",
]
