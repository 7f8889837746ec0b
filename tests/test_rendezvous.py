"""The per-round process-group store under torchrun (xlstm_pretrain/train/rendezvous.py, setup._round_store).

The store of torchrun's agent outlives the restart rounds and ``TORCHELASTIC_RESTART_COUNT`` differs between
nodes after a restart, so the ranks must agree on a round through the store without trusting stale keys.
"""

from __future__ import annotations

import datetime
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
import torch.distributed as dist

from train_utils import REPO

from xlstm_pretrain.train.rendezvous import LEADER_KEY, JoinTimeout, join_round


@pytest.fixture
def server():
    """A TCPStore server standing in for torchrun's agent store (it outlives the rounds)."""
    store = dist.TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False)
    yield store


def client(server) -> dist.TCPStore:
    return dist.TCPStore("127.0.0.1", server.port, is_master=False, timeout=datetime.timedelta(seconds=20))


def run_ranks(server, world: int, ranks=None, timeout_s: float = 20, start_delay: dict | None = None) -> dict:
    """join_round for ``ranks`` (default all) of a ``world``, one thread each: rank -> name or exception."""
    results = {}

    def one(rank):
        time.sleep((start_delay or {}).get(rank, 0))
        try:
            results[rank] = join_round(client(server), rank, world, timeout_s)
        except Exception as e:  # noqa: BLE001 - the test looks at it
            results[rank] = e

    threads = [threading.Thread(target=one, args=(r,)) for r in (range(world) if ranks is None else ranks)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=timeout_s + 10)
    assert not any(t.is_alive() for t in threads)
    return results


def test_all_ranks_agree_on_one_round_name(server):
    names = run_ranks(server, world=4)
    assert len(set(names.values())) == 1 and isinstance(names[0], str)


def test_next_round_never_takes_the_stale_round(server):
    first = run_ranks(server, world=3)[0]
    # the next round's followers start first and read the previous round's name (its rank 0 is dead)
    names = run_ranks(server, world=3, start_delay={0: 1.0})
    assert server.get(LEADER_KEY).decode() != first
    assert set(names.values()) == {server.get(LEADER_KEY).decode()}


def test_rank_0_names_the_ranks_that_did_not_come(server):
    started = time.monotonic()
    results = run_ranks(server, world=4, ranks=[0, 2], timeout_s=1.5)
    assert time.monotonic() - started < 10
    assert isinstance(results[0], JoinTimeout)
    assert "rank(s) [1, 3] of 4 did not join" in str(results[0])
    assert isinstance(results[2], JoinTimeout) and "rank 2: rank 0 did not admit" in str(results[2])


def test_a_rank_without_rank_0_times_out_naming_rank_0(server):
    results = run_ranks(server, world=2, ranks=[1], timeout_s=1.0)
    assert isinstance(results[1], JoinTimeout)
    assert "rank 0 did not admit" in str(results[1]) and "no round was ever opened" in str(results[1])


WORKER = """
import os, torch, torch.distributed as dist
from xlstm_pretrain.train import setup
rt = setup.init_distributed("cpu")
x = torch.tensor([float(rt.rank + 1)])
dist.all_reduce(x)
print("sum", x.item(), flush=True)
dist.destroy_process_group()
"""


def start_worker(port: int, rank: int, restart_count: int) -> subprocess.Popen:
    env = {**os.environ, "RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "1",
           "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "TORCHELASTIC_USE_AGENT_STORE": "True",
           "TORCHELASTIC_RESTART_COUNT": str(restart_count), "TORCHELASTIC_RUN_ID": "test",
           "XLSTM_DIST_TIMEOUT_MIN": "1", "XLSTM_DIST_JOIN_TIMEOUT_S": "30", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-c", WORKER], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)


def run_workers(port: int, restart_counts: tuple[int, int]) -> list[str]:
    procs = [start_worker(port, rank, count) for rank, count in enumerate(restart_counts)]
    outs = []
    try:
        for p in procs:
            outs.append(p.communicate(timeout=60)[0])
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
    assert [p.returncode for p in procs] == [0, 0], "\n".join(outs)
    return outs


def test_nodes_with_different_restart_counts_form_one_group_over_a_used_store(server):
    """Two rounds over one agent store: the second after a restart that only one node counted."""
    run_workers(server.port, (0, 0))  # leaves its process-group keys in the store
    outs = run_workers(server.port, (0, 1))
    assert all("sum 3.0" in out for out in outs), outs
