"""Activation memory of a forward pass: bytes of the distinct tensors autograd saves for backward,
counted with saved-tensor hooks (deterministic; no allocator noise). Shared by the benchmarks."""

from __future__ import annotations

import torch


def saved_activation_bytes(fn, *args, **kwargs) -> int:
    seen = {}

    def pack(t):
        if not (t.requires_grad and t.grad_fn is None):  # parameters and leaf inputs are not activations
            seen[(t.untyped_storage().data_ptr(), t.dtype)] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn(*args, **kwargs)
    return sum(seen.values())
