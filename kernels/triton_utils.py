"""Shared helpers for the Triton kernels (imports triton: only import this from kernel modules).

- ``INTERPRET``: True under ``TRITON_INTERPRET=1`` (read when this module is first imported). The
  interpreter runs kernels on CPU tensors with numpy; autotuning is bypassed there (fixed configs).
- ``maybe_autotune``: ``triton.autotune`` on a GPU. Set ``XLSTM_TRITON_AUTOTUNE=0`` to skip the search and
  use each kernel's default config (faster start-up, e.g. for short jobs and tests on a GPU).
- ``mm``: a matmul for the kernels, fp32 accumulation. fp32 inputs use exact fp32 ("ieee") products so
  results match the fp32 torch reference; bf16 inputs cast both operands to bf16 (tensor cores; bf16
  has fp32's exponent range, so fp32 intermediates such as the state C or dh / denominator cannot
  overflow). fp16 inputs use tf32 products instead: tf32 has fp16's 10-bit mantissa (fp16 operands are
  exact) and fp32's exponent range, so intermediates up to ~1e38 (dh / denominator reaches 1e6 / eps
  scales, the state C grows with the sequence) neither overflow nor fall into fp16 subnormals. The
  interpreter mis-handles bf16 ``tl.dot`` (it multiplies raw bits) and ignores tf32, so there both
  roundings are emulated: round the operands (to bf16, or to tf32 by bit arithmetic), then multiply in
  fp32.
"""

from __future__ import annotations

import os

import triton
import triton.language as tl

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"


def maybe_autotune(configs, key, default=0, prune=None):
    """``triton.autotune`` on a GPU; the bare kernel under the interpreter (the caller passes a fixed config).

    ``default``: index of the config used when ``XLSTM_TRITON_AUTOTUNE=0``; ``prune``: an
    ``early_config_prune(configs, named_args, **kwargs)`` callback.
    """

    def deco(fn):
        if INTERPRET:
            return fn
        if os.environ.get("XLSTM_TRITON_AUTOTUNE", "1") == "0":
            return triton.autotune(configs=[configs[default]], key=key)(fn)
        kw = {"prune_configs_by": {"early_config_prune": prune}} if prune is not None else {}
        return triton.autotune(configs=configs, key=key, **kw)(fn)

    return deco


def prune_head_blocks(configs, named_args, **kwargs):
    """Drop configs whose head-dim tiles (BK, BV) are larger than needed for DHQK / DHV."""
    args = {**named_args, **kwargs}

    def need(d):
        return max(32, triton.next_power_of_2(int(d)))

    kept = [c for c in configs
            if ("BK" not in c.kwargs or "DHQK" not in args or c.kwargs["BK"] <= need(args["DHQK"]))
            and ("BV" not in c.kwargs or "DHV" not in args or c.kwargs["BV"] <= need(args["DHV"]))]
    return kept or list(configs[:1])


def pow2_block(d: int, lo: int = 16, hi: int = 64) -> int:
    """Smallest power of two >= d, clamped to [lo, hi] (tl.dot needs every dimension >= 16)."""
    return max(lo, min(hi, triton.next_power_of_2(max(1, d))))


@triton.jit
def round_tf32(x):
    """fp32 -> nearest tf32 value (10 mantissa bits, ties to even), as the tensor cores read fp32 operands."""
    bits = x.to(tl.uint32, bitcast=True)
    bits = (bits + (((bits >> 13) & 1) + 0xFFF)) & 0xFFFFE000
    return bits.to(tl.float32, bitcast=True)


@triton.jit
def mm(a, b, DT: tl.constexpr, EMU: tl.constexpr):
    """a @ b with fp32 accumulation; DT is the input element type (see module docstring)."""
    if DT == tl.float32:
        r = tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
    elif DT == tl.float16:
        if EMU:
            r = tl.dot(round_tf32(a.to(tl.float32)), round_tf32(b.to(tl.float32)), input_precision="ieee")
        else:
            r = tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="tf32")
    elif EMU:
        r = tl.dot(a.to(DT).to(tl.float32), b.to(DT).to(tl.float32), input_precision="ieee")
    else:
        r = tl.dot(a.to(DT), b.to(DT))
    return r


@triton.jit
def logsigmoid(x):
    """log(sigmoid(x)) = min(x, 0) - log1p(exp(-|x|)), with log1p accurate for tiny arguments."""
    e = tl.exp(-tl.abs(x))
    l1p = tl.where(e < 1e-4, e * (1.0 - 0.5 * e), tl.log(1.0 + e))
    return tl.minimum(x, 0.0) - l1p


@triton.jit
def tanh(x):
    e = tl.exp(-2.0 * tl.abs(x))
    t = (1.0 - e) / (1.0 + e)
    t = tl.where(x < 0, -t, t)
    x2 = x * x
    return tl.where(tl.abs(x) < 0.05, x * (1.0 - x2 * (1.0 / 3.0) + x2 * x2 * (2.0 / 15.0)), t)
