"""Bytes sent per collective per layer under TP and CP, measured by instrumenting the mappings,
printed beside the analytic minimum. Runs 4 gloo ranks on CPU.

    python tools/bench/comm_volume.py [--B 2] [--S 256] [--d 256] [--heads 4]

Two measures per rank (see xlstm_pretrain/parallel/mappings.py): *payload*, the tensors handed to
collectives, and *wire*, the bytes a ring implementation sends. The analytic minimum (one forward,
fp32, per rank; N = B*S_local*d one activation) is computed independently here:
- TP: each row-parallel exit (mLSTM out, FFN/SwiGLU down, the vocab embedding) must sum B*S*d partials:
  a ring all-reduce, 2(t-1)/t N on the wire. Megatron SP replaces it by an all-gather at the entry and a
  reduce-scatter at the exit, (t-1)/t N each: the same total. The paper mLSTM block adds the gate
  partials (2 x B*S*NH, reduce-scatter), the sLSTM layer (no projection) moves its channel slices.
- CP: per mLSTM layer one all-gather of B*NH*(DHQK*DHV + DHQK + 2) floats (payload), per conv a halo of
  B*(K-1)*C floats; per sLSTM layer the layout switch: an all-to-all of its gate inputs (4N) and one of its
  outputs (N), (cp-1)/cp of each on the wire, plus the reset mask (B*S_local bytes, all-gathered), or,
  where the heads do not divide by CP, 4*B*d floats sent to the next rank.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections import defaultdict

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "tests"))

import torch  # noqa: E402

from dist_utils import run_distributed  # noqa: E402


def measure(layouts, B, S, d, heads):
    import torch.distributed as dist

    from xlstm_pretrain.model import ModelConfig, build_model
    from xlstm_pretrain.parallel import ParallelConfig, apply_context_parallel, init_parallel_state, parallelize_model
    from xlstm_pretrain.parallel import shard_sequence

    rows = []
    for family, tp, cp, sp in layouts:
        kw = dict(family=family, vocab_size=512, embedding_dim=d, num_blocks=2, num_heads=heads, chunk_size=64)
        if family == "paper":
            kw["slstm_at"] = [1]
        cfg = ModelConfig(**kw)
        state = init_parallel_state(ParallelConfig(tensor_parallel=tp, context_parallel=cp, sequence_parallel=sp))
        torch.manual_seed(0)
        model = apply_context_parallel(parallelize_model(build_model(cfg), state), state)
        ids = torch.randint(0, 512, (B, S))
        ids = shard_sequence(dict(ids=ids), state)["ids"]
        with state.comm.logging() as log:
            logits = model(ids)
            fwd = list(log)
            logits.float().sum().backward()
        bwd = log[len(fwd):]
        totals = defaultdict(lambda: [0, 0])
        for prefix, log in (("fwd", fwd), ("bwd", bwd)):
            for name, payload, wire in log:
                totals[f"{prefix} {name}"][0] += payload
                totals[f"{prefix} {name}"][1] += wire
        rows.append(((family, tp, cp, sp), {k: tuple(v) for k, v in totals.items()}, analytic(cfg, B, S, tp, cp, sp)))
        dist.barrier()
    return rows


def analytic(cfg, B, S, tp, cp, sp):
    """(payload, wire) minimum bytes per rank for one forward."""
    f = 4
    d, NH, K = cfg.embedding_dim, cfg.num_heads, cfg.conv1d_kernel_size
    S_local = S // cp
    N = B * S_local * d * f  # one activation of this CP shard
    payload = wire = 0
    if tp > 1:
        # every block has one (paper) or two (large) column->row regions; plus the vocab embedding's exit
        # and the LM head's entry
        regions = len(cfg.block_types) * (2 if cfg.family == "large" else 1)
        exits = entries = regions + 1
        for kind in cfg.block_types:
            if cfg.family == "paper" and kind == "mlstm":
                gates = 2 * B * S_local * NH * f
                payload += gates
                wire += gates * (tp - 1) / tp
            elif kind == "slstm":  # channel slices in (non-SP: a free slice) and out (all-gather / all-to-all)
                if sp:
                    payload += 2 * N // tp
                    wire += 2 * N // tp * (tp - 1) / tp
                else:
                    payload += N // tp
                    wire += (tp - 1) * N // tp
        if sp:
            payload += exits * N + entries * N // tp
            wire += (exits + entries) * N * (tp - 1) / tp
        else:
            payload += exits * N
            wire += exits * 2 * (tp - 1) / tp * N
    if cp > 1:
        for kind in cfg.block_types:
            if kind == "mlstm":
                DQK, DV = cfg.qk_head_dim, cfg.v_head_dim
                p = B * (NH // tp) * (DQK * DV + DQK + 2) * f
                if cfg.family == "paper":
                    p += B * (K - 1) * (cfg.mlstm_inner_dim // tp) * f
                payload += p
                wire += p * (cp - 1)
            else:
                halo = B * (K - 1) * (d // tp) * f
                payload += halo
                wire += halo * (cp - 1)
                if (cfg.slstm_num_heads // tp) % cp == 0:
                    # layout switch: the gate inputs (4 per channel) go to the head owners and the outputs
                    # come back, each rank keeping 1/cp of either (with packed documents also the reset
                    # mask, B*S_local bytes; this benchmark's batches have none)
                    switch = 5 * B * S_local * (d // tp) * f
                    payload += switch
                    wire += switch * (cp - 1) / cp
                else:  # relay: one state (y, c, n, m) to the next rank
                    state = 4 * B * (d // tp) * f
                    payload += state
                    wire += state
    return payload, int(wire)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--B", type=int, default=2)
    ap.add_argument("--S", type=int, default=256)
    ap.add_argument("--d", type=int, default=256)
    ap.add_argument("--heads", type=int, default=4)
    args = ap.parse_args()
    layouts = [(fam, tp, cp, sp) for fam in ("paper", "large")
               for tp, cp, sp in [(2, 1, False), (2, 1, True), (4, 1, False), (4, 1, True), (1, 2, False), (1, 4, False),
                                  (2, 2, False)]]
    rows = run_distributed(measure, 4, layouts, args.B, args.S, args.d, args.heads)[0]
    print(f"bytes per rank, B={args.B} S={args.S} d={args.d} heads={args.heads}, 2 blocks (paper: mLSTM + sLSTM), "
          f"fp32; payload / ring wire bytes")
    for (fam, tp, cp, sp), measured, (min_payload, min_wire) in rows:
        fwd = [sum(v[j] for k, v in measured.items() if k.startswith("fwd")) for j in (0, 1)]
        bwd = [sum(v[j] for k, v in measured.items() if k.startswith("bwd")) for j in (0, 1)]
        print(f"\n{fam:5s} tp={tp} cp={cp} sp={'on ' if sp else 'off'}  forward {fwd[0] / 1e6:7.3f} / {fwd[1] / 1e6:7.3f} MB"
              f"  analytic minimum {min_payload / 1e6:7.3f} / {min_wire / 1e6:7.3f} MB"
              f"  (measured/minimum wire {fwd[1] / min_wire:.3f})   backward {bwd[0] / 1e6:7.3f} / {bwd[1] / 1e6:7.3f} MB")
        for name, (payload, wire) in sorted(measured.items()):
            print(f"    {name:40s} {payload / 1e6:9.4f} / {wire / 1e6:9.4f} MB")

if __name__ == "__main__":
    main()
