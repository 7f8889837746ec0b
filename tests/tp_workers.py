"""Per-rank bodies of the tensor-parallel tests (spawned by tests/test_tensor_parallel.py)."""

from __future__ import annotations

import torch

from xlstm_pretrain.model import ModelConfig, build_model
from xlstm_pretrain.parallel import (ParallelConfig, gather_full_state_dict, gather_logits, init_parallel_state,
                                     lm_loss, load_full_state_dict, parallelize_model)


def tiny_config(family: str) -> ModelConfig:
    kw = dict(family=family, vocab_size=64, embedding_dim=32, num_blocks=3, num_heads=4, chunk_size=8)
    if family == "paper":
        kw["slstm_at"] = [1]
    return ModelConfig(**kw)


def batch(B=2, S=16, V=64, seed=123):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, V, (B, S + 1), generator=g)
    bounds = torch.zeros(B, S, dtype=torch.bool)
    bounds[:, 0] = True
    bounds[0, 5] = bounds[1, 11] = True
    return ids[:, :-1], ids[:, 1:], bounds


# fp32 gradients of one model computed two ways (one process vs TP / CP ranks): every tensor must agree
# to 2e-5 of its own scale (tests/test_tensor_parallel.py, tests/test_context_parallel.py)
GRAD_RTOL = 2e-5


def assert_cp_matches_single_process(r: dict) -> None:
    """A ``cp_equivalence`` result: nothing resent in recompute, logits, loss and the final state to 1e-5, every
    gradient to GRAD_RTOL of its own scale (tests/test_context_parallel*.py)."""
    assert r["resent"] == 0
    assert r["logits"] < 1e-5 and r["loss"] < 1e-5
    assert r["grad_rel_norm"] < GRAD_RTOL, f"gradient of {r['worst_grad_rel_norm']}: {r['grad_rel_norm']:.2e}"
    assert r["grad_rel_max"] < GRAD_RTOL, f"gradient of {r['worst_grad_rel_max']}: {r['grad_rel_max']:.2e}"
    assert r["state"] < 1e-5  # the final state after the whole sequence (TBPTT across steps)


def gradient_errors(grads, ref_grads):
    """Per parameter, the error of ``grads`` against ``ref_grads`` relative to that gradient's OWN scale:
    ``rel_norm`` = ||a - b|| / ||b|| and ``rel_max`` = max|a - b| / max|b| (elementwise, with the absolute
    tolerance scaled to the tensor). An error of 1e-5 then means the same for a gate gradient of 1e-4 as
    for an embedding gradient of 1 (dividing by max(1, max|b|) would turn small gradients' checks into
    absolute ones). A zero reference gradient demands an exactly zero gradient."""
    tiny = torch.finfo(torch.float32).tiny
    errors = {}
    for name, b in ref_grads.items():
        b = b.double()
        diff = grads[name].double() - b
        errors[name] = dict(rel_norm=(diff.norm() / max(b.norm().item(), tiny)).item(),
                            rel_max=(diff.abs().max() / max(b.abs().max().item(), tiny)).item())
    return errors


def worst_gradient_errors(grads, ref_grads):
    """The largest ``gradient_errors`` over all parameters, and which parameters they came from."""
    errors = gradient_errors(grads, ref_grads)
    out = {}
    for kind in ("rel_norm", "rel_max"):
        worst = max(errors, key=lambda n: errors[n][kind])
        out[f"grad_{kind}"], out[f"worst_grad_{kind}"] = errors[worst][kind], worst
    return out


def build_model_seeded(cfg, seed=0):
    torch.manual_seed(seed)
    return build_model(cfg)


def forward_backward(model, ids, labels, bounds):
    logits = model(ids, doc_boundaries=bounds)
    loss = lm_loss(model, logits, labels).mean()
    loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    return gather_logits(model, logits).detach(), loss.detach(), gather_full_state_dict(model, grads)


def tp_equivalence(cases):
    """For each (family, tp, sequence_parallel): max errors of logits, loss and every gathered gradient
    against the single-process model, plus TP<->TP=1 checkpoint round trips."""
    out = {}
    ids, labels, bounds = batch()
    for family, tp, sp in cases:
        cfg = tiny_config(family)
        state = init_parallel_state(ParallelConfig(tensor_parallel=tp, sequence_parallel=sp))
        torch.manual_seed(0)
        ref = build_model(cfg)
        ref_logits, ref_loss, ref_grads = forward_backward(ref, ids, labels, bounds)
        torch.manual_seed(0)
        model = parallelize_model(build_model(cfg), state)
        with state.comm.logging() as log:
            logits, loss, grads = forward_backward(model, ids, labels, bounds)
        collectives = sorted({record.name for record in log})
        # checkpoints: TP=N -> TP=1 (gather) and TP=1 -> TP=N (slice) give identical outputs
        full = gather_full_state_dict(model)
        plain = build_model(cfg)
        plain.load_state_dict(full)
        torch.manual_seed(7)
        other = build_model(cfg)  # different random weights ...
        reloaded = parallelize_model(other, state)
        load_full_state_dict(reloaded, ref.state_dict())  # ... replaced by the TP=1 checkpoint
        with torch.no_grad():
            ckpt_to_tp1 = (plain(ids, doc_boundaries=bounds) - ref_logits).abs().max().item()
            ckpt_to_tpn = (gather_logits(reloaded, reloaded(ids, doc_boundaries=bounds)) - ref_logits).abs().max().item()
        out[(family, tp, sp)] = dict(
            logits=(logits - ref_logits).abs().max().item(), loss=abs(loss.item() - ref_loss.item()),
            **worst_gradient_errors(grads, ref_grads), n_grads=len(grads), n_ref=len(ref_grads),
            same_keys=set(full) == set(ref.state_dict()), ckpt_to_tp1=ckpt_to_tp1, ckpt_to_tpn=ckpt_to_tpn,
            # the gathered TP=N state dict is bit-identical to TP=1's, so exports from either are identical
            gathered_exact=all(torch.equal(full[k], v) for k, v in build_model_seeded(cfg).state_dict().items()),
            collectives=collectives,
        )
    return out


def zero_vs_single_process(family, zero_stage, bf16, steps=5, grad_accum=1, tp=2, cp=1):
    """TP x DP under DeepSpeed ZeRO vs one process on the same global batches: losses, grad norms,
    final (gathered) weights."""
    import deepspeed
    import torch.distributed as dist

    from xlstm_pretrain.parallel.zero import deepspeed_config, initialize_deepspeed

    from xlstm_pretrain.parallel import apply_context_parallel, shard_sequence, token_count

    cfg = tiny_config(family)
    state = init_parallel_state(ParallelConfig(tensor_parallel=tp, context_parallel=cp))
    dp, dp_rank = state.dp, state.dp_rank
    B_global, S, lr = 8, 16, 3e-3
    data = [batch(B=B_global, S=S, seed=100 + s) for s in range(steps)]

    # reference: one process, the whole global batch, torch AdamW + clipping
    torch.manual_seed(0)
    ref = build_model(cfg)
    initial = {n: p.detach().clone() for n, p in ref.named_parameters()}
    opt = torch.optim.AdamW(ref.parameters(), lr=lr, betas=(0.9, 0.95), eps=1e-5, weight_decay=0.1)
    ref_losses, ref_norms = [], []
    for ids, labels, bounds in data:
        opt.zero_grad()
        loss = lm_loss(ref, ref(ids, doc_boundaries=bounds), labels).mean()
        loss.backward()
        ref_norms.append(torch.nn.utils.clip_grad_norm_(ref.parameters(), 1.0).item())
        opt.step()
        ref_losses.append(loss.item())

    torch.manual_seed(0)
    model = apply_context_parallel(parallelize_model(build_model(cfg), state), state)
    if bf16:
        model = model.to(torch.bfloat16)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), eps=1e-5, weight_decay=0.1)
    micro = B_global // dp // grad_accum
    engine = initialize_deepspeed(model, opt, state, deepspeed_config(
        zero_stage=zero_stage, micro_batch_size=micro, grad_accum_steps=grad_accum, dp_size=dp, bf16=bf16))
    losses, norms = [], []
    for ids, labels, bounds in data:
        rows = slice(dp_rank * B_global // dp, (dp_rank + 1) * B_global // dp)
        step_loss = 0.0
        for a in range(grad_accum):
            r = slice(rows.start + a * micro, rows.start + (a + 1) * micro)
            local = shard_sequence(dict(ids=ids[r], labels=labels[r], bounds=bounds[r]), state)
            # token-loss sum of this CP shard / tokens of the whole sequences (gradients are summed over CP)
            logits = engine(local["ids"], doc_boundaries=local["bounds"])
            loss = lm_loss(model, logits, local["labels"]).sum() / token_count(local["labels"], state)
            engine.backward(loss)
            engine.step()
            step_loss += loss.item() / grad_accum
        t = torch.tensor([step_loss])
        dist.all_reduce(t, group=state.dp_cp_group)
        losses.append(t.item() / dp)
        norms.append(float(engine.get_global_grad_norm()))
    params = list(model.parameters())
    with deepspeed.zero.GatheredParameters(params, enabled=zero_stage == 3):
        final = gather_full_state_dict(model, {n: p.float() for n, p in model.named_parameters()})
    ref_final = dict(ref.named_parameters())
    errs = {n: (final[n] - p).abs().max().item() for n, p in ref_final.items()}
    worst = max(errs, key=errs.get)
    # what training changed, per tensor: the weights' own scale would hide an error in a small update
    updates = {n: final[n] - initial[n] for n in initial}
    ref_updates = {n: p.detach() - initial[n] for n, p in ref_final.items()}
    update_errs = gradient_errors(updates, ref_updates)
    worst_update = max(update_errs, key=lambda n: update_errs[n]["rel_norm"])
    return dict(losses=losses, ref_losses=ref_losses, norms=norms, ref_norms=ref_norms, weight_err=errs[worst],
                worst_weight=worst, errs=errs, update_rel=update_errs[worst_update]["rel_norm"],
                worst_update=worst_update)


def zero_cases(cases):
    """Several ZeRO comparisons in one spawned group: {(family, stage, bf16, grad_accum, tp, cp): result}."""
    import time

    out = {}
    for case in cases:
        family, stage, bf16, ga, tp, cp = case
        t0 = time.time()
        out[case] = zero_vs_single_process(family, stage, bf16, grad_accum=ga, tp=tp, cp=cp,
                                           steps=3 if cp > 1 else 5)
        out[case]["seconds"] = time.time() - t0
    return out


def cp_equivalence(cases):
    """For each (family, tp, cp, sequence_parallel, backend, activation checkpointing): max errors of the CP(xTP) run against one process:
    outputs (gathered along the sequence), loss, every gradient (summed over CP ranks, gathered over TP),
    the final state, and per-layer communication volume."""
    import torch.distributed as dist

    from xlstm_pretrain.parallel import apply_context_parallel, shard_sequence, token_count

    out = {}
    B = 2
    for case in cases:
        family, tp, cp, sp, backend, recompute, *rest = case
        S = rest[0] if rest else 64  # 64: whole chunks per shard; e.g. 60 at CP=4: 15 tokens, a ragged chunk
        overrides = dict(rest[1]) if len(rest) > 1 else {}  # model config fields: (("slstm_num_heads", 2),)
        ids, labels, _ = batch(B=B, S=S)
        bounds = torch.zeros(B, S, dtype=torch.bool)
        bounds[:, 0] = True
        # on a CP=4 edge (16, 48), just before (30) and after (33) the CP=2 edge; one token before an edge,
        # on it, and one before another
        bounds[0, [t for t in (16, 30, 33, 48) if t < S]] = True
        bounds[1, [t for t in (31, 32, 47) if t < S]] = True
        cfg = tiny_config(family)
        cfg.backend = backend
        for key, value in overrides.items():
            setattr(cfg, key, value)
        state = init_parallel_state(ParallelConfig(tensor_parallel=tp, context_parallel=cp, sequence_parallel=sp))
        torch.manual_seed(0)
        ref = build_model(cfg)
        ref_logits, ref_state = ref(ids, doc_boundaries=bounds, return_state=True)
        ref_loss = lm_loss(ref, ref_logits, labels).sum() / labels.numel()
        ref_loss.backward()
        ref_grads = {n: p.grad for n, p in ref.named_parameters()}

        torch.manual_seed(0)
        model = apply_context_parallel(parallelize_model(build_model(cfg), state), state)
        if recompute:
            from xlstm_pretrain.train.setup import enable_activation_checkpointing

            enable_activation_checkpointing(model)
        local = shard_sequence(dict(input_ids=ids, labels=labels, doc_boundaries=bounds), state)
        with state.comm.logging() as log:
            logits, final_state = model(local["input_ids"], doc_boundaries=local["doc_boundaries"],
                                        return_state=True)
            n_fwd = len(log)
            fwd_bytes = {}
            for name, payload, _wire in log:
                fwd_bytes[name] = fwd_bytes.get(name, 0) + payload
            # each CP rank: its token-loss sum / the global token count (gradients are then summed over CP)
            loss = lm_loss(model, logits, local["labels"]).sum() / token_count(local["labels"], state)
            loss.backward()
        # CP messages sent again in backward (a recomputed block must replay, not resend, them)
        forward_names = ("all_gather_stack", "send_state", "sequence_to_heads", "heads_to_sequence",
                         "gather_sequence_mask")
        resent = sum(1 for name, _p, _w in log[n_fwd:] if name in forward_names)
        grads = {}
        for n, p in model.named_parameters():
            g = p.grad.clone()
            dist.all_reduce(g, group=state.cp_group)
            grads[n] = g
        grads = gather_full_state_dict(model, grads)
        full_logits = gather_logits(model, logits)
        parts = [torch.empty_like(full_logits) for _ in range(cp)]
        dist.all_gather(parts, full_logits.contiguous(), group=state.cp_group)
        full_logits = torch.cat(parts, 1)
        total_loss = loss.detach().clone()
        dist.all_reduce(total_loss, group=state.cp_group)
        state_err = 0.0
        for blk_ref, blk in zip(ref_state, final_state):
            for key in blk_ref:
                for a, b in zip(blk_ref[key], blk[key]):
                    if tp == 1:  # (with TP the states hold local heads/channels only)
                        state_err = max(state_err, (a - b).abs().max().item())
        out[tuple(case)] = dict(resent=resent,
            logits=(full_logits - ref_logits).abs().max().item(), loss=abs(total_loss.item() - ref_loss.item()),
            **worst_gradient_errors(grads, ref_grads), state=state_err, fwd_bytes=fwd_bytes, n_fwd=n_fwd,
        )
    return out
