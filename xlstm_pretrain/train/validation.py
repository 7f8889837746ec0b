"""Validation: loss and perplexity on held-out shards, when to evaluate, and the unigram baseline."""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
import torch.distributed as dist

import xlstm_kernels


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


# The validation windows do not depend on the run: a fixed seed, never the training RNG, so every
# evaluation of every run (any layout, resumed or not) sees the same tokens.
VALIDATION_SEED = 20241201


def validation_windows(num_samples: int, requested: int, seed: int = VALIDATION_SEED) -> list[int]:
    """The global indices (sorted) of the windows one evaluation uses: all ``num_samples`` when
    ``requested`` is 0 or at least ``num_samples``; otherwise ``requested`` windows spread over the whole
    split: the split is cut into ``requested`` equal strata and one window is drawn (seeded) from each.

    A validation split is several sources and documents one after another, so a contiguous prefix is a
    few documents of one source and a biased estimate of the split's loss; one window per stratum
    covers the split evenly, and the seeded draw avoids lining up with any periodic structure.
    A pure function of its arguments: identical at every evaluation and for every layout.
    """
    if num_samples < 1:
        raise ValueError("the validation set has no samples")
    if requested == 0 or requested >= num_samples:
        return list(range(num_samples))
    edges = np.arange(requested + 1, dtype=np.int64) * num_samples // requested  # stratum k: [edges[k], edges[k+1])
    offsets = np.random.default_rng(seed).random(requested)
    return (edges[:-1] + (offsets * np.diff(edges)).astype(np.int64)).tolist()


def validation_slice(num_samples: int, requested: int, micro_batch: int, dp_size: int,
                     dp_rank: int) -> list[int | None]:
    """This DP rank's contiguous share of ``validation_windows(num_samples, requested)``, padded with
    ``None`` (a window that counts no tokens) so that every rank runs the same number of whole
    micro-batches (ZeRO-3 needs every rank in every forward). The ranks' shares, in rank order, are the
    windows exactly: no window is dropped or repeated whatever the DP size and micro-batch."""
    windows = validation_windows(num_samples, requested)
    per_rank = math.ceil(len(windows) / (dp_size * micro_batch)) * micro_batch
    share = windows[dp_rank * per_rank: (dp_rank + 1) * per_rank]
    return share + [None] * (per_rank - len(share))


def _sample(dataset, index: int | None, fill: int) -> dict[str, np.ndarray]:
    """``dataset[index]``, or for padding (``None``) window ``fill`` with every label ignored."""
    if index is not None:
        return dataset[index]
    sample = dict(dataset[fill])
    sample["labels"] = np.full_like(sample["labels"], -100)
    return sample


@torch.no_grad()
def evaluate(model, dataset, indices: Sequence[int | None], micro_batch: int, device, autocast,
             state) -> tuple[float, int]:
    """Mean token loss over ``dataset[indices]`` on every DP rank together: (loss, target tokens).
    ``None`` entries (padding from ``validation_slice``) run a forward but count no tokens."""
    from xlstm_pretrain.data import collate_samples
    from xlstm_pretrain.parallel import lm_loss, shard_sequence

    was_training = model.training
    model.eval()
    total = torch.zeros(2, dtype=torch.float64, device=device)
    fill = next((i for i in indices if i is not None), 0)
    for start in range(0, len(indices), micro_batch):
        samples = [_sample(dataset, i, fill) for i in indices[start: start + micro_batch]]
        batch = shard_sequence(collate_samples(samples), state)
        ids, labels = batch["input_ids"].to(device), batch["labels"].to(device)
        bounds = batch["doc_boundaries"].to(device)
        xlstm_kernels.register_document_boundaries(bounds, batch["doc_boundaries"])  # no per-layer host syncs
        with autocast:
            logits = model(ids, doc_boundaries=bounds)
        token_loss = lm_loss(model, logits, labels)  # 0 at ignored labels
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


def validation_targets(dataset, indices: Sequence[int]) -> np.ndarray:
    """The target tokens of ``dataset[indices]`` (e.g. ``validation_windows(...)``), concatenated."""
    return np.concatenate([dataset[i]["labels"] for i in indices]).astype(np.int64)
