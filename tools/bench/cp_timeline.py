"""Per-rank timeline of one context-parallel training step on CPU: when each rank computes and when it
communicates (or waits inside a collective), for the sLSTM layout switch and for the state relay.

    OMP_NUM_THREADS=1 python tools/bench/cp_timeline.py [--cp 4] [--S 1024] [--d 128] [--out cp_timeline.png]

A paper model of one mLSTM block and one sLSTM block runs forward and backward under CP (gloo ranks, one
thread each). Every ``torch.distributed`` call the parallel code makes is timed on one monotonic clock
shared by the ranks (same machine); the time between calls is compute. Two layouts of the sLSTM are drawn:
the head all-to-all (every rank runs the whole sequence for its NH/CP heads, at the same time as the
others) and the state relay (what runs where heads do not divide by CP, forced here on the same model: rank r
waits for rank r-1's final state, so the sLSTM layer runs one rank after the other, a staircase). The figure has one row per
rank and layout; the printed table gives each rank's compute and communication/wait time. With fewer
cores than ranks the ranks also wait for the scheduler: read the staircase, not the absolute times.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "tests"))

import torch  # noqa: E402

from dist_utils import run_distributed  # noqa: E402

COMM_OPS = ("all_gather", "all_reduce", "all_to_all", "send", "recv", "reduce_scatter", "broadcast")


def _timed(events, name, fn):
    def wrapper(*args, **kwargs):
        start = time.monotonic()
        try:
            return fn(*args, **kwargs)
        finally:
            events.append((name, start, time.monotonic()))
    return wrapper


def trace_step(cp, S, d, heads, slstm_heads, chunk, B, relay=False):
    """On each rank: (label, start, end) of every collective of one forward+backward after a warm-up, and the
    (start, backward start, end) of the step, on the shared monotonic clock."""
    import torch.distributed as dist

    from xlstm_pretrain.model import ModelConfig, build_model
    from xlstm_pretrain.parallel import ParallelConfig, apply_context_parallel, init_parallel_state, shard_sequence

    state = init_parallel_state(ParallelConfig(context_parallel=cp))
    torch.manual_seed(0)
    cfg = ModelConfig(family="paper", vocab_size=256, embedding_dim=d, num_blocks=2, num_heads=heads,
                      slstm_num_heads=slstm_heads, slstm_at=[1], chunk_size=chunk)
    model = apply_context_parallel(build_model(cfg), state)
    for module in model.modules():
        if hasattr(module, "relay_only"):  # the sLSTM's CP wrapper: relay the state even where heads divide
            module.relay_only = relay
    ids = torch.randint(0, cfg.vocab_size, (B, S), generator=torch.Generator().manual_seed(1))
    local = shard_sequence(dict(input_ids=ids), state)["input_ids"]

    def step():
        logits = model(local)
        t_bwd = time.monotonic()
        logits.float().square().mean().backward()
        return t_bwd

    step()  # warm-up
    events = []
    originals = {name: getattr(dist, name) for name in COMM_OPS}
    dist.barrier()
    try:
        for name, fn in originals.items():
            setattr(dist, name, _timed(events, name, fn))
        t0 = time.monotonic()
        t_bwd = step()
        t1 = time.monotonic()
    finally:
        for name, fn in originals.items():
            setattr(dist, name, fn)
    return dict(start=t0, backward=t_bwd, end=t1, events=events)


def summarize(traces):
    rows = []
    for rank, tr in enumerate(traces):
        comm = sum(e - s for _, s, e in tr["events"])
        total = tr["end"] - tr["start"]
        rows.append((rank, total, total - comm, comm, len(tr["events"])))
    return rows


def plot(layouts, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {"all_to_all": "tab:orange", "send": "tab:red", "recv": "tab:red", "all_gather": "tab:green",
              "all_reduce": "tab:purple", "reduce_scatter": "tab:purple", "broadcast": "tab:gray"}
    n_rows = sum(len(tr) for tr in layouts.values())
    fig, ax = plt.subplots(figsize=(11, 0.45 * n_rows + 1.6))
    y, ticks, labels = 0.0, [], []
    for name, traces in layouts.items():
        base = min(tr["start"] for tr in traces)  # each layout from its own step start
        for rank, tr in enumerate(traces):
            ax.broken_barh([((tr["start"] - base) * 1e3, (tr["end"] - tr["start"]) * 1e3)], (y - 0.35, 0.7),
                           color="tab:blue", alpha=0.35)
            for op, s, e in tr["events"]:
                ax.broken_barh([((s - base) * 1e3, max((e - s) * 1e3, 0.05))], (y - 0.35, 0.7),
                               color=colors.get(op, "black"))
            ax.plot([(tr["backward"] - base) * 1e3] * 2, [y - 0.45, y + 0.45], color="black", lw=1)
            ticks.append(y)
            labels.append(f"{name}: rank {rank}")
            y += 1
        y += 0.5
    ax.set_yticks(ticks)
    ax.set_yticklabels(labels)
    ax.invert_yaxis()
    ax.set_xlabel("ms since the step started (black tick: backward starts)")
    handles = [plt.Rectangle((0, 0), 1, 1, color=c, alpha=a) for c, a in
               (("tab:blue", 0.35), ("tab:orange", 1), ("tab:red", 1), ("tab:green", 1), ("tab:purple", 1))]
    ax.legend(handles, ["compute", "all-to-all (sLSTM layout switch)", "send/recv (state relay)",
                        "all-gather (mLSTM summaries, conv halo)", "all-reduce / reduce-scatter"],
              loc="upper center", bbox_to_anchor=(0.5, -0.18), ncol=3, fontsize=8)
    ax.set_title("one CP training step (mLSTM block + sLSTM block), per rank")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cp", type=int, default=4)
    ap.add_argument("--S", type=int, default=1024)
    ap.add_argument("--d", type=int, default=128)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--chunk", type=int, default=64)
    ap.add_argument("--B", type=int, default=1)
    ap.add_argument("--slstm-heads", type=int, default=None, help="default: --cp (must divide by it)")
    ap.add_argument("--out", default="cp_timeline.png")
    a = ap.parse_args()
    layouts = {  # the same model (heads divisible by CP) in both layouts; the relay is forced
        name: run_distributed(trace_step, a.cp, a.cp, a.S, a.d, a.heads, a.slstm_heads or a.cp, a.chunk, a.B, relay)
        for name, relay in (("all-to-all", False), ("relay", True))
    }
    print(f"CP={a.cp}, B={a.B}, S={a.S}, d={a.d}, {a.heads} mLSTM heads, fp32, forward+backward of one mLSTM and one "
          f"sLSTM block; CPU, one thread per rank")
    print("| layout | rank | step ms | compute ms | communication + wait ms | collectives |")
    print("|---|---|---|---|---|---|")
    for name, traces in layouts.items():
        for rank, total, compute, comm, n in summarize(traces):
            print(f"| {name} | {rank} | {total * 1e3:.0f} | {compute * 1e3:.0f} | {comm * 1e3:.0f} | {n} |")
    plot(layouts, a.out)
    print(f"timeline written to {a.out}")


if __name__ == "__main__":
    main()
