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
    recv_from_previous         fwd recv state from rank-1               bwd send its gradient to rank-1
    send_to_next               fwd send state to rank+1                 bwd recv its gradient from rank+1

Every function takes the process group explicitly and is the identity when the group has one rank.
Under activation checkpointing the context-parallel forwards replay their recorded results when autograd
recomputes a block (``CommReplay``); their backwards, and every TP collective, run as usual.
An optional ``comm_log`` list records (name, payload bytes, wire bytes) per call, for tests and the
communication benchmark: payload = the tensor this rank hands to the collective; wire = bytes this rank
sends under the usual ring algorithms (all-reduce 2(w-1)/w N, reduce-scatter and all-to-all (w-1)/w N
of the full input, all-gather (w-1) x its own part, point-to-point N), as in nccl-tests' bus bandwidth.
"""

from __future__ import annotations

import contextlib

import torch
import torch.distributed as dist

comm_log: list[tuple[str, int, int]] | None = None  # set to a list to record traffic

_WIRE_FACTOR = {  # bytes on the wire per payload byte, for a ring over w ranks
    "all_reduce": lambda w: 2 * (w - 1) / w,
    "reduce_scatter": lambda w: (w - 1) / w,
    "all_to_all": lambda w: (w - 1) / w,
    "all_gather": lambda w: w - 1,
    "p2p": lambda w: 1,
}


def _log(name: str, t: torch.Tensor, group, kind: str) -> None:
    if comm_log is not None:
        payload = t.numel() * t.element_size()
        comm_log.append((name, payload, int(payload * _WIRE_FACTOR[kind](_world(group)))))


def _world(group) -> int:
    return dist.get_world_size(group) if group is not None else 1


def _rank(group) -> int:
    return dist.get_rank(group) if group is not None else 0


# ---- raw collectives (no autograd) --------------------------------------------------------------


def _all_reduce(x, group, name="all_reduce", op=dist.ReduceOp.SUM):
    if _world(group) == 1:
        return x
    x = x.contiguous().clone()
    _log(name, x, group, "all_reduce")
    dist.all_reduce(x, op=op, group=group)
    return x


def _all_gather(x, group, dim, name="all_gather"):
    w = _world(group)
    if w == 1:
        return x
    x = x.contiguous()
    _log(name, x, group, "all_gather")
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


def _reduce_scatter(x, group, dim, name="reduce_scatter"):
    w = _world(group)
    if w == 1:
        return x
    if x.shape[dim] % w:
        raise ValueError(f"cannot reduce-scatter dim {dim} of size {x.shape[dim]} across {w} ranks")
    parts = [p.contiguous() for p in x.chunk(w, dim=dim)]
    _log(name, x, group, "reduce_scatter")
    out = torch.empty_like(parts[0])
    dist.reduce_scatter(out, parts, group=group)
    return out


def _all_to_all(x, group, split_dim, cat_dim, name="all_to_all"):
    """Split ``split_dim`` into world chunks, send chunk j to rank j, concatenate received along ``cat_dim``."""
    w = _world(group)
    if w == 1:
        return x
    send = [p.contiguous() for p in x.chunk(w, dim=split_dim)]
    recv = [torch.empty_like(send[0]) for _ in range(w)]
    _log(name, x, group, "all_to_all")
    dist.all_to_all(recv, send, group=group)
    return torch.cat(recv, dim=cat_dim)


# ---- autograd pairs -----------------------------------------------------------------------------


class _CopyToTP(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return x

    @staticmethod
    def backward(ctx, g):
        return _all_reduce(g, ctx.group, "copy_to_tp.bwd"), None


class _ReduceFromTP(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group):
        return _all_reduce(x, group, "reduce_from_tp")

    @staticmethod
    def backward(ctx, g):
        return g, None


class _SplitToTP(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return _split(x, group, -1)

    @staticmethod
    def backward(ctx, g):
        return _all_gather(g, ctx.group, -1, "split_to_tp.bwd"), None


class _GatherFromTP(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return _all_gather(x, group, -1, "gather_from_tp")

    @staticmethod
    def backward(ctx, g):
        return _split(g, ctx.group, -1), None


class _ReduceScatterToTP(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return _reduce_scatter(x, group, -1, "reduce_scatter_to_tp")

    @staticmethod
    def backward(ctx, g):
        return _all_gather(g, ctx.group, -1, "reduce_scatter_to_tp.bwd"), None


class _ScatterToSequence(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return _split(x, group, 1)

    @staticmethod
    def backward(ctx, g):
        return _all_gather(g, ctx.group, 1, "scatter_to_sequence.bwd"), None


class _GatherFromSequence(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return _all_gather(x, group, 1, "gather_from_sequence")

    @staticmethod
    def backward(ctx, g):
        return _reduce_scatter(g, ctx.group, 1, "gather_from_sequence.bwd"), None


class _ReduceScatterToSequence(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return _reduce_scatter(x, group, 1, "reduce_scatter_to_sequence")

    @staticmethod
    def backward(ctx, g):
        return _all_gather(g, ctx.group, 1, "reduce_scatter_to_sequence.bwd"), None


class _AllToAll(torch.autograd.Function):
    """fwd: split ``split_dim`` across the group and concatenate what arrives along ``cat_dim``; bwd: the
    inverse all-to-all. ``replayed``: a context-parallel forward message (recorded and replayed under
    activation checkpointing); TP all-to-alls are symmetric within a CP rank and simply rerun."""

    @staticmethod
    def forward(ctx, x, group, split_dim, cat_dim, name, replayed):
        ctx.group, ctx.split_dim, ctx.cat_dim, ctx.name = group, split_dim, cat_dim, name

        def send():
            return _all_to_all(x, group, split_dim=split_dim, cat_dim=cat_dim, name=name)

        return forward_message(name, send) if replayed else send()

    @staticmethod
    def backward(ctx, g):
        g = _all_to_all(g, ctx.group, split_dim=ctx.cat_dim, cat_dim=ctx.split_dim, name=f"{ctx.name}.bwd")
        return g, None, None, None, None, None


def _all_to_all_pair(x, group, split_dim, cat_dim, name, replayed=False):
    return _AllToAll.apply(x, group, split_dim, cat_dim, name, replayed) if _world(group) > 1 else x


def copy_to_tp(x, group):
    return _CopyToTP.apply(x, group) if _world(group) > 1 else x


def reduce_from_tp(x, group):
    return _ReduceFromTP.apply(x, group) if _world(group) > 1 else x


def split_to_tp(x, group):
    return _SplitToTP.apply(x, group) if _world(group) > 1 else x


def gather_from_tp(x, group):
    return _GatherFromTP.apply(x, group) if _world(group) > 1 else x


def reduce_scatter_to_tp(x, group):
    return _ReduceScatterToTP.apply(x, group) if _world(group) > 1 else x


def scatter_to_sequence(x, group):
    return _ScatterToSequence.apply(x, group) if _world(group) > 1 else x


def gather_from_sequence(x, group):
    return _GatherFromSequence.apply(x, group) if _world(group) > 1 else x


def reduce_scatter_to_sequence(x, group):
    return _ReduceScatterToSequence.apply(x, group) if _world(group) > 1 else x


def sequence_to_tp(x, group):
    """Sequence shards (B, S/t, C) -> channel shards (B, S, C/t) (SP entry of the sLSTM layer)."""
    return _all_to_all_pair(x, group, split_dim=-1, cat_dim=1, name="sequence_to_tp")


def tp_to_sequence(x, group):
    return _all_to_all_pair(x, group, split_dim=1, cat_dim=-1, name="tp_to_sequence")


def all_reduce_grad_hook(group):
    """A tensor hook that sums a replicated parameter's partial gradients over ``group``
    (sequence parallelism: norm weights see only this rank's part of the sequence)."""

    def hook(grad):
        return _all_reduce(grad, group, "sequence_parallel_param_grad")

    return hook


# ---- activation checkpointing: a recomputed block replays its context-parallel messages -----------


class CommReplay:
    """The results of the context-parallel forward messages of one checkpointed block, in order: recorded
    on its first forward, handed back when autograd recomputes the block in backward.

    Re-sending them would deadlock: CP ranks do not recompute in lockstep (the ring runs backwards in
    backward), their graphs differ (rank 0 receives nothing), and a non-reentrant recompute stops as soon as
    it has rebuilt what backward needs, so a rank may never reach the send its neighbour waits for. The
    recorded tensors are what the first forward produced anyway, so recomputed activations are identical.
    TP collectives are symmetric within a CP rank and are simply rerun (as in Megatron)."""

    def __init__(self):
        self.results: list[tuple[str, torch.Tensor | None]] = []
        self.position: int | None = None  # None while recording

    @contextlib.contextmanager
    def _active(self, position):
        global _active_replay
        outer, _active_replay = _active_replay, self
        self.position = position
        try:
            yield
        finally:
            _active_replay = outer

    def recording(self):
        return self._active(None)

    def replaying(self):
        return self._active(0)


_active_replay: CommReplay | None = None  # module-global: backward may run on the autograd engine's thread


def checkpoint_context():
    """``context_fn`` for ``torch.utils.checkpoint.checkpoint(..., use_reentrant=False)``: record the
    block's CP messages in its forward, replay them in its recompute."""
    replay = CommReplay()
    return replay.recording(), replay.replaying()


def checkpoint_context_fn(model):
    """The ``context_fn`` to pass to ``torch.utils.checkpoint.checkpoint(..., use_reentrant=False)`` for the
    blocks of ``model``: records the blocks' CP messages in their forward, replays them in the recompute."""
    return checkpoint_context


def forward_message(name: str, run):
    """``run()`` sends/receives a forward message (returning its tensor, or None); replayed on recompute."""
    replay = _active_replay
    if replay is None:
        return run()
    if replay.position is None:
        out = run()
        replay.results.append((name, None if out is None else out.detach()))
        return out
    recorded_name, out = replay.results[replay.position]
    if recorded_name != name:
        raise RuntimeError(f"activation checkpointing: the recomputed block sent {name!r} where its first forward "
                           f"sent {recorded_name!r} (message {replay.position}); its forward must be deterministic")
    replay.position += 1
    return None if out is None else out.detach()  # a fresh tensor object: autograd attaches a node to it


# ---- context parallelism: gather per-rank summaries, pass state along the ring ------------------


class _AllGatherStack(torch.autograd.Function):
    """fwd: every rank's tensor, stacked along a new leading dim; bwd: each rank gets the sum over
    ranks of the gradients for its slot (a reduce-scatter): later ranks' use of a summary flows back."""

    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return forward_message("all_gather_stack", lambda: _all_gather(x[None], group, 0, "all_gather_stack"))

    @staticmethod
    def backward(ctx, g):
        return _reduce_scatter(g, ctx.group, 0, "all_gather_stack.bwd")[0], None


def all_gather_stack(x, group):
    return _AllGatherStack.apply(x, group) if _world(group) > 1 else x[None]


def sequence_to_heads(x, group):
    """CP sequence shards (B, S/cp, ..., NH, DH) -> head shards (B, S, ..., NH/cp, DH), heads on dim -2."""
    return _all_to_all_pair(x, group, split_dim=-2, cat_dim=1, name="sequence_to_heads", replayed=True)


def heads_to_sequence(x, group):
    """CP head shards (B, S, NH/cp, DH) -> sequence shards (B, S/cp, NH, DH)."""
    return _all_to_all_pair(x, group, split_dim=1, cat_dim=-2, name="heads_to_sequence", replayed=True)


def gather_sequence_mask(mask, group):
    """A (B, S/cp) bool mask of every CP rank, concatenated along the sequence (no gradient)."""
    def gather():
        return _all_gather(mask.to(torch.uint8), group, 1, "gather_sequence_mask").to(torch.bool)

    return forward_message("gather_sequence_mask", gather) if _world(group) > 1 else mask


def _global_rank(group, group_rank: int) -> int:
    return dist.get_global_rank(group, group_rank)


class _RecvFromPrevious(torch.autograd.Function):
    """fwd: receive a state from the previous rank of ``group``; bwd: send its gradient back there.
    ``anchor`` is an empty tensor requiring grad, so that autograd calls this backward."""

    @staticmethod
    def forward(ctx, anchor, shape, dtype, group):
        ctx.group = group

        def recv():
            buf = torch.empty(shape, dtype=dtype, device=anchor.device)
            dist.recv(buf, src=_global_rank(group, _rank(group) - 1), group=group)
            return buf

        return forward_message("recv_state", recv)

    @staticmethod
    def backward(ctx, g):
        g = g.contiguous()
        _log("recv_state.bwd", g, ctx.group, "p2p")
        dist.send(g, dst=_global_rank(ctx.group, _rank(ctx.group) - 1), group=ctx.group)
        return None, None, None, None


class _SendToNext(torch.autograd.Function):
    """fwd: send a state to the next rank of ``group`` and return a zero to add to this rank's output
    (so autograd visits this node); bwd: receive the state's gradient from the next rank."""

    @staticmethod
    def forward(ctx, x, out_dtype, group):
        ctx.group, ctx.shape, ctx.dtype, ctx.device = group, x.shape, x.dtype, x.device
        x = x.detach().contiguous()

        def send():
            _log("send_state", x, group, "p2p")
            dist.send(x, dst=_global_rank(group, _rank(group) + 1), group=group)

        forward_message("send_state", send)
        return torch.zeros((), dtype=out_dtype, device=x.device)

    @staticmethod
    def backward(ctx, _):
        g = torch.empty(ctx.shape, dtype=ctx.dtype, device=ctx.device)
        dist.recv(g, src=_global_rank(ctx.group, _rank(ctx.group) + 1), group=ctx.group)
        return g, None, None


def recv_from_previous(shape, dtype, group, device=None):
    anchor = torch.empty(0, device=device, requires_grad=True)
    return _RecvFromPrevious.apply(anchor, tuple(shape), dtype, group)


def send_to_next(x, out_dtype, group):
    return _SendToNext.apply(x, out_dtype, group)


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
