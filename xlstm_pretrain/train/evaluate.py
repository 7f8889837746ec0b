"""Validation: loss and perplexity on held-out shards, when to evaluate, and the unigram baseline."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.distributed as dist


def crossed_milestone(flops_before: float, flops_after: float, per_decade: int, min_flops: float = 0.0) -> float | None:
    """The largest point 10^(k/per_decade) in (flops_before, flops_after], if any (and >= min_flops).

    A pure function of the cumulative FLOPs, so resuming needs no record of past evaluations, and every
    run (of any size) evaluates at the same FLOP grid.
    """
    if per_decade <= 0 or flops_after <= 0 or flops_after < min_flops:
        return None
    k = math.floor(per_decade * math.log10(flops_after) + 1e-9)
    point = 10 ** (k / per_decade)
    if point > flops_before and point >= min_flops:
        return point
    return None


def validation_slice(num_samples: int, requested: int, micro_batch: int, dp_size: int, dp_rank: int) -> range:
    """This DP rank's contiguous share of the first ``requested`` validation samples (0 = all), trimmed to
    whole micro-batches on every rank (ZeRO-3 needs every rank to run the same number of forwards)."""
    n = num_samples if requested == 0 else min(requested, num_samples)
    per_rank = (n // dp_size) // micro_batch * micro_batch
    if per_rank == 0:
        raise ValueError(f"the validation set has {num_samples} samples: too few for {dp_size} data-parallel ranks "
                         f"x micro-batch {micro_batch}")
    return range(dp_rank * per_rank, (dp_rank + 1) * per_rank)


@torch.no_grad()
def evaluate(model, dataset, indices: range, micro_batch: int, device, autocast, state) -> tuple[float, int]:
    """Mean token loss over ``dataset[indices]`` on every DP rank together: (loss, target tokens)."""
    from xlstm_pretrain.data import collate_samples
    from xlstm_pretrain.parallel import lm_loss, shard_sequence

    was_training = model.training
    model.eval()
    total = torch.zeros(2, dtype=torch.float64, device=device)
    for start in range(indices.start, indices.stop, micro_batch):
        batch = shard_sequence(collate_samples([dataset[i] for i in range(start, min(start + micro_batch, indices.stop))]),
                               state)
        ids, labels = batch["input_ids"].to(device), batch["labels"].to(device)
        with autocast:
            logits = model(ids, doc_boundaries=batch["doc_boundaries"].to(device))
        token_loss = lm_loss(model, logits, labels)
        total[0] += token_loss.double().sum()
        total[1] += (labels != -100).sum()
    if state.dp * state.cp > 1:  # (every CP rank holds a slice of every sequence)
        dist.all_reduce(total, group=state.dp_cp_group)
    model.train(was_training)
    return (total[0] / total[1]).item(), int(total[1].item())


def token_counts(stream, vocab_size: int, max_tokens: int | None = None, chunk: int = 1 << 24) -> np.ndarray:
    """Occurrences of every token id in a TokenStream (the first ``max_tokens``)."""
    counts = np.zeros(vocab_size, dtype=np.int64)
    end = len(stream) if max_tokens is None else min(len(stream), max_tokens)
    for start in range(0, end, chunk):
        counts += np.bincount(stream.read(start, min(end, start + chunk)), minlength=vocab_size)[:vocab_size]
    return counts


def unigram_cross_entropy(train_counts: np.ndarray, targets: np.ndarray) -> float:
    """Cross entropy (nats/token) of ``targets`` under the add-one-smoothed unigram distribution of the
    training tokens: the loss of a model that ignores context. A trained LM must be well below it."""
    probs = (train_counts + 1.0) / (train_counts.sum() + len(train_counts))
    return float(-np.log(probs[targets]).mean())


def validation_targets(dataset, indices: range) -> np.ndarray:
    return np.concatenate([dataset[i]["labels"] for i in indices]).astype(np.int64)
