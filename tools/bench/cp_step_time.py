"""Per-rank forward+backward time of one block under context parallelism vs one process, measured side by
side on CPU (gloo ranks, one thread each), and the matmul FLOPs each rank executes.

    OMP_NUM_THREADS=1 python tools/bench/cp_step_time.py [--S 4096] [--d 256] [--cp 2] [--reps 5]
    OMP_NUM_THREADS=1 python tools/bench/cp_step_time.py --slstm-critical-path [--cps 1 2 4 8] [--B 8] [--d 512]

For each block type (paper mLSTM, paper sLSTM): the CP=1 time of the whole sequence, then every CP rank's
time for its shard, and their ratio (ideal 1/cp: the sLSTM layer switches layout, so its ranks run their
heads' recurrences at the same time instead of one after the other; the relay, where heads do not
divide, is shown for comparison). Run it with as many free cores as
ranks: ranks that share a core measure the scheduler, not the layout.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "tests"))

import torch  # noqa: E402

from dist_utils import run_distributed  # noqa: E402


def _model(kind: str, d: int, heads: int, chunk: int):
    from xlstm_pretrain.model import ModelConfig, build_model

    kw = dict(family="paper", vocab_size=256, embedding_dim=d, num_blocks=1, num_heads=heads, chunk_size=chunk,
              slstm_num_heads=heads)
    if kind == "slstm":
        kw["slstm_at"] = [0]
    torch.manual_seed(0)
    return build_model(ModelConfig(**kw))


def time_block(kind, cp, S, d, heads, chunk, reps, B, relay=False):
    import torch.distributed as dist
    from torch.utils.flop_counter import FlopCounterMode

    from xlstm_pretrain.parallel import ParallelConfig, apply_context_parallel, init_parallel_state, shard_sequence
    from xlstm_pretrain.parallel.context_parallel import ContextParallelSLSTMCell

    state = init_parallel_state(ParallelConfig(context_parallel=cp))
    model = apply_context_parallel(_model(kind, d, heads, chunk), state)
    for module in model.modules():
        if isinstance(module, ContextParallelSLSTMCell):
            module.relay_only = relay
    block = model.blocks[0]
    x_full = torch.randn(B, S, d, generator=torch.Generator().manual_seed(1))
    x = shard_sequence(dict(x=x_full), state)["x"].clone().requires_grad_()

    def step():
        y, _ = block(x)
        y.sum().backward()

    step()  # warm-up
    times = []
    for _ in range(reps):
        dist.barrier()
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    with FlopCounterMode(display=False) as counter:
        step()
    return statistics.median(times), counter.get_total_flops()


def slstm_critical_path(B, S, d, heads, cps, reps):
    """The sLSTM layer's critical path under CP, from one-core timings of its pieces (no core sharing, so
    any CP degree can be measured on a 2-core machine): the state relay chains CP pieces of S/CP tokens
    with all heads (rank r starts when rank r-1 has finished, in forward; in reverse order in backward),
    the layout switch runs S tokens with NH/CP heads on every rank at once. Communication is excluded
    (the all-to-all moves B*S*4*d/CP values per rank; tools/bench/comm_volume.py)."""
    import xlstm_kernels

    DH = d // heads

    def cell_time(S_, NH_):
        g = torch.Generator().manual_seed(0)
        wx = torch.randn(B, S_, 4, NH_, DH, generator=g, requires_grad=True)
        R = (0.1 * torch.randn(4, NH_, DH, DH, generator=g)).requires_grad_()
        b = torch.zeros(4, NH_, DH, requires_grad=True)

        def step():
            xlstm_kernels.slstm(wx, R, b, backend="torch").sum().backward()

        step()
        times = []
        for _ in range(reps):
            t = time.perf_counter()
            step()
            times.append(time.perf_counter() - t)
        return statistics.median(times)

    full = cell_time(S, heads)
    print(f"sLSTM cell (torch backend), B={B}, S={S}, {heads} heads of {DH}, fp32, forward+backward, one thread, "
          f"median of {reps}; critical path = the relay's chain of CP pieces vs one rank's switched share")
    print("| CP | relay: CP x t(S/CP, all heads) | switch: t(S, NH/CP heads) | relay / CP=1 | switch / CP=1 |")
    print("|---|---|---|---|---|")
    for cp in cps:
        if heads % cp:
            print(f"| {cp} | - | heads do not divide | - | - |")
            continue
        relay = cp * (full if cp == 1 else cell_time(S // cp, heads))
        switch = full if cp == 1 else cell_time(S, heads // cp)
        print(f"| {cp} | {relay * 1e3:.0f} ms | {switch * 1e3:.0f} ms | {relay / full:.2f} | {switch / full:.2f} |")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--S", type=int, default=4096)
    ap.add_argument("--d", type=int, default=256)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--chunk", type=int, default=64)
    ap.add_argument("--cp", type=int, default=2)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--B", type=int, default=1)
    ap.add_argument("--blocks", nargs="+", default=["mlstm", "slstm", "slstm-relay"],
                    choices=["mlstm", "slstm", "slstm-relay"], help="which rows to measure")
    ap.add_argument("--slstm-critical-path", action="store_true",
                    help="one process: the sLSTM layer's critical path for every CP in --cps (relay vs switch)")
    ap.add_argument("--cps", type=int, nargs="+", default=[1, 2, 4, 8])
    a = ap.parse_args()
    if a.slstm_critical_path:
        return slstm_critical_path(a.B, a.S, a.d, a.heads, a.cps, a.reps)
    print(f"one paper block, B={a.B}, S={a.S}, d={a.d}, {a.heads} heads, fp32, forward+backward, median of {a.reps}; "
          f"CPU, one thread per rank; CP=1 as {a.cp} data-parallel ranks at once (slowest shown)")
    print(f"| block | CP=1 time | CP={a.cp} per-rank times | worst rank / CP=1 (ideal {1 / a.cp:.2f}) "
          f"| CP=1 matmul GFLOP | CP={a.cp} per-rank GFLOP |")
    print("|---|---|---|---|---|---|")
    rows = {"mlstm": ("mlstm", False), "slstm": ("slstm", False), "slstm-relay": ("slstm", True)}
    for kind, relay in (rows[name] for name in a.blocks):
        single = run_distributed(time_block, a.cp, kind, 1, a.S, a.d, a.heads, a.chunk, a.reps, a.B)
        t1, f1 = max(single)
        per_rank = run_distributed(time_block, a.cp, kind, a.cp, a.S, a.d, a.heads, a.chunk, a.reps, a.B, relay)
        worst = max(t for t, _ in per_rank)
        name = {("mlstm", False): "mlstm", ("slstm", False): "slstm (layout switch)",
                ("slstm", True): "slstm (state relay)"}[kind, relay]
        print(f"| {name} | {t1 * 1e3:.0f} ms | {', '.join(f'{t * 1e3:.0f}' for t, _ in per_rank)} ms | "
              f"{worst / t1:.2f} | {f1 / 1e9:.2f} | {', '.join(f'{f / 1e9:.2f}' for _, f in per_rank)} |")


if __name__ == "__main__":
    main()
