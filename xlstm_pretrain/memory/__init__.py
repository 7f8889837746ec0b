"""Memory model and layout planner: predicted bytes per GPU of a training run, by part, before launch.

    from xlstm_pretrain.memory import Layout, estimate, GPUS
    est = estimate(cfg, Layout.from_config(cfg, world_size=8), GPUS["h100-80gb"])
    print(est.format())

- ``shapes.py``       the per-rank tensor sizes a layout gives (TP / SP / CP shards, chunk counts)
- ``kernel_states.py`` what the mLSTM / sLSTM kernels and the causal conv save for backward, per backend
- ``activations.py``  saved-tensor bytes per block (both families) + embedding, logits and loss
- ``model_states.py`` parameters, gradients, optimizer states per ZeRO stage, DeepSpeed buffers
- ``estimate.py``     the sum by part, allocator headroom, fits / does not fit
- ``search.py``       enumerate layouts, keep those that fit, rank by predicted step time
- ``hardware.py``     GPU sizes, peak FLOP/s and bandwidths (named assumptions)
Validated against saved-tensor hook counts on CPU (tests/test_memory_model.py, tools/bench/activation_memory.py).
"""

from .estimate import MemoryEstimate, estimate
from .hardware import GPUS, GPU
from .layout import Layout
from .search import search_layouts

__all__ = ["GPU", "GPUS", "Layout", "MemoryEstimate", "estimate", "search_layouts"]
