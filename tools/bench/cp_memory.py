"""Activation memory per rank for a long sequence split over context-parallel ranks (CPU, small dims).

    python tools/bench/cp_memory.py [--S 16384] [--d 64]

4 gloo ranks; CP=1, 2, 4 (the remaining ranks are data-parallel replicas). Memory = bytes autograd saves
for backward in one forward of the whole model (tools/bench/activation_memory.py). It should fall close
to 1/CP: the recurrent state crossing shards is tiny next to the activations.
"""

from __future__ import annotations

import argparse
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.join(HERE, "..", "..", "tests")]

import torch  # noqa: E402

from activation_memory import saved_activation_bytes  # noqa: E402
from dist_utils import run_distributed  # noqa: E402


def measure(S, d):
    from xlstm_pretrain.model import ModelConfig, build_model
    from xlstm_pretrain.parallel import ParallelConfig, apply_context_parallel, init_parallel_state, shard_sequence

    rows = []
    for family in ("paper", "large"):
        kw = dict(family=family, vocab_size=256, embedding_dim=d, num_blocks=2, num_heads=4, chunk_size=64)
        if family == "paper":
            kw["slstm_at"] = [1]
        for cp in (1, 2, 4):
            state = init_parallel_state(ParallelConfig(context_parallel=cp))
            torch.manual_seed(0)
            model = apply_context_parallel(build_model(ModelConfig(**kw)), state)
            ids = shard_sequence(dict(ids=torch.randint(0, 256, (1, S))), state)["ids"]
            rows.append((family, cp, saved_activation_bytes(model, ids)))
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--S", type=int, default=16384)
    ap.add_argument("--d", type=int, default=64)
    args = ap.parse_args()
    rows = run_distributed(measure, 4, args.S, args.d)[0]
    print(f"activation memory per rank (MiB), S={args.S}, d={args.d}, 2 blocks, fp32, chunk 64")
    print(f"{'family':8s} {'CP':>3s} {'MiB/rank':>10s} {'vs CP=1':>8s} {'ideal':>6s}")
    base = {}
    for family, cp, nbytes in rows:
        base.setdefault(family, nbytes)
        print(f"{family:8s} {cp:3d} {nbytes / 2**20:10.1f} {nbytes / base[family]:8.3f} {1 / cp:6.3f}")


if __name__ == "__main__":
    main()
