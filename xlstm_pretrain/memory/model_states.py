"""Parameters, gradients, optimizer states and DeepSpeed buffers per rank, by ZeRO stage and precision.

Bytes per parameter (N_local = parameters of this TP shard; dp = data-parallel size):

    precision        params   grads                         optimizer (fp32 master + AdamW m, v)
    fp32 / bf16      4        4 (ZeRO-1), 4/dp (ZeRO-2/3)   12/dp   (DeepSpeed keeps an fp32 partition copy
                                                                     even of fp32 parameters)
    bf16-params      2        ZeRO-1: 4 (DeepSpeed's BF16_Optimizer accumulates full fp32 gradients, since
                              our config sets grad_accum_dtype fp32); ZeRO-2/3: (2 + 4)/dp (bf16 partition
                              and its fp32 copy at the step)                 12/dp
    ZeRO-3 divides the parameters by dp as well, and gathers them block by block.

DeepSpeed buffers, from its defaults (``parallel/zero.py`` sets none of them): contiguous-gradient reduce
bucket ``reduce_bucket_size`` = 5e8 elements (capped at the model), ZeRO-3 prefetch
``stage3_prefetch_bucket_size`` = 5e7 elements, and the gathered parameters of the current and the next
block (or the vocab-sized embedding / LM head) under ZeRO-3.
"""

from __future__ import annotations

from dataclasses import dataclass

# DeepSpeed ZeRO defaults (deepspeed/runtime/zero/config.py); train.deepspeed can override them
REDUCE_BUCKET_ELEMENTS = int(5e8)
PREFETCH_BUCKET_ELEMENTS = int(5e7)
ADAM_BYTES = 8  # exp_avg + exp_avg_sq, fp32
MASTER_BYTES = 4  # fp32 partition copy


@dataclass(frozen=True)
class ParamCounts:
    total: int  # the full model
    largest_block: int
    embedding: int  # the vocab-sized matrix (embedding or LM head; the larger block ZeRO-3 gathers)

    @classmethod
    def of(cls, model_cfg) -> ParamCounts:
        from xlstm_pretrain.model import build_model

        model = build_model(model_cfg, device="meta")
        total = sum({id(p): p.numel() for p in model.parameters()}.values())
        largest = max(sum(p.numel() for p in b.parameters()) for b in model.blocks)
        return cls(total, largest, model.embedding.weight.numel())


def model_state_bytes(params: ParamCounts, precision: str, zero_stage: int, tp: int, dp: int,
                      deepspeed_overrides: dict | None = None) -> dict[str, float]:
    """{part: bytes} for weights, gradients, optimizer states and DeepSpeed communication buffers."""
    zo = (deepspeed_overrides or {}).get("zero_optimization", {})
    reduce_bucket = int(zo.get("reduce_bucket_size", REDUCE_BUCKET_ELEMENTS))
    prefetch = int(zo.get("stage3_prefetch_bucket_size", PREFETCH_BUCKET_ELEMENTS))
    n = params.total / tp  # TP shards every projection, the embedding and the LM head (norms are negligible)
    p_bytes = 2 if precision == "bf16-params" else 4
    weights = n * p_bytes / (dp if zero_stage == 3 else 1)
    if precision == "bf16-params":
        grads = n * 4 if zero_stage == 1 else n * (2 + 4) / dp
    else:
        grads = n * 4 if zero_stage == 1 else n * 4 / dp
    optimizer = n * (MASTER_BYTES + ADAM_BYTES) / dp
    g_bytes = 4 if precision != "bf16-params" or zero_stage == 1 else 2
    buffers = min(reduce_bucket, n) * g_bytes
    if zero_stage == 3:
        live = 2 * max(params.largest_block, params.embedding) / tp  # this block's and the prefetched next
        buffers += (live + min(prefetch, n)) * p_bytes
    return {"weights": weights, "gradients": grads, "optimizer states": optimizer,
            "communication buffers": buffers}
