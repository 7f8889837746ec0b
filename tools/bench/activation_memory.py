r"""Activation memory of a forward pass: bytes of the distinct tensors autograd saves for backward,
counted with saved-tensor hooks (deterministic; no allocator noise). Shared by the benchmarks.

Run as a script it prints, per block type and model part, the measured bytes beside the memory model's
prediction (xlstm_pretrain/memory/activations.py), for both families, the torch / triton / fla backends,
fp32 / bf16 autocast / bf16 parameters, with and without activation checkpointing:

    TRITON_INTERPRET=1 python tools/bench/activation_memory.py [--backends torch triton] [--B 2 --S 64]

(triton and fla run on the CPU under the Triton interpreter: keep the shapes small).
"""

from __future__ import annotations

import argparse
import contextlib
import os

import torch


def _is_activation(t: torch.Tensor) -> bool:
    """Parameters, leaf inputs and views of them (a transposed weight in a linear) are not activations."""
    base = t._base if t._base is not None else t
    return not (base.requires_grad and base.grad_fn is None)


def saved_activation_bytes(fn, *args, **kwargs) -> int:
    seen = {}

    def pack(t):
        if _is_activation(t):
            seen[(t.untyped_storage().data_ptr(), t.dtype)] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn(*args, **kwargs)
    return sum(seen.values())


# ---- per-part measurement of a whole model + loss ------------------------------------------------


def _precision_context(precision: str):
    return torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16" else contextlib.nullcontext()


def measure_model(model, ids, reset=None, precision: str = "fp32", loss: bool = True) -> dict:
    """Saved bytes of forward + loss, split as the memory model splits them.

    Returns {"blocks": [bytes of block i], "outside": embedding + head (+ loss), "block_inputs": bytes of the
    blocks' inputs}. Each storage is counted once, in the part that saves it first. If the model has been
    wrapped for activation checkpointing (train/setup.py), the blocks' saved
    tensors are then invisible here: what the hook still sees inside them is what the checkpoint keeps (their
    inputs); the one-block recompute is measured by a plain forward of the same model.
    """
    import torch.nn.functional as F

    part = ["outside"]
    seen: dict = {}
    block_inputs: dict = {}
    hooks = []
    for idx, blk in enumerate(model.blocks):
        def pre(mod, args, idx=idx):
            part[0] = idx
            x = args[0]
            block_inputs[(x.untyped_storage().data_ptr(), x.dtype)] = x.untyped_storage().nbytes()
        hooks.append(blk.register_forward_pre_hook(pre))
    hooks.append(model.out_norm.register_forward_pre_hook(lambda mod, args: part.__setitem__(0, "outside")))

    def pack(t):
        if _is_activation(t):
            seen.setdefault((t.untyped_storage().data_ptr(), t.dtype), (part[0], t.untyped_storage().nbytes()))
        return t

    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), _precision_context(precision):
            logits = model(ids, doc_boundaries=reset)
            if loss:
                F.cross_entropy(logits.float().flatten(0, -2), ids.flatten())
    finally:
        for h in hooks:
            h.remove()
    blocks = [0] * len(model.blocks)
    outside = 0
    for where, nbytes in seen.values():
        if where == "outside":
            outside += nbytes
        else:
            blocks[where] += nbytes
    return {"blocks": blocks, "outside": outside, "block_inputs": sum(block_inputs.values())}


def measured_peak(model_cfg, B: int, S: int, precision: str, activation_checkpointing: bool, reset: bool,
                  seed: int = 0) -> dict:
    """Measured counterpart of ``memory.activations.saved_bytes`` (same keys) on a CPU model."""
    from xlstm_pretrain.model import build_model

    torch.manual_seed(seed)
    model = build_model(model_cfg)
    if precision == "bf16-params":
        model = model.to(torch.bfloat16)
    ids = torch.randint(0, model_cfg.vocab_size, (B, S))
    rs = None
    if reset:  # two documents per row: the reset paths of the conv and the cells
        rs = torch.zeros(B, S, dtype=torch.bool)
        rs[:, 0] = True
        rs[:, S // 3] = True
    from xlstm_kernels import selfcheck

    # Count the configured kernel's tensors even where its self-check fails (FLA in bf16 under the Triton
    # interpreter): a fallback to the torch reference would silently measure another backend.
    override = selfcheck._mode_override  # restored as it was (None: the environment's setting)
    selfcheck.set_mode("off")
    try:
        plain = measure_model(model, ids, rs, precision)
        if activation_checkpointing:
            from xlstm_pretrain.train.setup import enable_activation_checkpointing

            enable_activation_checkpointing(model)
            ckpt = measure_model(model, ids, rs, precision)
    finally:
        selfcheck.set_mode(override)
    if not activation_checkpointing:
        return {"blocks": sum(plain["blocks"]), "embedding, logits, loss": plain["outside"]}
    # what the hook still sees inside the checkpointed blocks is what the checkpoint keeps: their inputs
    return {"block inputs (checkpointed)": sum(ckpt["blocks"]), "one block recomputed": max(plain["blocks"]),
            "embedding, logits, loss": ckpt["outside"]}


def measure_sharded_blocks(family: str, layouts, B: int = 2, S: int = 64) -> list[tuple]:
    """On each rank of a process group (tests/dist_utils.run_distributed): [(layout, predicted, measured)] saved
    bytes of the blocks per rank, fp32 torch backend, document resets, for (tp, sp, cp) layouts that use all
    ranks (DP = 1)."""
    from xlstm_pretrain.memory.activations import block
    from xlstm_pretrain.memory.kernel_states import total
    from xlstm_pretrain.memory.shapes import shapes_for
    from xlstm_pretrain.model import build_model
    from xlstm_pretrain.parallel import (ParallelConfig, apply_context_parallel, init_parallel_state,
                                         parallelize_model, shard_sequence)

    rows = []
    cfg = small_model(family, "torch")
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, cfg.vocab_size, (B, S), generator=g)
    rs = torch.zeros(B, S, dtype=torch.bool)
    rs[:, 0] = True
    rs[:, S // 3] = True
    for tp, sp, cp in layouts:
        state = init_parallel_state(ParallelConfig(tensor_parallel=tp, sequence_parallel=sp, context_parallel=cp))
        torch.manual_seed(0)
        model = apply_context_parallel(parallelize_model(build_model(cfg), state), state)
        local = shard_sequence(dict(ids=ids, rs=rs), state)
        measured = sum(measure_model(model, local["ids"], local["rs"], loss=False)["blocks"])
        sh = shapes_for(cfg, S, B, tp=tp, cp=cp, sp=sp, precision="fp32", reset=True)
        predicted = sum(total(block(cfg, kind, sh, "torch")) for kind in cfg.block_types)
        rows.append(((tp, sp, cp), predicted, measured))
    return rows


def predicted_peak(model_cfg, B: int, S: int, precision: str, activation_checkpointing: bool, reset: bool) -> dict:
    from xlstm_pretrain.memory.activations import saved_bytes
    from xlstm_pretrain.memory.shapes import shapes_for

    sh = shapes_for(model_cfg, S, B, precision=precision, reset=reset)
    return saved_bytes(model_cfg, sh, model_cfg.backend, activation_checkpointing)


def small_model(family: str, backend: str, **overrides):
    """The reduced shapes the comparison runs at (both block types for the paper family)."""
    from xlstm_pretrain.model import ModelConfig

    if family == "paper":
        kw = dict(family="paper", vocab_size=256, embedding_dim=64, num_blocks=2, num_heads=4, slstm_at=[1],
                  chunk_size=16)
    else:
        kw = dict(family="large", vocab_size=256, embedding_dim=64, num_blocks=2, num_heads=4, chunk_size=16)
    kw.update(overrides)
    return ModelConfig(backend=backend, **kw)


def compare(family: str, backend: str, precision: str, activation_checkpointing: bool, reset: bool = True,
            B: int = 2, S: int = 64) -> list[tuple[str, float, float]]:
    """[(part, predicted, measured), ...] with a "total" row last."""
    cfg = small_model(family, backend)
    pred = predicted_peak(cfg, B, S, precision, activation_checkpointing, reset)
    meas = measured_peak(cfg, B, S, precision, activation_checkpointing, reset)
    rows = [(k, pred[k], meas[k]) for k in pred]
    rows.append(("total", sum(pred.values()), sum(meas.values())))
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backends", nargs="+", default=["torch", "triton"])
    ap.add_argument("--precisions", nargs="+", default=["fp32", "bf16", "bf16-params"])
    ap.add_argument("--B", type=int, default=2)
    ap.add_argument("--S", type=int, default=64)
    args = ap.parse_args()
    if any(b != "torch" for b in args.backends) and os.environ.get("TRITON_INTERPRET") != "1" \
            and not torch.cuda.is_available():
        raise SystemExit("set TRITON_INTERPRET=1 to run the triton / fla backends on the CPU")
    print(f"saved-tensor bytes, B={args.B} S={args.S}, document resets on; predicted / measured (ratio)")
    print(f"{'family':6s} {'backend':7s} {'precision':11s} {'AC':3s} {'part':28s} {'predicted':>11s} "
          f"{'measured':>11s} {'ratio':>6s}")
    for family in ("paper", "large"):
        for backend in args.backends:
            for precision in args.precisions:
                for ac in (False, True):
                    for part, p, m in compare(family, backend, precision, ac, B=args.B, S=args.S):
                        print(f"{family:6s} {backend:7s} {precision:11s} {'on' if ac else 'off':3s} {part:28s} "
                              f"{p:11,.0f} {m:11,.0f} {p / m if m else float('nan'):6.3f}")


if __name__ == "__main__":
    main()
