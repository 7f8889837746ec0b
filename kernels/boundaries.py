"""Document boundaries in FLA's varlen layout, shared by every kernel that needs them on the host.

Public API (re-exported by ``xlstm_kernels``): ``register_document_boundaries`` (the trainer calls it once
per micro-batch) and ``document_segments`` (the FLA mLSTM in ``mlstm/fla.py`` and the fused causal conv in
``xlstm_pretrain/model/fused_fla.py`` read the layout from it).

Layout: the B rows of a (B, S) reset mask are flattened into one sequence of B*S tokens cut at every row
start and every reset (``cu_seqlens``, batch 1). Building ``cu_seqlens`` needs the reset positions on the
host: registered masks take them from the loader's host copy (nothing waits for the device); for a mask
nobody registered they are copied from the device, one synchronisation per call
(``_segments_from_device_mask``, the only host synchronisation of the FLA paths).
"""

from __future__ import annotations

import threading
import weakref

import torch


def _segments_from_host_mask(reset: torch.Tensor, reset_host: torch.Tensor):
    """The varlen layout (see ``document_segments``) with the start positions taken from the host copy of
    the mask: nothing waits for the device (the small cu_seqlens upload is asynchronous)."""
    B, S = reset.shape
    starts = reset.clone()
    starts[:, 0] = True
    starts_host = reset_host.to(torch.bool).clone()
    starts_host[:, 0] = True
    cu_cpu = torch.cat([starts_host.reshape(-1).nonzero().reshape(-1), torch.tensor([B * S])])
    cu = cu_cpu.to(reset.device, non_blocking=True)
    counts = starts.long().sum(-1)  # segments per row, on the device
    last_seg = counts.cumsum(0) - 1
    first_seg = last_seg - counts + 1
    return starts, cu, cu_cpu, first_seg, last_seg


_segments_cache: dict[int, tuple] = {}  # id(reset) -> (weakref to reset, its version, the layout)
_segments_lock = threading.Lock()


def register_document_boundaries(reset: torch.Tensor, reset_host: torch.Tensor) -> None:
    """Hand the kernels the host copy of a batch's document-boundary mask (``reset`` is the same mask on
    the compute device): every layer of this forward and backward then reads the varlen layout from here
    instead of synchronising with the device. Call once per micro-batch, after moving the mask (costs one
    host nonzero and a small upload per batch, whatever the backend). Unregistered masks still work, with
    one device synchronisation per FLA layer."""
    if tuple(reset.shape) != tuple(reset_host.shape):
        raise ValueError(f"host mask {tuple(reset_host.shape)} does not match the device mask {tuple(reset.shape)}")
    layout = _segments_from_host_mask(reset.to(torch.bool), reset_host)
    with _segments_lock:
        for key in [k for k, (ref, _, _) in _segments_cache.items() if ref() is None]:
            del _segments_cache[key]  # masks of earlier batches that are gone
        _segments_cache[id(reset)] = (weakref.ref(reset), reset._version, layout)


def document_segments(reset: torch.Tensor):
    """Varlen layout of B rows cut at resets.

    Returns (starts (B, S) bool, cu_seqlens (N+1,) long on the device, cu_seqlens_cpu, first_seg (B,) long:
    index of each row's first segment, last_seg (B,) long: index of each row's last segment).
    Taken from ``register_document_boundaries`` when the trainer registered this mask; otherwise the start
    positions are copied from the device (one synchronisation per call).
    """
    with _segments_lock:
        hit = _segments_cache.get(id(reset))
    if hit is not None and hit[0]() is reset and hit[1] == reset._version:
        return hit[2]
    return _segments_from_device_mask(reset)


def _segments_from_device_mask(reset: torch.Tensor):
    """The layout of a mask nobody registered: its start positions are copied to the host, which waits
    for the device. The only host synchronisation of the FLA paths."""
    return _segments_from_host_mask(reset.to(torch.bool), reset.cpu())


__all__ = ["document_segments", "register_document_boundaries"]
