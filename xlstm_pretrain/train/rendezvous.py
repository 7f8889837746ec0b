"""The process-group store of one torchrun restart round, agreed on by every rank of every node.

torchrun gives the workers of all restart rounds one and the same store (the agent's, on the first node),
so a new round finds the previous round's process-group keys (peer addresses) there; a rank that reads
them before they are overwritten connects to a dead peer (pytorch/pytorch#167288). Keys private to each
round avoid that, but nothing torchrun passes to the workers names the round the same way on every node:
``TORCHELASTIC_RESTART_COUNT`` counts the restarts of *this node's* agent, and an agent whose workers
were healthy restarts them through the membership-change path, which it does not count (two nodes after
one dead rank: counts 0 and 1, each side waiting for the other under its own prefix until the timeout).

So the ranks agree on a round name through the store itself, in a way that never trusts a stale key:

1. rank 0 picks a fresh random round name and writes it under ``LEADER_KEY``;
2. every other rank picks a fresh random nonce, reads ``LEADER_KEY`` and offers its nonce under that
   round's ``join/<rank>`` key, then waits for rank 0 to copy it into the round's ``admit/<rank>`` key;
3. rank 0 waits for all ``join`` keys of *its* round (a fresh name: none can be stale) and admits them.

A rank that read a previous round's name (rank 0 of this round not there yet) gets no admission with its
own nonce (that round's rank 0 is dead; an old ``admit`` key holds another process's nonce), re-reads
``LEADER_KEY`` and offers again. torchrun stops every worker of a round before the next round starts, so the
only live writer of ``LEADER_KEY`` is this round's rank 0. Both sides wait a bounded time and then raise
``JoinTimeout`` naming the rank(s) that did not come.
"""

from __future__ import annotations

import datetime
import time
import uuid

import torch.distributed as dist

LEADER_KEY = "xlstm_pretrain/round"


class JoinTimeout(RuntimeError):
    """A rank of this restart round did not show up in time."""


def join_round(store: dist.Store, rank: int, world: int, timeout_s: float, local_world: int = 1) -> str:
    """The name of this restart round, the same on all ``world`` ranks (use it as a key prefix)."""
    deadline = time.monotonic() + timeout_s
    if rank == 0:
        return _open_round(store, world, deadline, timeout_s, local_world)
    return _enter_round(store, rank, deadline, timeout_s)


def _join_key(name: str, rank: int) -> str:
    return f"{LEADER_KEY}/{name}/join/{rank}"


def _admit_key(name: str, rank: int) -> str:
    return f"{LEADER_KEY}/{name}/admit/{rank}"


def _open_round(store: dist.Store, world: int, deadline: float, timeout_s: float, local_world: int) -> str:
    name = uuid.uuid4().hex
    store.set(LEADER_KEY, name)
    others = list(range(1, world))
    if not others:
        return name
    joins = [_join_key(name, r) for r in others]
    missing = _missing(store, dict(zip(others, joins)), deadline)
    if missing:
        nodes = sorted({r // local_world for r in missing})
        raise JoinTimeout(
            f"rank 0: rank(s) {missing} of {world} did not join the process group within {timeout_s:g} s "
            f"(XLSTM_DIST_JOIN_TIMEOUT_S); their node(s) {nodes} (torchrun GROUP_RANK, {local_world} workers "
            f"a node) may be down, or their workers stuck before init: see those nodes' logs")
    store.multi_set([_admit_key(name, r) for r in others], store.multi_get(joins))
    return name


def _missing(store: dist.Store, keys: dict[int, str], deadline: float) -> list[int]:
    """The ranks whose key is still absent at ``deadline`` (waits server-side, no polling)."""
    try:
        store.wait(list(keys.values()), datetime.timedelta(seconds=max(deadline - time.monotonic(), 0.001)))
        return []
    except RuntimeError:  # DistStoreError: timed out
        return [r for r, key in keys.items() if not store.check([key])]


def _enter_round(store: dist.Store, rank: int, deadline: float, timeout_s: float) -> str:
    nonce = uuid.uuid4().hex  # this process's own: an admission carrying it cannot be left from an old round
    offered_to, pause = None, 0.02
    while time.monotonic() < deadline:
        if store.check([LEADER_KEY]):
            name = store.get(LEADER_KEY).decode()
            if name != offered_to:
                store.set(_join_key(name, rank), nonce)
                offered_to = name
            admit = _admit_key(name, rank)
            if store.check([admit]) and store.get(admit).decode() == nonce:
                return name
        time.sleep(pause)
        pause = min(pause * 2, 0.5)  # thousands of ranks poll the one store: back off
    seen = f"it offered to join round {offered_to}" if offered_to else "no round was ever opened"
    raise JoinTimeout(
        f"rank {rank}: rank 0 did not admit this rank to the process group within {timeout_s:g} s "
        f"(XLSTM_DIST_JOIN_TIMEOUT_S; {seen}): the node of rank 0 may be down or its worker stuck before init")
