"""In-training validation with ``eval.samples=N``: which windows are evaluated.

A validation split is sources and documents one after another, so its first N windows are a few documents
of one source. The evaluated windows must be spread over the whole split (the loss then estimates the
split's loss), fixed (the same at every evaluation), and shared out over the DP ranks without dropping or
repeating any window, whatever the layout.
"""

from __future__ import annotations

import contextlib
import random

import numpy as np
import pytest
import torch

from data_prep.shard_writer import IndexedDatasetWriter
from xlstm_pretrain.data import PackedSamples
from xlstm_pretrain.parallel import single_process_state
from xlstm_pretrain.train.validation import evaluate, validation_slice, validation_windows

VOCAB, SEQ = 64, 16
# three sources of the split, in split order; each draws its tokens uniformly from its id range
SOURCES = {"easy": range(0, 4), "medium": range(8, 24), "hard": range(40, 64)}


class UnigramModel(torch.nn.Module):
    """Predicts the same distribution everywhere, p(v) ~ exp(-0.15 v): a token's loss grows with its id,
    so the three sources' losses differ by several nats (about 2.2, 4.3 and 9.7 nats)."""

    def __init__(self):
        super().__init__()
        self.register_buffer("log_probs", torch.log_softmax(-0.15 * torch.arange(VOCAB, dtype=torch.float32), 0))

    def forward(self, ids, doc_boundaries=None):
        return self.log_probs.expand(*ids.shape, VOCAB)


def write_split(prefix, docs_per_source=40, seed=0) -> PackedSamples:
    """The sources one after another (as data_prep writes a split: source by source), documents of 20 to
    300 tokens."""
    rng = random.Random(seed)
    writer = IndexedDatasetWriter(prefix, np.int32)
    for ids in SOURCES.values():
        for _ in range(docs_per_source):
            writer.add_document([rng.choice(ids) for _ in range(rng.randint(20, 300))])
    writer.finish()
    writer.commit()
    return PackedSamples([prefix], SEQ)


@pytest.fixture(scope="module")
def split(tmp_path_factory):
    return write_split(tmp_path_factory.mktemp("validation") / "val_0")


def loss_over(dataset, indices, micro_batch=4):
    return evaluate(UnigramModel(), dataset, indices, micro_batch, "cpu", contextlib.nullcontext(),
                    single_process_state())


# Within 3 % of the whole split's loss with 64 of ~1,200 windows (one per stratum of ~19 windows, so
# only the windows straddling a source change can err); a contiguous prefix is off by more than 50 %.
TOLERANCE = 0.03


def test_subset_loss_estimates_the_whole_split_loss(split):
    full, full_tokens = loss_over(split, list(range(len(split))))
    assert len(split) > 1000 and full_tokens == len(split) * SEQ
    requested = 64
    estimate, tokens = loss_over(split, validation_slice(len(split), requested, 4, dp_size=1, dp_rank=0))
    assert tokens == requested * SEQ
    assert estimate == pytest.approx(full, rel=TOLERANCE)
    # the test is sensitive: the first 64 windows (the old selection) are all of the easy source
    prefix, _ = loss_over(split, list(range(requested)))
    assert abs(prefix - full) > 0.5 * full


def test_whole_split_when_samples_is_0_or_more_than_the_split():
    assert validation_windows(37, 0) == list(range(37))
    assert validation_windows(37, 37) == validation_windows(37, 500) == list(range(37))


def test_windows_are_one_per_stratum_and_fixed():
    windows = validation_windows(1000, 64)
    assert len(windows) == 64 and windows == sorted(set(windows))
    # window k lies in stratum k: [k * 1000 // 64, (k + 1) * 1000 // 64)
    assert all(k * 1000 // 64 <= w < (k + 1) * 1000 // 64 for k, w in enumerate(windows))
    # not simply the stratum starts (a fixed stride can alias with periodic structure in the split)
    assert windows != [k * 1000 // 64 for k in range(64)]
    # a pure function: the global RNGs (which training advances between evaluations) neither change it
    # nor are advanced by it, so every milestone evaluates the same windows
    np.random.seed(1)
    torch.manual_seed(1)
    before = (np.random.get_state()[1].copy(), torch.get_rng_state().clone())
    again = validation_windows(1000, 64)
    assert np.array_equal(np.random.get_state()[1], before[0]) and torch.equal(torch.get_rng_state(), before[1])
    np.random.seed(2)
    torch.manual_seed(2)
    assert validation_windows(1000, 64) == again == windows


@pytest.mark.parametrize("num_samples, requested", [(1000, 64), (1000, 0), (37, 10), (37, 0), (5, 0)])
@pytest.mark.parametrize("dp_size", [1, 2, 3, 4, 8])
@pytest.mark.parametrize("micro_batch", [1, 2, 4])
def test_dp_shares_are_the_windows_in_equal_whole_micro_batches(num_samples, requested, dp_size, micro_batch):
    shares = [validation_slice(num_samples, requested, micro_batch, dp_size, r) for r in range(dp_size)]
    lengths = {len(s) for s in shares}
    assert len(lengths) == 1 and lengths.pop() % micro_batch == 0  # every rank: the same whole micro-batches
    real = [i for share in shares for i in share if i is not None]
    assert real == validation_windows(num_samples, requested)  # none dropped, none repeated, any layout
    assert sum(i is None for share in shares for i in share) < dp_size * micro_batch  # padding only to fill


@pytest.mark.parametrize("dp_size, micro_batch", [(3, 4), (8, 2)])
def test_padding_counts_no_tokens_so_every_dp_size_gives_the_same_loss(split, dp_size, micro_batch):
    """Each simulated rank evaluates its share (with padding); their token-weighted total is the loss
    of the windows on one rank."""
    requested = 50  # not a multiple of dp x micro-batch: some ranks pad
    one_rank, one_rank_tokens = loss_over(split, validation_windows(len(split), requested))
    parts = [loss_over(split, validation_slice(len(split), requested, micro_batch, dp_size, r), micro_batch)
             for r in range(dp_size)]
    parts = [(loss, tokens) for loss, tokens in parts if tokens]  # (a rank of padding only has no loss)
    tokens = sum(t for _, t in parts)
    assert tokens == one_rank_tokens == requested * SEQ
    assert sum(loss * t for loss, t in parts) / tokens == pytest.approx(one_rank, rel=1e-6)
