"""Context parallelism: each sample's sequence is split contiguously across the CP ranks, every rank
runs its chunkwise kernel on its shard, and the recurrent state crosses shard boundaries.

- mLSTM (linear recurrence, xlstm_pretrain/REFERENCE.md §1): each rank summarises its shard as (log F, C, n, m) - the
  state its shard alone produces from an empty start, and its total log-forget (-inf if a document starts
  in it; ``xlstm_kernels.mlstm_sequence_summary``). The cell is given a function of that summary as its
  initial state: the torch chunkwise computes the summary from its own chunk summaries (no second pass
  over the shard), other backends from one weighted k^T v (not a pass of the cell). One
  all-gather of the summaries (B*NH*(DHQK*DHV + DHQK + 2) floats per rank and layer; a barrier per
  layer) lets every rank prefix-combine the earlier shards into its initial state without waiting for
  their cells; the shard is then run from that state. Backward mirrors it through autograd: the all-gather's
  adjoint (a reduce-scatter) returns to every rank the gradient of its summary from all later ranks.
- sLSTM (non-linear, no associative scan): the layer switches layout - an all-to-all turns sequence
  shards into head shards, every rank runs the full-length recurrence for NH/CP heads (all ranks in
  parallel: the critical path does not grow with CP), and an all-to-all turns the output back. Where the
  heads do not divide by CP the state is relayed rank to rank instead (serial); gradients of each
  received state go back to the previous rank.
- causal conv: each rank receives the last K-1 inputs of the previous rank (a halo).
Document resets that fall on or across shard edges behave exactly as without CP. Under activation
checkpointing a recomputed block replays these forward messages instead of sending them again
(``mappings.CommReplay``, held by ``ParallelState.comm``).

Each CP module wraps the plain one (``plan.apply_context_parallel`` puts the wrappers in place): a cell
wrapper holds the plain cell as its child ``local`` and runs it on this rank's part; the conv wrapper
shares the conv's parameters, so parameter names and state-dict keys are those of the plain model.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from xlstm_pretrain.config_loader import ConfigError
from xlstm_pretrain.model.cells import MLSTMCell, SLSTMCell
from xlstm_pretrain.model.components import CausalConv1d

from .mappings import (all_gather_stack, depend_on, forward_message, gather_sequence_mask, heads_to_sequence,
                       recv_from_previous, send_to_next, sequence_to_heads)
from .state import ParallelState



def combine_mlstm_state(state, summary):
    """State before a segment, then the segment's summary -> state after it (stabilised, associative)."""
    C_a, n_a, m_a = state
    log_F, C_s, n_s, m_s = summary
    m = torch.maximum(log_F + m_a, m_s)
    w_a, w_s = torch.exp(log_F + m_a - m), torch.exp(m_s - m)
    return w_a[..., None] * C_a + w_s[..., None] * C_s, w_a * n_a + w_s * n_s, m


class _ContextParallelCell(nn.Module):
    """Holds the plain cell as the child ``local`` (it runs this rank's part: cell hooks, e.g. the gate
    telemetry's, see exactly what the kernel gets), the CP group and the comm context."""

    def __init__(self, cell: MLSTMCell | SLSTMCell, state: ParallelState):
        super().__init__()
        self.local = cell
        self.group, self.comm = state.cp_group, state.comm


class ContextParallelMLSTMCell(_ContextParallelCell):
    """Wraps an ``MLSTMCell``: the earlier shards' summaries, prefix-combined, are this shard's initial state."""

    def forward(self, q, k, v, i, f, state=None, reset=None, return_state=False):
        group = self.group
        rank, world = dist.get_rank(group), dist.get_world_size(group)
        B, NH, S, DHQK = q.shape
        DHV = v.shape[-1]
        cdt = torch.promote_types(q.dtype, torch.float32)
        if state is None:
            state = (q.new_zeros(B, NH, DHQK, DHV, dtype=cdt), q.new_zeros(B, NH, DHQK, dtype=cdt),
                     q.new_zeros(B, NH, 1, dtype=cdt))
        exchanged = {}

        def unpack(p):
            return p[..., :1], p[..., 2 + DHQK :].view(B, NH, DHQK, DHV), p[..., 2 : 2 + DHQK], p[..., 1:2]

        def initial_state_from(summary):
            """1. this shard's summary (log F, C, n, m), from an empty start: the torch chunkwise takes it
            from its own chunk summaries, other backends from one weighted k^T v (kernels/mlstm/summary.py);
            all-gathered, the earlier shards' summaries prefix-combine into this shard's initial state."""
            log_F, C_s, n_s, m_s = summary
            packed = torch.cat([log_F, m_s, n_s, C_s.flatten(-2)], dim=-1).to(cdt)
            gathered = exchanged["gathered"] = all_gather_stack(packed, group, self.comm)  # (world, B, NH, ...)
            carried = state
            for j in range(rank):
                carried = combine_mlstm_state(carried, unpack(gathered[j]))
            exchanged["carried"] = carried
            return carried

        # 2. the shard runs from that state
        h, _ = self.local(q, k, v, i, f, initial_state_from, reset, False)
        gathered = exchanged["gathered"]
        h = depend_on(h, gathered)  # every rank takes part in the gather's backward (rank 0 uses none of it)
        if not return_state:
            return h, None
        final = exchanged["carried"]  # the state after the whole sequence (identical on every CP rank)
        for j in range(rank, world):
            final = combine_mlstm_state(final, unpack(gathered[j]))
        return h, final


class ContextParallelSLSTMCell(_ContextParallelCell):
    """Wraps an ``SLSTMCell``: layout switch to head shards (or a state relay where heads do not divide)."""

    def __init__(self, cell: SLSTMCell, state: ParallelState, relay_only: bool = False):
        super().__init__(cell, state)
        self.relay_only = relay_only  # True: always relay the state (tools/bench/cp_step_time.py compares both)

    def forward(self, wx, R, b, state=None, reset=None, return_state=False):
        world = dist.get_world_size(self.group)
        NH = wx.shape[3]
        if NH % world == 0 and not self.relay_only:
            return self._forward_head_sharded(wx, R, b, state, reset, return_state)
        return self._forward_relay(wx, R, b, state, reset, return_state)

    def _forward_head_sharded(self, wx, R, b, state, reset, return_state):
        """Switch layout for the non-associative recurrence: one all-to-all turns sequence shards into
        head shards (every rank runs the full sequence for NH/cp heads, all ranks at once), another one
        turns the output back. R and b are sliced to the rank's heads; their gradients, summed over CP
        with the others (as DeepSpeed does over DP x CP), add up to the full ones."""
        group, comm = self.group, self.comm
        rank, world = dist.get_rank(group), dist.get_world_size(group)
        B, _, _, NH, DH = wx.shape
        heads = slice(rank * NH // world, (rank + 1) * NH // world)
        wx_h = sequence_to_heads(wx, group, comm)  # (B, S, 4, NH/cp, DH)
        reset_h = None if reset is None else gather_sequence_mask(reset, group, comm)  # (B, S)
        state_h = None if state is None else tuple(s[:, heads] for s in state)
        y_h, final_h = self.local(wx_h, R[:, heads], b[:, heads], state_h, reset_h, return_state)
        y = heads_to_sequence(y_h, group, comm)  # (B, S/cp, NH, DH)
        if not return_state:
            return y, None
        local = torch.stack(final_h).detach()  # (4, B, NH/cp, DH): the state after the whole sequence

        def gather():
            parts = [torch.empty_like(local) for _ in range(world)]
            dist.all_gather(parts, local.contiguous(), group=group)
            return torch.cat(parts, 2)

        return y, tuple(forward_message(comm, "gather_state", gather).unbind(0))

    def _forward_relay(self, wx, R, b, state, reset, return_state):
        """Heads that do not divide across the CP ranks: the state is passed rank to rank (serial)."""
        group, comm = self.group, self.comm
        rank, world = dist.get_rank(group), dist.get_world_size(group)
        B, S, _, NH, DH = wx.shape
        cdt = torch.promote_types(wx.dtype, torch.float32)
        if rank > 0:  # wait for the previous shard's final state
            state = tuple(recv_from_previous((4, B, NH, DH), cdt, group, wx.device, comm).unbind(0))
        y, final = self.local(wx, R, b, state, reset, True)
        if rank < world - 1:
            y = y + send_to_next(torch.stack(final), y.dtype, group, comm)
        if not return_state:
            return y, None
        final = torch.stack(final).detach()

        def broadcast():
            dist.broadcast(final, src=dist.get_global_rank(group, world - 1), group=group)
            return final

        final = forward_message(comm, "broadcast_state", broadcast)
        return y, tuple(final.unbind(0))


class ContextParallelCausalConv1d(nn.Module):
    """The causal conv on this rank's shard, its history (halo) taken from the previous rank's shard.

    The conv's weights keep their names (``...conv.weight``, as in checkpoints and exports): this module
    shares the conv's parameter and buffer dicts rather than registering the conv as a child (which would
    rename them ``...conv.local.weight``); the conv itself, ``local``, is kept outside the module tree."""

    def __init__(self, conv: CausalConv1d, state: ParallelState):
        super().__init__()
        self._parameters, self._buffers = conv._parameters, conv._buffers  # the same dicts: one set of weights
        object.__setattr__(self, "local", conv)
        self.group, self.comm = state.cp_group, state.comm

    def forward(self, x, state=None, reset=None):
        group = self.group
        rank, world = dist.get_rank(group), dist.get_world_size(group)
        K, S = self.local.kernel_size, x.shape[1]
        if S < K - 1:
            raise ValueError(f"context parallel conv: a shard of {S} tokens is shorter than the kernel halo {K - 1}")
        tail = x[:, S - (K - 1) :]
        if reset is not None:  # inputs of a document that ends inside the tail are invisible to the next shard
            seg = reset[:, S - (K - 1) :].long().cumsum(1)
            tail = tail * (seg == seg[:, -1:])[..., None]
        tails = all_gather_stack(tail, group, self.comm)  # (world, B, K-1, C)
        halo = state if rank == 0 else tails[rank - 1]
        y, _ = self.local(x, halo, reset)
        return depend_on(y, tails), tails[world - 1]


def shard_sequence(batch: dict, state: ParallelState) -> dict:
    """This CP rank's contiguous slice of every (B, S) tensor in ``batch`` (S divisible by CP; any chunk
    size: a shard's last chunk may be ragged)."""
    if state.cp == 1:
        return batch
    out = {}
    for key, t in batch.items():
        if not torch.is_tensor(t) or t.dim() < 2:
            out[key] = t
            continue
        S = t.shape[1]
        if S % state.cp:
            raise ConfigError(f"sequence length {S} of batch[{key!r}] is not divisible by context_parallel="
                              f"{state.cp}")
        n = S // state.cp
        out[key] = t[:, state.cp_rank * n : (state.cp_rank + 1) * n]
    return out


def token_count(labels: torch.Tensor, state: ParallelState, ignore_index: int = -100) -> torch.Tensor:
    """Number of target tokens of the whole (unsharded) sequences of this data-parallel rank."""
    n = (labels != ignore_index).sum().to(torch.float32)
    if state.cp > 1:
        n = n.clone()
        dist.all_reduce(n, group=state.cp_group)
    return n
