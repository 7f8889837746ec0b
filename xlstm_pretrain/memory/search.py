"""Layout search: enumerate TP / SP / CP / ZeRO / micro-batch / checkpointing, keep what fits, rank by
predicted step time.

    step time = compute + communication (no overlap assumed: a ranking, not a promise)
    compute   = training FLOPs of one global batch / GPUs / (peak x ASSUMED_MFU), x 4/3 with checkpointing
                (the forward runs twice), + MICRO_STEP_OVERHEAD_S per micro-batch
    TP/SP/CP  = per micro-batch, the ring bytes of ``comm_fn`` (tools/bench/comm_volume.py ``analytic``: one
                forward, fp32) x activation bytes / 4 x (2 forward + backward, 3 with the recompute), over
                the intra-node bandwidth
    ZeRO      = per step, reduce-scatter + all-gather of the gradients / parameters over DP
                (2 (dp - 1) / dp x bytes); ZeRO-3 also gathers the parameters in forward and backward of
                every micro-batch; intra-node bandwidth up to one node, the network beyond
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from xlstm_pretrain.config_loader import ConfigError
from xlstm_pretrain.flops import forward_flops_per_token

from .estimate import MemoryEstimate, estimate
from .hardware import GPU
from .layout import Layout
from .model_states import ParamCounts

ASSUMED_MFU = 0.40  # of the dense BF16 peak, for every layout (kernel efficiency is not modelled)
CHECKPOINT_RECOMPUTE = 4 / 3  # forward + backward = 3 forwards; recomputing adds one
# Fixed cost of each micro-batch forward + backward (kernel launches, Python, DeepSpeed hooks): what makes
# fewer, larger micro-batches faster at equal FLOPs
MICRO_STEP_OVERHEAD_S = 0.02
MAX_TP = 8  # tensor parallelism stays inside a node
CP_CHOICES = (1, 2, 4, 8)


@dataclass
class Candidate:
    layout: Layout
    memory: MemoryEstimate
    step_seconds: float
    compute_seconds: float
    comm_seconds: float


def _divisors(n: int, limit: int) -> list[int]:
    return [k for k in range(1, limit + 1) if n % k == 0]


def step_time(cfg, layout: Layout, gpu: GPU, params: ParamCounts, comm_fn: Callable | None) -> tuple[float, float]:
    """(compute seconds, communication seconds) of one optimizer step at the full global batch."""
    m, S = cfg.model, cfg.data.seq_len
    tokens = cfg.train.global_batch_size * S
    flops = 3 * forward_flops_per_token(m, S) * tokens / layout.gpus
    if layout.activation_checkpointing:
        flops *= CHECKPOINT_RECOMPUTE
    micro_steps = layout.grad_accum(cfg.train.global_batch_size)
    compute = flops / (gpu.peak_bf16_flops * ASSUMED_MFU) + micro_steps * MICRO_STEP_OVERHEAD_S
    act = 4 if cfg.train.precision == "fp32" else 2
    comm = 0.0
    if comm_fn is not None and (layout.tp > 1 or layout.cp > 1):
        _, wire = comm_fn(m, layout.micro_batch, S, layout.tp, layout.cp, layout.sp)
        passes = 3 if layout.activation_checkpointing else 2
        comm += micro_steps * wire * act / 4 * passes / gpu.nvlink_bytes_per_s
    dp = layout.dp
    if dp > 1:
        bw = gpu.nvlink_bytes_per_s if layout.gpus <= gpu.gpus_per_node else gpu.network_bytes_per_s
        p_bytes = 2 if cfg.train.precision == "bf16-params" else 4
        n = params.total / layout.tp
        ring = 2 * (dp - 1) / dp
        comm += ring * n * p_bytes / bw  # gradients reduced + updated parameters gathered, once per step
        if layout.zero_stage == 3:
            comm += micro_steps * 2 * (dp - 1) / dp * n * p_bytes / bw  # gathered in forward and backward
    return compute, comm


def enumerate_layouts(cfg, gpus: int):
    """Every layout the trainer accepts for ``cfg`` on ``gpus`` GPUs (parallel.check_layout + the batch rule)."""
    from xlstm_pretrain.parallel import ParallelConfig, check_layout

    m, S, G = cfg.model, cfg.data.seq_len, cfg.train.global_batch_size
    for tp in _divisors(m.num_heads, min(MAX_TP, gpus)):
        for cp in CP_CHOICES:
            if gpus % (tp * cp):
                continue
            for sp in ((False, True) if tp > 1 else (False,)):
                try:
                    dp = check_layout(m, ParallelConfig(tensor_parallel=tp, context_parallel=cp, sequence_parallel=sp),
                                      gpus, S)
                except ConfigError:
                    continue
                micro = 1
                while micro * dp <= G:
                    if G % (micro * dp) == 0:
                        for zero in (1, 2, 3):
                            for ac in (False, True):
                                yield Layout(gpus=gpus, tp=tp, cp=cp, sp=sp, zero_stage=zero, micro_batch=micro,
                                             activation_checkpointing=ac)
                    micro *= 2


def search_layouts(cfg, gpus: int, gpu: GPU, comm_fn: Callable | None = None, top: int = 5,
                   backend: str | None = None) -> list[Candidate]:
    """The ``top`` fastest predicted layouts that fit ``gpu`` with the required headroom."""
    params = ParamCounts.of(cfg.model)
    found = []
    for layout in enumerate_layouts(cfg, gpus):
        mem = estimate(cfg, layout, gpu, params, backend=backend)
        if not mem.fits():
            continue
        compute, comm = step_time(cfg, layout, gpu, params, comm_fn)
        found.append(Candidate(layout, mem, compute + comm, compute, comm))
    found.sort(key=lambda c: (c.step_seconds, c.memory.total))
    return found[:top]
