"""Collectives as autograd functions, each paired with its adjoint (Megatron's mappings, device-agnostic).

Tensor-parallel region (TP group, activations split along the last dim = features/heads):
    copy_to_tp                 fwd identity            bwd all-reduce
    reduce_from_tp             fwd all-reduce          bwd identity
    split_to_tp                fwd keep local slice    bwd all-gather          (input replicated)
    gather_from_tp             fwd all-gather          bwd keep local slice    (output used replicated)
    reduce_scatter_to_tp       fwd reduce-scatter      bwd all-gather          (partial sums, each rank keeps its slice)
Megatron sequence parallelism (activations split along dim 1 = sequence between TP regions):
    scatter_to_sequence        fwd keep local chunk    bwd all-gather
    gather_from_sequence       fwd all-gather          bwd reduce-scatter
    reduce_scatter_to_sequence fwd reduce-scatter      bwd all-gather
    sequence_to_tp             fwd all-to-all (B, S/t, D) -> (B, S, D/t)    bwd the inverse all-to-all
    tp_to_sequence             fwd all-to-all (B, S, D/t) -> (B, S/t, D)    bwd the inverse all-to-all

Context parallelism (CP group, sequence split contiguously across ranks):
    all_gather_stack           fwd all-gather into a new leading dim    bwd reduce-scatter
    sequence_to_heads          fwd all-to-all sequence -> head shards   bwd the inverse all-to-all
    heads_to_sequence          fwd all-to-all head -> sequence shards   bwd the inverse all-to-all
    recv_from_previous         fwd recv state from rank-1               bwd send its gradient to rank-1
    send_to_next               fwd send state to rank+1                 bwd recv its gradient from rank+1

Every function takes the process group explicitly and is the identity when the group has one rank. It
also takes the caller's ``CommContext`` (``ParallelState.comm``; None: no bookkeeping), which holds what
outlives one call - there is no module-level state here:
- ``log``: a list of ``CommRecord(name, payload bytes, wire bytes)`` per call while ``comm.logging()``
  is active, for tests and the communication benchmark: payload = the tensor this rank hands to the
  collective; wire = bytes this rank sends under the usual ring algorithms (all-reduce 2(w-1)/w N,
  reduce-scatter and all-to-all (w-1)/w N of the full input, all-gather (w-1) x its own part,
  point-to-point N), as in nccl-tests' bus bandwidth. A backward logs as ``<forward name>.bwd``.
- ``replay``: under activation checkpointing (``context_fn=comm.checkpoint_context``) the context-parallel
  forwards replay their recorded results when autograd recomputes a block (``CommReplay``); their
  backwards, and every TP collective, run as usual.
"""

from __future__ import annotations

import contextlib
from typing import Callable, NamedTuple

import torch
import torch.distributed as dist

_WIRE_FACTOR = {  # bytes on the wire per payload byte, for a ring over w ranks
    "all_reduce": lambda w: 2 * (w - 1) / w,
    "reduce_scatter": lambda w: (w - 1) / w,
    "all_to_all": lambda w: (w - 1) / w,
    "all_gather": lambda w: w - 1,
    "p2p": lambda w: 1,
}


class CommRecord(NamedTuple):
    name: str
    payload: int  # bytes this rank hands to the collective
    wire: int  # bytes this rank sends under a ring algorithm


# ---- activation checkpointing: a recomputed block replays its context-parallel messages -----------


class CommReplay:
    """The results of the context-parallel forward messages of one checkpointed block, in order: recorded
    on its first forward, handed back when autograd recomputes the block in backward.

    Re-sending them would deadlock: CP ranks do not recompute in lockstep (the ring runs backwards in
    backward), their graphs differ (rank 0 receives nothing), and a non-reentrant recompute stops as soon as
    it has rebuilt what backward needs, so a rank may never reach the send its neighbour waits for. The
    recorded tensors are what the first forward produced anyway, so recomputed activations are identical.
    TP collectives are symmetric within a CP rank and are simply rerun (as in Megatron)."""

    def __init__(self, comm: CommContext):
        self.comm = comm
        self.results: list[tuple[str, torch.Tensor | None]] = []
        self.position: int | None = None  # None while recording

    @contextlib.contextmanager
    def _active(self, position):
        # on the context, not in a thread-local: the recompute may run on the autograd engine's thread
        outer, self.comm.replay = self.comm.replay, self
        self.position = position
        try:
            yield
        finally:
            self.comm.replay = outer

    def recording(self):
        return self._active(None)

    def replaying(self):
        return self._active(0)


class CommContext:
    """What the collectives of one model remember between calls: the traffic log (on while ``logging()``
    is active) and the activation-checkpoint replay of the block being recorded or recomputed. Held by
    the caller (``ParallelState.comm``) and passed to every mapping."""

    def __init__(self):
        self.log: list[CommRecord] | None = None
        self.replay: CommReplay | None = None

    def record(self, name: str, t: torch.Tensor, group, kind: str) -> None:
        if self.log is not None:
            payload = t.numel() * t.element_size()
            self.log.append(CommRecord(name, payload, int(payload * _WIRE_FACTOR[kind](_world(group)))))

    @contextlib.contextmanager
    def logging(self):
        """``with comm.logging() as log:`` -- every collective issued meanwhile appends a CommRecord."""
        outer, self.log = self.log, []
        try:
            yield self.log
        finally:
            self.log = outer

    def checkpoint_context(self):
        """``context_fn`` for ``torch.utils.checkpoint.checkpoint(..., use_reentrant=False)``: record the
        block's CP messages in its forward, replay them in its recompute."""
        replay = CommReplay(self)
        return replay.recording(), replay.replaying()

    def forward_message(self, name: str, run: Callable[[], torch.Tensor | None]):
        """``run()`` sends/receives a forward message (returning its tensor, or None); replayed on recompute."""
        replay = self.replay
        if replay is None:
            return run()
        if replay.position is None:
            out = run()
            replay.results.append((name, None if out is None else out.detach()))
            return out
        recorded_name, out = replay.results[replay.position]
        if recorded_name != name:
            raise RuntimeError(f"activation checkpointing: the recomputed block sent {name!r} where its first "
                               f"forward sent {recorded_name!r} (message {replay.position}); its forward must be "
                               "deterministic")
        replay.position += 1
        return None if out is None else out.detach()  # a fresh tensor object: autograd attaches a node to it


def checkpoint_context_fn(model):
    """The ``context_fn`` for checkpointing the blocks of ``model``: its CP messages are recorded in the
    forward and replayed in the recompute (a model without a parallel state sends none)."""
    state = getattr(model, "parallel_state", None)
    return (state.comm if state is not None else CommContext()).checkpoint_context


def forward_message(comm: CommContext | None, name: str, run):
    """A CP forward message through ``comm`` (replayed under activation checkpointing), or just ``run()``."""
    return run() if comm is None else comm.forward_message(name, run)


def _log(comm: CommContext | None, name: str, t: torch.Tensor, group, kind: str) -> None:
    if comm is not None:
        comm.record(name, t, group, kind)


def _world(group) -> int:
    return dist.get_world_size(group) if group is not None else 1


def _rank(group) -> int:
    return dist.get_rank(group) if group is not None else 0


# ---- raw collectives (no autograd) --------------------------------------------------------------


def _all_reduce(x, group, name="all_reduce", op=dist.ReduceOp.SUM, comm=None):
    if _world(group) == 1:
        return x
    x = x.contiguous().clone()
    _log(comm, name, x, group, "all_reduce")
    dist.all_reduce(x, op=op, group=group)
    return x


def _all_gather(x, group, dim, name="all_gather", comm=None):
    w = _world(group)
    if w == 1:
        return x
    x = x.contiguous()
    _log(comm, name, x, group, "all_gather")
    parts = [torch.empty_like(x) for _ in range(w)]
    dist.all_gather(parts, x, group=group)
    return torch.cat(parts, dim=dim)


def _split(x, group, dim):
    w = _world(group)
    if w == 1:
        return x
    if x.shape[dim] % w:
        raise ValueError(f"cannot split dim {dim} of size {x.shape[dim]} across {w} ranks")
    return x.chunk(w, dim=dim)[_rank(group)].contiguous()


def _reduce_scatter(x, group, dim, name="reduce_scatter", comm=None):
    w = _world(group)
    if w == 1:
        return x
    if x.shape[dim] % w:
        raise ValueError(f"cannot reduce-scatter dim {dim} of size {x.shape[dim]} across {w} ranks")
    parts = [p.contiguous() for p in x.chunk(w, dim=dim)]
    _log(comm, name, x, group, "reduce_scatter")
    out = torch.empty_like(parts[0])
    dist.reduce_scatter(out, parts, group=group)
    return out


def _all_to_all(x, group, split_dim, cat_dim, name="all_to_all", comm=None):
    """Split ``split_dim`` into world chunks, send chunk j to rank j, concatenate received along ``cat_dim``."""
    w = _world(group)
    if w == 1:
        return x
    send = [p.contiguous() for p in x.chunk(w, dim=split_dim)]
    recv = [torch.empty_like(send[0]) for _ in range(w)]
    _log(comm, name, x, group, "all_to_all")
    dist.all_to_all(recv, send, group=group)
    return torch.cat(recv, dim=cat_dim)


# ---- autograd pairs -----------------------------------------------------------------------------
# One autograd function serves every mapping: a mapping is a forward op and its adjoint, each
# ``op(x, group, comm, name) -> tensor``. The forward logs as the mapping's name, the backward as
# "<name>.bwd"; ``replayed`` mappings are CP forward messages (recorded and replayed under activation
# checkpointing); TP ones are symmetric within a CP rank and simply rerun.

Op = Callable[..., torch.Tensor]


def _identity(x, group, comm, name):
    return x


def _reduce(x, group, comm, name):
    return _all_reduce(x, group, name, comm=comm)


def _gather(dim: int) -> Op:
    return lambda x, group, comm, name: _all_gather(x, group, dim, name, comm)


def _keep_local(dim: int) -> Op:
    return lambda x, group, comm, name: _split(x, group, dim)


def _scatter_sum(dim: int) -> Op:
    return lambda x, group, comm, name: _reduce_scatter(x, group, dim, name, comm)


def _exchange(split_dim: int, cat_dim: int) -> Op:
    return lambda x, group, comm, name: _all_to_all(x, group, split_dim, cat_dim, name, comm)


class _Mapping(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group, comm, name, fwd, bwd, replayed):
        ctx.group, ctx.comm, ctx.name, ctx.bwd = group, comm, name, bwd
        if replayed:
            return forward_message(comm, name, lambda: fwd(x, group, comm, name))
        return fwd(x, group, comm, name)

    @staticmethod
    def backward(ctx, g):
        return ctx.bwd(g, ctx.group, ctx.comm, f"{ctx.name}.bwd"), None, None, None, None, None, None


def _mapping(name: str, fwd: Op, bwd: Op, replayed: bool = False, doc: str = ""):
    def mapping(x, group, comm: CommContext | None = None):
        return _Mapping.apply(x, group, comm, name, fwd, bwd, replayed) if _world(group) > 1 else x

    mapping.__name__ = mapping.__qualname__ = name
    mapping.__doc__ = doc
    return mapping


copy_to_tp = _mapping("copy_to_tp", _identity, _reduce)
reduce_from_tp = _mapping("reduce_from_tp", _reduce, _identity)
split_to_tp = _mapping("split_to_tp", _keep_local(-1), _gather(-1))
gather_from_tp = _mapping("gather_from_tp", _gather(-1), _keep_local(-1))
reduce_scatter_to_tp = _mapping("reduce_scatter_to_tp", _scatter_sum(-1), _gather(-1))
scatter_to_sequence = _mapping("scatter_to_sequence", _keep_local(1), _gather(1))
gather_from_sequence = _mapping("gather_from_sequence", _gather(1), _scatter_sum(1))
reduce_scatter_to_sequence = _mapping("reduce_scatter_to_sequence", _scatter_sum(1), _gather(1))
sequence_to_tp = _mapping("sequence_to_tp", _exchange(-1, 1), _exchange(1, -1),
                          doc="Sequence shards (B, S/t, C) -> channel shards (B, S, C/t) (SP entry of the sLSTM layer).")
tp_to_sequence = _mapping("tp_to_sequence", _exchange(1, -1), _exchange(-1, 1))


def all_reduce_grad_hook(group, comm: CommContext | None = None):
    """A tensor hook that sums a replicated parameter's partial gradients over ``group``
    (sequence parallelism: norm weights see only this rank's part of the sequence)."""

    def hook(grad):
        return _all_reduce(grad, group, "sequence_parallel_param_grad", comm=comm)

    return hook


# ---- context parallelism: gather per-rank summaries, pass state along the ring ------------------


sequence_to_heads = _mapping("sequence_to_heads", _exchange(-2, 1), _exchange(1, -2), replayed=True,
                             doc="CP sequence shards (B, S/cp, ..., NH, DH) -> head shards (B, S, ..., NH/cp, DH).")
heads_to_sequence = _mapping("heads_to_sequence", _exchange(1, -2), _exchange(-2, 1), replayed=True,
                             doc="CP head shards (B, S, NH/cp, DH) -> sequence shards (B, S/cp, NH, DH).")


def _stack(x, group, comm, name):  # every rank's tensor, stacked along a new leading dim
    return _all_gather(x[None], group, 0, name, comm)


def _sum_own_slot(g, group, comm, name):  # each rank: the sum over ranks of the gradients for its slot
    return _reduce_scatter(g, group, 0, name, comm)[0]


# the adjoint of the stacking all-gather is a reduce-scatter: later ranks' use of a summary flows back
_all_gather_stack = _mapping("all_gather_stack", _stack, _sum_own_slot, replayed=True)


def all_gather_stack(x, group, comm: CommContext | None = None):
    return _all_gather_stack(x, group, comm) if _world(group) > 1 else x[None]


def gather_sequence_mask(mask, group, comm: CommContext | None = None):
    """A (B, S/cp) bool mask of every CP rank, concatenated along the sequence (no gradient)."""
    def gather():
        return _all_gather(mask.to(torch.uint8), group, 1, "gather_sequence_mask", comm).to(torch.bool)

    return forward_message(comm, "gather_sequence_mask", gather) if _world(group) > 1 else mask


def _global_rank(group, group_rank: int) -> int:
    return dist.get_global_rank(group, group_rank)


class _RecvFromPrevious(torch.autograd.Function):
    """fwd: receive a state from the previous rank of ``group``; bwd: send its gradient back there.
    ``anchor`` is an empty tensor requiring grad, so that autograd calls this backward."""

    @staticmethod
    def forward(ctx, anchor, shape, dtype, group, comm):
        ctx.group, ctx.comm = group, comm

        def recv():
            buf = torch.empty(shape, dtype=dtype, device=anchor.device)
            dist.recv(buf, src=_global_rank(group, _rank(group) - 1), group=group)
            return buf

        return forward_message(comm, "recv_state", recv)

    @staticmethod
    def backward(ctx, g):
        g = g.contiguous()
        _log(ctx.comm, "recv_state.bwd", g, ctx.group, "p2p")
        dist.send(g, dst=_global_rank(ctx.group, _rank(ctx.group) - 1), group=ctx.group)
        return None, None, None, None, None


class _SendToNext(torch.autograd.Function):
    """fwd: send a state to the next rank of ``group`` and return a zero to add to this rank's output
    (so autograd visits this node); bwd: receive the state's gradient from the next rank."""

    @staticmethod
    def forward(ctx, x, out_dtype, group, comm):
        ctx.group, ctx.shape, ctx.dtype, ctx.device = group, x.shape, x.dtype, x.device
        x = x.detach().contiguous()

        def send():
            _log(comm, "send_state", x, group, "p2p")
            dist.send(x, dst=_global_rank(group, _rank(group) + 1), group=group)

        forward_message(comm, "send_state", send)
        return torch.zeros((), dtype=out_dtype, device=x.device)

    @staticmethod
    def backward(ctx, _):
        g = torch.empty(ctx.shape, dtype=ctx.dtype, device=ctx.device)
        dist.recv(g, src=_global_rank(ctx.group, _rank(ctx.group) + 1), group=ctx.group)
        return g, None, None, None


def recv_from_previous(shape, dtype, group, device=None, comm: CommContext | None = None):
    anchor = torch.empty(0, device=device, requires_grad=True)
    return _RecvFromPrevious.apply(anchor, tuple(shape), dtype, group, comm)


def send_to_next(x, out_dtype, group, comm: CommContext | None = None):
    return _SendToNext.apply(x, out_dtype, group, comm)


class _DependOn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, other):
        ctx.other_shape, ctx.other_dtype = other.shape, other.dtype
        return x.view_as(x)

    @staticmethod
    def backward(ctx, g):
        return g, torch.zeros(ctx.other_shape, dtype=ctx.other_dtype, device=g.device)


def depend_on(x, other):
    """``x`` unchanged, but ``other`` joins its autograd graph (with a zero gradient): a collective whose
    output one rank does not use must still run its backward on that rank, or the others wait forever."""
    return _DependOn.apply(x, other) if other.requires_grad else x
