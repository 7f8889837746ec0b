"""Run a function on N gloo ranks (spawned processes) and collect what each rank returns."""

from __future__ import annotations

import os
import pickle
import socket
import tempfile

import torch.multiprocessing as mp


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(rank, world, port, outdir, fn, args):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world), OMP_NUM_THREADS="1")
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        result = fn(*args)
    finally:
        dist.barrier()
        dist.destroy_process_group()
    with open(os.path.join(outdir, f"rank{rank}.pkl"), "wb") as f:
        pickle.dump(result, f)


def run_distributed(fn, world: int, *args):
    """fn(*args) on ``world`` ranks with the default process group initialised; returns [result per rank]."""
    with tempfile.TemporaryDirectory() as outdir:
        mp.spawn(_entry, args=(world, free_port(), outdir, fn, args), nprocs=world, join=True)
        results = []
        for r in range(world):
            with open(os.path.join(outdir, f"rank{r}.pkl"), "rb") as f:
                results.append(pickle.load(f))
    return results
