"""Our torch chunkwise mLSTM vs the `transformers` native chunkwise mLSTM, side by side on CPU.

1. forward+backward time on the same inputs (default B=1, NH=4, S=4096, DH=64, fp32, chunk 64), printed
   as a ratio (transformers time / ours: > 1 means we are faster), plus the max output difference;
2. activation memory (bytes of the distinct tensors autograd saves for backward, counted with
   saved-tensor hooks: deterministic, independent of allocator noise) for S = 1k..16k, our chunkwise
   vs our quadratic parallel form.

    python tools/bench/mlstm_chunkwise_cpu.py [--S 4096] [--reps 5] [--mem-only | --time-only]
"""

from __future__ import annotations

import argparse
import importlib
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


def bench_time(args):
    from xlstm_kernels import mlstm_chunkwise

    hf = hf_native_chunkwise()
    inputs = make_inputs(args.B, args.NH, args.S, args.DH)
    ours = lambda *x: mlstm_chunkwise(*x, chunk_size=args.chunk)  # noqa: E731
    theirs = lambda *x: hf(*x, chunk_size=args.chunk)  # noqa: E731
    fwd_bwd(ours, inputs), fwd_bwd(theirs, inputs)  # warm-up
    t_ours, t_hf = [], []
    for _ in range(args.reps):  # interleaved, so that background load hits both alike
        t, h_ours = fwd_bwd(ours, inputs)
        t_ours.append(t)
        t, h_hf = fwd_bwd(theirs, inputs)
        t_hf.append(t)
    t_ours, t_hf = statistics.median(t_ours), statistics.median(t_hf)
    print(f"fwd+bwd B={args.B} NH={args.NH} S={args.S} DH={args.DH} fp32 chunk={args.chunk} "
          f"threads={torch.get_num_threads()} (median of {args.reps})")
    print(f"  ours (xlstm_kernels.mlstm_chunkwise)        {t_ours * 1e3:9.1f} ms")
    print(f"  transformers mlstm_chunkwise_native_autograd {t_hf * 1e3:9.1f} ms")
    print(f"  ratio transformers/ours = {t_hf / t_ours:.2f}   max |h_ours - h_hf| = {(h_ours - h_hf).abs().max():.2e}")


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
    ap.add_argument("--S", type=int, default=4096)
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
