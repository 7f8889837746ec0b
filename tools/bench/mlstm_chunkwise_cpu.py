"""Our torch chunkwise mLSTM vs the strongest pure-PyTorch peers, side by side on CPU.

1. forward+backward time on the same inputs (default B=1, NH=4, DH=64, fp32, chunk 64) for
   S = 512 .. 8192 (``--S`` for others), interleaved repetitions, median: ours, mlstm_kernels'
   ``chunkwise--native_custbw`` (hand-written backward; the official pure-torch kernel, an optional
   benchmark peer: ``pip install mlstm_kernels``, never a dependency) and transformers'
   ``mlstm_chunkwise_native_autograd`` (its fallback when ``xlstm`` is absent). Printed: times, the ratios
   peer / ours (> 1: we are faster), our time per doubling of S (2.0 = linear), max output difference;
2. activation memory (bytes of the distinct tensors autograd saves for backward, counted with
   saved-tensor hooks: deterministic, independent of allocator noise) for S = 1k..16k, our chunkwise
   vs our quadratic parallel form.

    python tools/bench/mlstm_chunkwise_cpu.py [--S 512 2048 8192] [--reps 5] [--mem-only | --time-only]
"""

from __future__ import annotations

import argparse
import importlib
import math
import statistics
import time

import torch

from activation_memory import saved_activation_bytes


def hf_native_chunkwise():
    """transformers' pure-PyTorch fallback (only defined when the `xlstm` package is absent: hide it)."""
    import transformers.utils as tu

    tu.is_xlstm_available = lambda: False
    import transformers.models.xlstm.modeling_xlstm as mx

    mx = importlib.reload(mx)
    return mx.mlstm_chunkwise_native_autograd


def make_inputs(B, NH, S, DH, seed=0, requires_grad=True):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(B, NH, S, DH, generator=g) for _ in range(3))
    i = torch.randn(B, NH, S, generator=g)
    f = 3.0 + torch.randn(B, NH, S, generator=g)
    return [t.requires_grad_(requires_grad) for t in (q, k, v, i, f)]


def fwd_bwd(fn, inputs):
    for t in inputs:
        t.grad = None
    t0 = time.perf_counter()
    h = fn(*inputs)
    h.sum().backward()
    return time.perf_counter() - t0, h.detach()


def native_custbw():
    """mlstm_kernels' pure-torch chunkwise kernel with its hand-written backward, or None if not installed."""
    try:
        from mlstm_kernels.torch.chunkwise.native import mlstm_chunkwise__native_custbw
    except ImportError:
        return None
    return mlstm_chunkwise__native_custbw


def bench_time(args):
    from xlstm_kernels import mlstm_chunkwise

    fns = {"ours": lambda *x: mlstm_chunkwise(*x, chunk_size=args.chunk)}
    custbw = native_custbw()
    if custbw is not None:
        fns["mlstm_kernels native_custbw"] = lambda *x: custbw(*x, chunk_size=args.chunk)
    else:
        print("mlstm_kernels is not installed: native_custbw skipped (pip install mlstm_kernels)")
    hf = hf_native_chunkwise()
    fns["transformers native_autograd"] = lambda *x: hf(*x, chunk_size=args.chunk)
    print(f"fwd+bwd B={args.B} NH={args.NH} DH={args.DH} fp32 chunk={args.chunk} threads={torch.get_num_threads()} "
          f"(median of {args.reps} interleaved repetitions; ratio = peer time / ours, > 1: we are faster)")
    peers = [n for n in fns if n != "ours"]
    print(f"{'S':>6} " + " ".join(f"{n[:28]:>28}" for n in fns) + " " + " ".join(f"{'x ' + n[:20]:>22}" for n in peers)
          + f" {'ours x per 2S':>13} {'max|dh|':>8}")
    prev = None
    for S in args.S:
        inputs = make_inputs(args.B, args.NH, S, args.DH)
        outs = {n: fwd_bwd(fn, inputs)[1] for n, fn in fns.items()}  # warm-up, and the outputs to compare
        times = {n: [] for n in fns}
        for _ in range(args.reps):  # interleaved, so that background load hits all alike
            for n, fn in fns.items():
                times[n].append(fwd_bwd(fn, inputs)[0])
        t = {n: statistics.median(v) for n, v in times.items()}
        diff = max((outs[n] - outs["ours"]).abs().max().item() for n in peers)
        growth = f"{(t['ours'] / prev[1]) ** (1 / math.log2(S / prev[0])):13.2f}" if prev else f"{'-':>13}"
        print(f"{S:>6} " + " ".join(f"{t[n] * 1e3:25.1f} ms" for n in fns) + " "
              + " ".join(f"{t[n] / t['ours']:22.2f}" for n in peers) + f" {growth} {diff:8.1e}")
        prev = (S, t["ours"])


def bench_memory(args):
    from xlstm_kernels import mlstm_chunkwise, mlstm_parallel

    print(f"\nactivation memory saved for backward (MiB), B=1 NH={args.mem_NH} DH={args.DH} fp32, chunk {args.chunk}")
    print(f"{'S':>6} {'chunkwise':>10} {'parallel':>10} {'parallel/chunkwise':>19}")
    for S in (1024, 2048, 4096, 8192, 16384):
        inputs = make_inputs(1, args.mem_NH, S, args.DH)
        c = saved_activation_bytes(lambda *x: mlstm_chunkwise(*x, chunk_size=args.chunk), inputs) / 2**20
        est_gib = 8 * 4 * args.mem_NH * S * S / 2**30  # ~8 S x S fp32 matrices in the parallel form
        p = None
        if est_gib <= args.mem_limit_gib:
            p = saved_activation_bytes(mlstm_parallel, inputs) / 2**20
        p_txt = f"{p:10.1f}" if p is not None else f"{'skipped':>10}"
        r_txt = f"{p / c:19.1f}" if p is not None else f"{'-':>19}"
        print(f"{S:>6} {c:10.1f} {p_txt} {r_txt}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--B", type=int, default=1)
    ap.add_argument("--NH", type=int, default=4)
    ap.add_argument("--S", type=int, nargs="+", default=[512, 1024, 2048, 4096, 8192])
    ap.add_argument("--DH", type=int, default=64)
    ap.add_argument("--chunk", type=int, default=64)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--mem-NH", type=int, default=1)
    ap.add_argument("--mem-limit-gib", type=float, default=12.0, help="skip parallel points estimated above this")
    ap.add_argument("--time-only", action="store_true")
    ap.add_argument("--mem-only", action="store_true")
    args = ap.parse_args()
    if not args.mem_only:
        bench_time(args)
    if not args.time_only:
        bench_memory(args)


if __name__ == "__main__":
    main()
