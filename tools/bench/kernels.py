"""Benchmark + correctness check of our Triton xLSTM kernels on a GPU (H100 / H200).

1. correctness: our Triton mLSTM (bf16 and fp32 inputs, ragged length, document resets, initial and
   final state) and sLSTM against the fp64 torch reference on the GPU: relative max error of the outputs
   and of every gradient (inputs, gates, initial state);
2. speed: forward+backward time and TFLOP/s of the chunkwise mLSTM at B=8, NH=8, S in {2048, 8192,
   32768}, DHQK=256, DHV=512, bf16, next to our mLSTM on flash-linear-attention's kernel ("ours (fla)",
   backend="fla", kernels/mlstm/fla.py, when fla is installed; its correctness is checked in 1. too) and
   the peers that are importable:
     - mlstm_kernels ``chunkwise--triton_xl_chunk`` (NXAI TFLA; only run as a reference, never imported
       by our package),
     - flash-linear-attention ``chunk_simple_gla`` (scalar-gated linear attention: same state size, no
       normaliser / max stabiliser),
     - PyTorch SDPA causal attention (same q, k, v shapes),
     - our torch chunkwise reference,
   and the sLSTM Triton kernel vs the torch reference loop.
   TFLOP/s use one FLOP count for every column (our chunkwise matmul count), so they compare times;
   "x ours" is peer time / our time (> 1: we are faster).

    python tools/bench/kernels.py                     # full run (needs CUDA)
    python tools/bench/kernels.py --seqlens 2048 --skip-peers
    python tools/bench/kernels.py --cpu-smoke         # tiny dry run on CPU under TRITON_INTERPRET=1
    python tools/bench/kernels.py --aot-check         # compile every kernel for sm_90, no GPU needed

--aot-check compiles each kernel (default autotune config) ahead of time for a CUDA target with the
toolchain bundled in the triton wheel, and reports shared memory, registers and spill bytes per thread
(cuobjdump's STACK): it catches compile errors the interpreter does not see, and, at the shipped shapes
in bf16, fails on register spills or launches that would exceed the SM's shared memory, on a machine
without a GPU (--aot-quick: only those asserted rows). --aot-all-configs compiles every config the GPU
autotuner may try for the tiled mLSTM kernels (pointer and TMA forms) at the shipped bf16 shapes: the autotuner
survives spills and out-of-resources configs, but a compile error would end the training run.
"""

from __future__ import annotations

import argparse
import inspect
import math
import os
import statistics
import sys
import time
from pathlib import Path

DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--B", type=int, default=8)
    p.add_argument("--NH", type=int, default=8)
    p.add_argument("--seqlens", type=int, nargs="+", default=[2048, 8192, 32768])
    p.add_argument("--dhqk", type=int, default=256)
    p.add_argument("--dhv", type=int, default=512)
    p.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    p.add_argument("--chunk-size", type=int, default=64, help="our chunk size (power of two)")
    p.add_argument("--peer-chunk-size", type=int, default=128, help="chunk size for mlstm_kernels xl_chunk")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--skip-peers", action="store_true", help="only our kernels (and the torch reference)")
    p.add_argument("--skip-torch-ref-above", type=int, default=8192,
                   help="do not time the torch chunkwise reference above this S (memory)")
    p.add_argument("--skip-correctness", action="store_true")
    p.add_argument("--slstm-B", type=int, default=8)
    p.add_argument("--slstm-NH", type=int, default=4)
    p.add_argument("--slstm-DH", type=int, default=192, help="default: the 125M xLSTM[7:1]'s sLSTM heads")
    p.add_argument("--slstm-official-cuda", action="store_true",
                   help="also time the official xlstm sLSTM CUDA backend (compiled just in time: minutes)")
    p.add_argument("--slstm-S", type=int, default=2048)
    p.add_argument("--aot-check", action="store_true",
                   help="compile every kernel for --aot-arch without a GPU; report smem / registers / spills")
    p.add_argument("--aot-arch", type=int, default=90, help="CUDA compute capability for --aot-check (90 = H100/H200)")
    p.add_argument("--aot-quick", action="store_true", help="--aot-check on fewer variants (used by the tests)")
    p.add_argument("--aot-all-configs", action="store_true",
                   help="--aot-check every autotune config of the tiled mLSTM kernels at the shipped shapes instead")
    p.add_argument("--aot-filter", default="", help="--aot-check only the variants whose label contains this text")
    p.add_argument("--cpu-smoke", action="store_true",
                   help="tiny sizes on CPU under the Triton interpreter (sets TRITON_INTERPRET=1): checks the script runs")
    return p.parse_args(argv)


# ---------------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------------
def rel_err(a, b):
    import torch

    a, b = a.detach().to(torch.float64), b.detach().to(torch.float64)
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()


def timeit(fn, device, warmup, reps):
    """Median seconds of fn() (fn does forward + backward)."""
    import torch

    for _ in range(warmup):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def guarded(fn):
    """Run fn; return (value, None) or (None, short error) on OOM / missing feature / failure."""
    import torch

    try:
        return fn(), None
    except torch.cuda.OutOfMemoryError:
        torch.cuda.empty_cache()
        return None, "OOM"
    except Exception as e:  # noqa: BLE001 - a peer failing must not stop the benchmark
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        return None, f"{type(e).__name__}: {str(e).splitlines()[0][:80] if str(e) else ''}"


def print_table(title, header, rows):
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    print(f"\n{title}")
    print("  ".join(str(h).rjust(w) for h, w in zip(header, widths)))
    for r in rows:
        print("  ".join(str(x).rjust(w) for x, w in zip(r, widths)))


# ---------------------------------------------------------------------------------------------------
# correctness
# ---------------------------------------------------------------------------------------------------
def fla_available():
    import importlib.util

    return importlib.util.find_spec("fla") is not None


def mlstm_correctness(device, dtype, B, NH, S, DK, DV, chunk_size, kernel="triton"):
    import torch

    from xlstm_kernels.mlstm import mlstm_chunkwise

    if kernel == "fla":
        from xlstm_kernels.mlstm.fla import mlstm_fla as mlstm_kernel
    else:
        from xlstm_kernels.mlstm.chunkwise_triton import mlstm_chunkwise_triton as mlstm_kernel

    g = torch.Generator().manual_seed(0)
    xs = [torch.randn(B, NH, S, DK, generator=g), torch.randn(B, NH, S, DK, generator=g),
          torch.randn(B, NH, S, DV, generator=g), torch.randn(B, NH, S, generator=g),
          torch.randn(B, NH, S, generator=g) + 3.0, torch.randn(B, NH, DK, DV, generator=g),
          torch.randn(B, NH, DK, generator=g), torch.randn(B, NH, 1, generator=g)]
    xs = [x.to(dtype).float() if j < 3 else x for j, x in enumerate(xs)]  # both sides see the rounded inputs
    reset = (torch.rand(B, S, generator=g) < 2.0 / max(S, 1)).to(device)
    ws = [torch.randn(B, NH, S, DV, generator=g), torch.randn(B, NH, DK, DV, generator=g),
          torch.randn(B, NH, DK, generator=g), torch.randn(B, NH, 1, generator=g)]
    ws = [w.to(device, torch.float64) for w in ws]

    def run(fn, in_dtype):
        a = [x.to(device, in_dtype if (j < 3 or in_dtype == torch.float64) else torch.float32).requires_grad_()
             for j, x in enumerate(xs)]
        h, st = fn(*a[:5], initial_state=tuple(a[5:]), reset=reset, return_final_state=True, chunk_size=chunk_size)
        outs = [h, *st]
        loss = sum((o.double() * w).sum() for o, w in zip(outs, ws))
        return outs + list(torch.autograd.grad(loss, a))

    ref = run(mlstm_chunkwise, torch.float64)
    got = run(mlstm_kernel, dtype)
    names = ["h", "C", "n", "m", "dq", "dk", "dv", "di", "df", "dC0", "dn0", "dm0"]
    return {n: rel_err(a, b) for n, a, b in zip(names, got, ref)}


def slstm_correctness(device, dtype, B, S, NH, DH):
    import torch

    from xlstm_kernels.slstm import slstm_recurrent
    from xlstm_kernels.slstm.recurrent_triton import slstm_recurrent_triton

    g = torch.Generator().manual_seed(0)
    xs = [torch.randn(B, S, 4, NH, DH, generator=g), torch.randn(4, NH, DH, DH, generator=g) * 0.3 / math.sqrt(DH),
          torch.randn(4, NH, DH, generator=g), torch.randn(B, NH, DH, generator=g), torch.randn(B, NH, DH, generator=g),
          torch.rand(B, NH, DH, generator=g) + 0.5, torch.randn(B, NH, DH, generator=g)]
    xs = [x.to(dtype).float() if j < 3 else x for j, x in enumerate(xs)]
    reset = (torch.rand(B, S, generator=g) < 2.0 / max(S, 1)).to(device)
    ws = [torch.randn(B, S, NH, DH, generator=g)] + [torch.randn(B, NH, DH, generator=g) for _ in range(3)]
    ws = [w.to(device, torch.float64) for w in ws]

    def run(fn, in_dtype):
        a = [x.to(device, in_dtype if (j < 3 or in_dtype == torch.float64) else torch.float32).requires_grad_()
             for j, x in enumerate(xs)]
        y, st = fn(a[0], a[1], a[2], initial_state=tuple(a[3:]), reset=reset, return_final_state=True)
        outs = [y, *st]
        loss = sum((o.double() * w).sum() for o, w in zip(outs[:4], ws))
        return outs + list(torch.autograd.grad(loss, a))

    ref = run(slstm_recurrent, torch.float64)
    got = run(slstm_recurrent_triton, dtype)
    names = ["y", "y_N", "c_N", "n_N", "m_N", "dwx", "dR", "db", "dy0", "dc0", "dn0", "dm0"]
    return {n: rel_err(a, b) for n, a, b in zip(names, got, ref)}


# ---------------------------------------------------------------------------------------------------
# speed
# ---------------------------------------------------------------------------------------------------
def mlstm_contenders(args, device, dtype):
    """name -> factory(q, k, v, i, f) -> callable doing forward + backward; None when not importable."""
    import torch

    from xlstm_kernels.mlstm import mlstm_chunkwise
    from xlstm_kernels.mlstm.chunkwise_triton import mlstm_chunkwise_triton

    def fwbw(call):
        def run():
            out = call()
            out.backward(torch.ones_like(out))
        return run

    out = {"ours (triton)": lambda q, k, v, i, f: fwbw(lambda: mlstm_chunkwise_triton(q, k, v, i, f,
                                                                                        chunk_size=args.chunk_size))}
    from xlstm_kernels.mlstm import chunkwise_triton as ct

    if device.type == "cuda" and ct._has_tma(device):  # what the TMA tile loads (the default here) are worth
        def pointer_loads(q, k, v, i, f):
            inner = fwbw(lambda: mlstm_chunkwise_triton(q, k, v, i, f, chunk_size=args.chunk_size))

            def run():  # forward and backward both on the pointer loads
                saved, ct.TMA_LOADS = ct.TMA_LOADS, False
                try:
                    inner()
                finally:
                    ct.TMA_LOADS = saved
            return run
        out["ours (triton, pointer loads)"] = pointer_loads
    if fla_available():  # our mLSTM (normaliser, stabiliser, states) on FLA's chunk_simple_gla kernels
        from xlstm_kernels.mlstm.fla import mlstm_fla

        out["ours (fla)"] = lambda q, k, v, i, f: fwbw(lambda: mlstm_fla(q, k, v, i, f, chunk_size=args.chunk_size))
    else:
        print("[skipped] ours (fla): flash-linear-attention is not installed")
    if args.skip_peers or device.type != "cuda":
        out["torch chunkwise ref"] = lambda q, k, v, i, f: fwbw(lambda: mlstm_chunkwise(q, k, v, i, f,
                                                                                      chunk_size=args.chunk_size))
        return out
    try:  # NXAI TFLA kernels: benchmark reference only
        from mlstm_kernels.torch import get_mlstm_kernel

        xl = get_mlstm_kernel("chunkwise--triton_xl_chunk")
        kw = {"chunk_size": args.peer_chunk_size}
        if "autocast_kernel_dtype" in inspect.signature(xl).parameters:
            kw["autocast_kernel_dtype"] = dtype
        out["mlstm_kernels xl_chunk"] = lambda q, k, v, i, f: fwbw(lambda: xl(q, k, v, i, f, **kw))
    except Exception as e:  # noqa: BLE001
        print(f"[peer skipped] mlstm_kernels: {type(e).__name__}: {e}")
    try:
        from fla.ops.simple_gla import chunk_simple_gla

        params = inspect.signature(chunk_simple_gla).parameters

        def fla_factory(q, k, v, i, f):
            qt, kt, vt = (x.transpose(1, 2).contiguous().detach().requires_grad_() for x in (q, k, v))
            gt = torch.nn.functional.logsigmoid(f.float()).transpose(1, 2).contiguous().detach().requires_grad_()
            kw = {"head_first": False} if "head_first" in params else {}

            def call():
                o = chunk_simple_gla(q=qt, k=kt, v=vt, g=gt, scale=q.shape[-1] ** -0.5, **kw)
                return o[0] if isinstance(o, tuple) else o
            return fwbw(call)
        out["fla chunk_simple_gla"] = fla_factory
    except Exception as e:  # noqa: BLE001
        print(f"[peer skipped] flash-linear-attention: {type(e).__name__}: {e}")

    def sdpa_factory(q, k, v, i, f):
        return fwbw(lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True))
    out["torch SDPA causal"] = sdpa_factory
    out["torch chunkwise ref"] = lambda q, k, v, i, f: fwbw(lambda: mlstm_chunkwise(q, k, v, i, f,
                                                                                  chunk_size=args.chunk_size))
    return out


def mlstm_speed(args, device, dtype):
    import torch

    from xlstm_kernels.mlstm.chunkwise_triton import flops_fwbw

    contenders = mlstm_contenders(args, device, dtype)
    names = list(contenders)
    rows = []
    for S in args.seqlens:
        g = torch.Generator(device=device).manual_seed(0)
        B, NH, DK, DV = args.B, args.NH, args.dhqk, args.dhv
        mk = lambda *shape: torch.randn(*shape, generator=g, device=device)  # noqa: E731
        q, k = (mk(B, NH, S, DK).to(dtype).requires_grad_() for _ in range(2))
        v = mk(B, NH, S, DV).to(dtype).requires_grad_()
        i = mk(B, NH, S).requires_grad_()
        f = (mk(B, NH, S) + 3.0).requires_grad_()
        flops = flops_fwbw(B, NH, S, DK, DV, args.chunk_size)
        times = {}
        for name in names:
            if name == "torch chunkwise ref" and S > args.skip_torch_ref_above:
                times[name] = (None, "skipped")
                continue
            fn, err = guarded(lambda: contenders[name](q, k, v, i, f))
            if fn is None:
                times[name] = (None, err)
                continue
            for x in (q, k, v, i, f):
                x.grad = None
            times[name] = guarded(lambda: timeit(fn, device, args.warmup, args.reps))
            print(f"  S={S} {name}: " + (f"{times[name][0] * 1e3:.2f} ms" if times[name][0] else times[name][1]),
                  flush=True)
        ours = times[names[0]][0]
        row = [S]
        for name in names:
            t, err = times[name]
            if t is None:
                row.append(err[:24])
            else:
                ratio = f" x{t / ours:.2f}" if ours and name != names[0] else ""
                row.append(f"{t * 1e3:.2f}ms {flops / t / 1e12:.1f}TF{ratio}")
        rows.append(row)
        del q, k, v, i, f
        if device.type == "cuda":
            torch.cuda.empty_cache()
    print_table(f"mLSTM chunkwise forward+backward, B={args.B} NH={args.NH} DHQK={args.dhqk} DHV={args.dhv} "
                f"{args.dtype} (time, TFLOP/s of our FLOP count, x = peer time / ours)", ["S"] + names, rows)


def _official_slstm(backend, B, S, NH, DH, dtype, device, R, b):
    """The official ``xlstm`` sLSTM cell (``vanilla``: a torch loop; ``cuda``: its fused CUDA kernel, compiled
    just in time) with our R and b, as a function of our wx layout."""
    import torch
    from xlstm.blocks.slstm.cell import sLSTMCell, sLSTMCellConfig

    dt = {"torch.bfloat16": "bfloat16", "torch.float16": "float16"}.get(str(dtype), "float32")
    cell = sLSTMCell(sLSTMCellConfig(hidden_size=NH * DH, num_heads=NH, backend=backend, dtype=dt,
                                     enable_automatic_mixed_precision=False)).to(device)
    with torch.no_grad():
        # ours: R (4, NH, DH_in, DH_out), y @ R; theirs: (NH, 4, DH_out, DH_in) flattened
        cell._recurrent_kernel_.copy_(R.detach().permute(1, 0, 3, 2).reshape(cell._recurrent_kernel_.shape))
        cell._bias_.copy_(b.detach().reshape(cell._bias_.shape))

    def fn(wx, R_, b_):
        out, _ = cell(wx.reshape(B, S, 4 * NH * DH))
        return out
    return fn


def slstm_speed(args, device, dtype):
    import torch

    from xlstm_kernels.slstm import recurrent_triton as rt
    from xlstm_kernels.slstm import slstm_recurrent
    from xlstm_kernels.slstm.recurrent_triton import flops_fwbw, slstm_recurrent_triton

    B, S, NH, DH = args.slstm_B, args.slstm_S, args.slstm_NH, args.slstm_DH
    g = torch.Generator(device=device).manual_seed(0)
    wx = torch.randn(B, S, 4, NH, DH, generator=g, device=device).to(dtype).requires_grad_()
    R = (torch.randn(4, NH, DH, DH, generator=g, device=device) * 0.3 / math.sqrt(DH)).to(dtype).requires_grad_()
    b = torch.randn(4, NH, DH, generator=g, device=device).to(dtype).requires_grad_()

    def fwbw(fn, override=None):
        def run():
            saved = rt.SPLIT_OVERRIDE
            rt.SPLIT_OVERRIDE = override
            try:
                y = fn(wx, R, b)
                y.backward(torch.ones_like(y))
            finally:
                rt.SPLIT_OVERRIDE = saved
        return run

    # ours as dispatched (split kernels where split_plan picks them), ours with the split off (blocked /
    # register kernels), the torch reference, and the official xlstm cell: vanilla (torch) and cuda (if it builds)
    plan = None if device.type != "cuda" or not rt._use_blocked(DH) else rt.split_plan(
        B, NH, DH, torch.cuda.get_device_properties(device).multi_processor_count, wx.element_size())
    cands = [("ours (triton)", lambda: fwbw(slstm_recurrent_triton)),
             ("ours, split off", lambda: fwbw(slstm_recurrent_triton, override=False)),
             ("torch reference", lambda: fwbw(slstm_recurrent))]
    if not args.skip_peers:
        for backend in ("vanilla", "cuda") if args.slstm_official_cuda else ("vanilla",):
            cands.append((f"official xlstm {backend}",
                          lambda backend=backend: fwbw(_official_slstm(backend, B, S, NH, DH, dtype, device, R, b))))
    res = {}
    for name, make in cands:
        res[name] = guarded(lambda make=make: timeit(make(), device, 1, max(1, args.reps // 2)))
    flops = flops_fwbw(B, S, NH, DH)
    ours = res["ours (triton)"][0]
    row = [S]
    for name, (t, err) in res.items():
        row.append(err[:24] if t is None else
                   f"{t * 1e3:.2f}ms {flops / t / 1e12:.2f}TF" + (f" x{t / ours:.2f}" if ours and name != "ours (triton)" else ""))
    print_table(f"sLSTM forward+backward, B={B} NH={NH} DH={DH} {args.dtype}, split plan {plan} "
                f"(x = that time / ours; target: official vanilla >= x10)", ["S"] + list(res), [row])
    if device.type != "cuda" or not rt._use_blocked(DH):
        return
    # the split tiles split_plan chooses between (it picks the smallest BN whose grid fits the SMs; this shows
    # whether that is the fastest): ours forced to each, "grid > SMs" where the barrier could not run
    rows = []
    for tile in ((16, True), (32, True), (32, False), (64, False)):
        t, err = guarded(lambda tile=tile: timeit(fwbw(slstm_recurrent_triton, override=tile), device, 1,
                                                  max(1, args.reps // 2)))
        rows.append([f"BN{tile[0]}{' R on chip' if tile[1] else ' R re-read'}",
                     err[:40] if t is None else f"{t * 1e3:.2f}ms x{t / ours:.2f}" if ours else f"{t * 1e3:.2f}ms"])
    print_table(f"sLSTM split tiles, B={B} NH={NH} DH={DH} S={S} (x = that time / ours as dispatched)",
                ["tile", "forward+backward"], rows)


# ---------------------------------------------------------------------------------------------------
# ahead-of-time compile check (no GPU needed)
# ---------------------------------------------------------------------------------------------------
SMEM_LIMIT = 232448  # bytes of shared memory per block on sm_90 (227 KiB)


# Shapes the shipped configs train at (configs/model/*.yaml; chunk_size 64 everywhere on GPU): mLSTM
# (label, DHQK, DHV) and sLSTM head dims. The large family's 7B has DHQK 256, DHV 512; the paper family's
# mLSTM heads are mlstm_inner_dim / 4 = 2 * d / 4 (125M..1.3B), its sLSTM heads d / 4.
SHIPPED_MLSTM = [("7B", 256, 512), ("125M", 384, 384), ("350M", 512, 512), ("760M", 768, 768), ("1.3B", 1024, 1024)]
SHIPPED_CHUNK = 64
SHIPPED_SLSTM_DH = [192, 256, 384, 512]  # 125M, 350M, 760M, 1.3B
SHIPPED_SLSTM_B = 8  # micro-batch of the shipped 125M runs (configs/runs/*125m*)
H100_SMS = 132
_MLSTM_KERNELS = (("_fw_recurrent", "_REC_CONFIGS"), ("_fw_output", "_PAR_CONFIGS"), ("_bw_recurrent", "_REC_CONFIGS"),
                  ("_bw_dqk", "_DQK_CONFIGS"), ("_bw_dv", "_PAR_CONFIGS"), ("_bw_mchain", None), ("_bw_prep", None))


def _config_variants():
    """Every autotune config of the tiled mLSTM kernels (pointer and TMA forms) in bf16 at the 7B's head dims with
    and without resets and at the 125M's (384: not a power of two) with: rows that must compile (spills are
    reported, not asserted: the autotuner times them). The paper family's other heads are powers of two whose
    tiles compile like the 7B's."""
    from xlstm_kernels.mlstm import chunkwise_triton as ct

    out = []
    for lbl, DHQK, DHV, resets in (("7B", 256, 512, (True, False)), ("125M", 384, 384, (True,))):
        for has_reset in resets:
            for tma in (False, True):
                for name, cfgs in _MLSTM_KERNELS:
                    if cfgs is None:
                        continue
                    for c in getattr(ct, cfgs.replace("_CONFIGS", "_TMA_CONFIGS") if tma else cfgs):
                        consts = dict(L=SHIPPED_CHUNK, DHQK=DHQK, DHV=DHV, HAS_RESET=has_reset, EMU=False, TMA=tma,
                                      KEY_DT="bf16", **c.kwargs)
                        out.append((f"mLSTM {name} {lbl} L{SHIPPED_CHUNK} {DHQK}x{DHV} BK{c.kwargs['BK']} "
                                    f"BV{c.kwargs['BV']} w{c.num_warps} s{c.num_stages}{' TMA' if tma else ''}"
                                    f"{'' if has_reset else ' no-reset'}", getattr(ct, name), consts, c.num_warps,
                                    c.num_stages, "bf16", False))
    return out


def _kernel_variants(quick):
    """(label, kernel object, constexprs, num_warps, num_stages, dtype, asserted) for every kernel we launch,
    with each kernel's default autotune config (the one XLSTM_TRITON_AUTOTUNE=0 runs). ``asserted``: a
    shipped shape in bf16 (the training dtype), where spills and shared memory over the limit fail the
    check; the other rows (fp16 / fp32, chunk 128, small heads) are reported only. ``quick="configs"``: the
    rows of ``_config_variants`` instead."""
    from xlstm_kernels.mlstm import chunkwise_triton as ct
    from xlstm_kernels.slstm import recurrent_triton as rt

    if quick == "configs":
        return _config_variants()
    out = []
    # (label, DHQK, DHV, chunk, dtype, resets, TMA tile loads (the default on sm_90), asserted)
    m_cases = [(lbl, dk, dv, SHIPPED_CHUNK, "bf16", True, tma, True) for lbl, dk, dv in SHIPPED_MLSTM
               for tma in (True, False)]
    if not quick:
        m_cases += [("7B", 256, 512, SHIPPED_CHUNK, "bf16", False, tma, True) for tma in (True, False)]
        m_cases += [("7B", 256, 512, SHIPPED_CHUNK, dt, True, tma, False) for dt in ("fp16", "fp32") for tma in (True, False)]
        m_cases += [("7B", 256, 512, 128, "bf16", True, tma, False) for tma in (True, False)]
        m_cases += [("small", 64, 64, 32, "bf16", True, False, False)]
    for lbl, DHQK, DHV, L, dt, has_reset, tma, asserted in m_cases:
        for name, cfgs in _MLSTM_KERNELS:
            if tma and cfgs is None:  # _bw_prep / _bw_mchain have no tile loads to move to TMA
                continue
            consts = dict(DHV=DHV, BT=64, BV=128) if name == "_bw_prep" else dict(L=L)
            warps, stages = 4, 1
            if cfgs is not None:
                c = getattr(ct, cfgs.replace("_CONFIGS", "_TMA_CONFIGS") if tma else cfgs)[0]
                consts.update(DHQK=DHQK, DHV=DHV, HAS_RESET=has_reset, EMU=False, TMA=tma, KEY_DT=dt, **c.kwargs)
                warps, stages = c.num_warps, c.num_stages
            tiles = f" BK{consts['BK']} BV{consts['BV']}" if "BK" in consts else ""
            out.append((f"mLSTM {name} {lbl} L{L} {DHQK}x{DHV}{tiles}{' TMA' if tma else ''}"
                        f"{'' if has_reset else ' no-reset'}", getattr(ct, name), consts, warps, stages, dt, asserted))
    s_cases = [("bf16", dh, True) for dh in SHIPPED_SLSTM_DH]
    if not quick:
        s_cases += [("bf16", 64, False), ("bf16", 128, False)] + [("fp32", dh, False) for dh in (64, 192, 512)]
    for dt, DH, asserted in s_cases:
        DHP = max(16, 1 << (DH - 1).bit_length())
        if DHP <= rt.REG_MAX_DH:
            for name in ("_slstm_fw", "_slstm_bw"):
                c = rt._CONFIGS[0]
                out.append((f"sLSTM {name} DH{DH}", getattr(rt, name),
                            dict(DH=DH, DHP=DHP, BB=rt.BB, HAS_RESET=True, EMU=False), c.num_warps, c.num_stages, dt,
                            asserted))
        else:
            for name, cfgs in (("_slstm_fw_blocked", rt._BLOCKED_CONFIGS), ("_slstm_bw_blocked", rt._BLOCKED_BW_CONFIGS)):
                c = cfgs[0]
                out.append((f"sLSTM {name} DH{DH} BN{c.kwargs['BN']}", getattr(rt, name),
                            dict(DH=DH, BB=rt.BB, HAS_RESET=True, EMU=False, **c.kwargs), c.num_warps, c.num_stages,
                            dt, asserted))
    # split kernels at the plan the launcher picks for the shipped runs (micro-batch 8, 4 heads, 132 SMs), and the
    # re-read (non-resident) form at a larger column block (reported only)
    split_cases = [(dh, rt.split_plan(SHIPPED_SLSTM_B, 4, dh, H100_SMS, 2), True) for dh in SHIPPED_SLSTM_DH]
    if not quick:
        split_cases += [(dh, (32, False), False) for dh in (192, 512)]
    for DH, (BN, resident), asserted in split_cases:
        base = dict(DH=DH, DHP=max(16, 1 << (DH - 1).bit_length()), BB=rt.BB, BN=BN, BK=rt.SPLIT_BK,
                    RESIDENT=resident, SYNC=True, HAS_RESET=True, EMU=False)
        tag = f"DH{DH} BN{BN}{' R-resident' if resident else ''}"
        out.append((f"sLSTM _slstm_fw_split {tag}", rt._slstm_fw_split, base, rt._SPLIT_WARPS, 1, "bf16", asserted))
        out.append((f"sLSTM _slstm_bw_split {tag}", rt._slstm_bw_split, dict(base, PHASES=3), rt._SPLIT_WARPS, 1,
                    "bf16", asserted))
    return out


def _arg_type(name, dt, consts=None):
    """The AOT signature type of kernel argument ``name`` for inputs of dtype ``dt``; with ``consts["TMA"]`` the
    mLSTM tile arguments are tensor descriptors with the blocks ``chunkwise_triton._TMA_BLOCKS`` gives them."""
    from xlstm_kernels.mlstm import chunkwise_triton as ct

    if consts and consts.get("TMA") and name in ct._TMA_BLOCKS:
        rows, cols = ct._TMA_BLOCKS[name]
        elem = _arg_type(name, dt)[1:]
        return f"tensordesc<{elem}[1,{consts[rows]},{consts[cols]}]>"
    if name in ("q_ptr", "k_ptr", "v_ptr", "h_ptr", "dh_ptr", "dq_ptr", "dk_ptr", "dv_ptr", "wx_ptr", "y_ptr", "dy_ptr",
                "R_ptr", "b_ptr"):
        return f"*{dt}"
    if name in ("rs_ptr", "cnt_ptr"):
        return "*i32"
    if name in ("Call_ptr", "dCall_ptr"):  # mLSTM per-chunk states: chunkwise_triton.state_dtype (bf16 for bf16)
        return "*bf16" if dt == "bf16" else "*fp32"
    if name.endswith("_ptr"):
        return "*fp32"
    if name in ("scale", "eps"):
        return "fp32"
    return "i32"


def _aot_compile(job):
    """Compile variant ``index`` of ``_kernel_variants(quick)`` for sm_``arch``: (smem, regs, stack) or an error
    string (one process per job: the variants compile in parallel on machines with many cores)."""
    quick, index, arch = job
    import subprocess
    import tempfile

    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from triton.runtime.autotuner import Autotuner

    label, kernel, consts, warps, stages, dt, asserted = _kernel_variants(quick)[index]
    fn = kernel
    while isinstance(fn, Autotuner):
        fn = fn.fn
    sig = {a: ("constexpr" if a in consts else _arg_type(a, dt, consts)) for a in fn.arg_names}
    try:
        compiled = triton.compile(ASTSource(fn, sig, constexprs=consts), target=GPUTarget("cuda", arch, 32),
                                  options={"num_warps": warps, "num_stages": stages})
    except Exception as e:  # noqa: BLE001
        return f"{type(e).__name__}: {e}"
    regs = spill = "?"
    cuobjdump = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    if cuobjdump.exists() and "cubin" in compiled.asm:
        with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
            f.write(compiled.asm["cubin"])
            f.flush()
            res = subprocess.run([str(cuobjdump), "--dump-resource-usage", f.name], capture_output=True, text=True)
        for line in res.stdout.splitlines():
            if "REG:" in line:
                fields = dict(x.split(":", 1) for x in line.split() if ":" in x)
                regs, spill = fields.get("REG", "?"), fields.get("STACK", "?")
    return compiled.metadata.shared, regs, spill


def aot_check(args):
    from concurrent.futures import ProcessPoolExecutor

    mode = "configs" if args.aot_all_configs else args.aot_quick
    variants = _kernel_variants(mode)
    picked = [j for j, v in enumerate(variants) if not args.aot_filter or args.aot_filter in v[0]]
    with ProcessPoolExecutor(max_workers=max(1, min(len(picked), os.cpu_count() or 1))) as pool:
        results = list(pool.map(_aot_compile, [(mode, j, args.aot_arch) for j in picked]))
    rows, failed = [], False
    for j, res in zip(picked, results):
        label, _, _, warps, _, dt, asserted = variants[j]
        if isinstance(res, str):
            rows.append([label, dt, f"w{warps}", "-", "-", "-", "COMPILE ERROR"])
            print(f"{label} {dt}: {res}", file=sys.stderr)
            failed = True
            continue
        smem, regs, spill = res
        problems = ([] if smem <= SMEM_LIMIT else ["smem"]) + ([] if spill == "0" else ["spill"])
        if asserted:
            failed |= bool(problems)
            status = "FAIL (" + ", ".join(problems) + ")" if problems else "PASS"
        else:
            status = "info" + (" (" + ", ".join(problems) + ")" if problems else "")
        rows.append([label, dt, f"w{warps}", smem, regs, spill, status])
    what = ("every autotune config of the tiled mLSTM kernels; each must compile, spills are reported"
            if args.aot_all_configs else "default autotune config of each kernel; shipped shapes in bf16 must "
            f"have no spills (stack 0) and at most {SMEM_LIMIT} B of shared memory")
    print_table(f"AOT compile for sm_{args.aot_arch} ({what})",
                ["kernel", "dtype", "warps", "smem B", "regs", "stack B", "status"], rows)
    return 1 if failed else 0


def main(argv=None):
    args = parse_args(argv)
    if args.aot_check:
        os.environ["TRITON_INTERPRET"] = "0"  # compile real kernels, not interpreter stand-ins
        os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
        try:
            import triton  # noqa: F401
        except ImportError:
            print("triton is not installed.", file=sys.stderr)
            return 2
        return aot_check(args)
    if args.cpu_smoke:
        os.environ["TRITON_INTERPRET"] = "1"  # before anything imports triton kernels
        args.B, args.NH, args.seqlens, args.dhqk, args.dhv, args.chunk_size = 1, 2, [40], 16, 32, 16
        args.slstm_B, args.slstm_NH, args.slstm_DH, args.slstm_S = 2, 2, 16, 12
        args.warmup, args.reps, args.skip_peers = 1, 1, True
    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run from a checkout without installing
    if not args.cpu_smoke and not torch.cuda.is_available():
        print("tools/bench/kernels.py needs a CUDA GPU (none found). Use --cpu-smoke for a tiny CPU dry run "
              "under the Triton interpreter.", file=sys.stderr)
        return 2
    try:
        import triton  # noqa: F401
    except ImportError:
        print("triton is not installed (pip install triton, or a CUDA build of torch).", file=sys.stderr)
        return 2
    device = torch.device("cpu" if args.cpu_smoke else "cuda")
    dtype = getattr(torch, DTYPES[args.dtype])
    if device.type == "cuda":
        print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}, triton {triton.__version__}")

    failed = False
    if not args.skip_correctness:
        rows = []
        tols = {torch.float32: 1e-3, torch.bfloat16: 3e-2, torch.float16: 5e-3}
        fla_tols = {torch.float32: 1e-2, torch.bfloat16: 5e-2, torch.float16: 1e-2}  # FLA: TF32 dots, bf16 outputs
        if args.cpu_smoke:
            cases = [("mLSTM", torch.float32, dict(B=1, NH=2, S=37, DK=16, DV=32, chunk_size=16)),
                     ("mLSTM", torch.bfloat16, dict(B=1, NH=2, S=37, DK=16, DV=32, chunk_size=16)),
                     ("sLSTM", torch.float32, dict(B=2, S=12, NH=2, DH=16))]
            if fla_available():  # fp32 only: the interpreter mis-computes bf16 tl.dot in FLA's kernels
                cases.insert(2, ("mLSTM-fla", torch.float32,
                                 dict(B=2, NH=2, S=37, DK=16, DV=32, chunk_size=16, kernel="fla")))
        else:
            cases = [("mLSTM", torch.float32, dict(B=2, NH=2, S=1000, DK=args.dhqk, DV=args.dhv, chunk_size=args.chunk_size)),
                     ("mLSTM", dtype, dict(B=2, NH=2, S=1000, DK=args.dhqk, DV=args.dhv, chunk_size=args.chunk_size)),
                     *([("mLSTM-fla", dt, dict(B=2, NH=2, S=1000, DK=args.dhqk, DV=args.dhv,
                                               chunk_size=args.chunk_size, kernel="fla"))
                        for dt in (torch.float32, dtype)] if fla_available() else []),
                     ("sLSTM", torch.float32, dict(B=4, S=200, NH=2, DH=args.slstm_DH)),
                     ("sLSTM", dtype, dict(B=4, S=200, NH=2, DH=args.slstm_DH))]
        for kind, dt, kw in cases:
            fn = mlstm_correctness if kind.startswith("mLSTM") else slstm_correctness
            errs, e = guarded(lambda: fn(device, dt, **kw))
            if errs is None:
                rows.append([kind, str(dt).replace("torch.", ""), "ERROR " + e, "FAIL"])
                failed = True
                continue
            ok = all(v < (fla_tols if kind == "mLSTM-fla" else tols)[dt] for v in errs.values())
            failed |= not ok
            rows.append([kind, str(dt).replace("torch.", ""), " ".join(f"{k}={v:.1e}" for k, v in errs.items()),
                         "PASS" if ok else "FAIL"])
        print_table("correctness vs fp64 torch reference (relative max error per output / gradient)",
                    ["kernel", "dtype", "errors", "status"], rows)

    mlstm_speed(args, device, dtype)
    slstm_speed(args, device, dtype)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
