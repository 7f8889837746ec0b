"""DeepSpeed ZeRO over a (tensor-parallel) xLSTM model: one engine, configured from our dataclasses.

DeepSpeed reads the process groups through ``DeepSpeedMPU``: ZeRO partitions optimizer state (1),
gradients (2) and parameters (3) over the data-parallel group, and the gradient norm for clipping
counts TP-sharded parameters (``tensor_model_parallel=True``) on every TP rank and replicated ones once.
On CPU use the gloo backend; bf16 works there, fp16 does not. We pass a torch optimizer (DeepSpeed's
config-named optimizers JIT-compile C++ ops), hence ``zero_allow_untested_optimizer``.
"""

from __future__ import annotations

import torch

from .state import DeepSpeedMPU, ParallelState


def deepspeed_config(*, zero_stage: int, micro_batch_size: int, grad_accum_steps: int, dp_size: int,
                     bf16: bool = False, grad_clip: float | None = 1.0, extra: dict | None = None) -> dict:
    if zero_stage not in (0, 1, 2, 3):
        raise ValueError(f"zero_stage must be 0, 1, 2 or 3, got {zero_stage}")
    cfg = {
        "train_micro_batch_size_per_gpu": micro_batch_size,
        "gradient_accumulation_steps": grad_accum_steps,
        "train_batch_size": micro_batch_size * grad_accum_steps * dp_size,
        "zero_optimization": {"stage": zero_stage},
        "zero_allow_untested_optimizer": True,
        "bf16": {"enabled": bf16},
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }
    if bf16:
        # bf16 params/activations, fp32 master weights in the optimizer, fp32 gradient reduction
        cfg["data_types"] = {"grad_accum_dtype": "fp32"}
    if grad_clip:
        cfg["gradient_clipping"] = grad_clip
    if extra:
        cfg.update(extra)
    return cfg


def initialize_deepspeed(model: torch.nn.Module, optimizer: torch.optim.Optimizer, state: ParallelState,
                         config: dict, lr_scheduler=None):
    """``deepspeed.initialize`` with our mpu; returns the engine."""
    import deepspeed

    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=lr_scheduler,
                                           mpu=DeepSpeedMPU(state), config=config)
    return engine
