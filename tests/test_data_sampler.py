"""Training-side data: packed windows, document boundaries, the deterministic mixture order, DP batching,
DataLoader workers, DataConfig.

Shards are written here from token lists the test knows, so every sample is checked against the
stream computed independently in the test.
"""

from __future__ import annotations

import random
from collections import Counter

import numpy as np
import pytest
import torch

from data_prep.shard_writer import IndexedDatasetWriter
from xlstm_pretrain.config_loader import ConfigError, load_config
from xlstm_pretrain.data import (
    DataConfig,
    GlobalBatchSampler,
    IndexPermutation,
    PackedSamples,
    ShardSetConfig,
    ShuffledMixture,
    TokenStream,
    build_dataloader,
    build_train_dataset,
    build_validation_dataset,
    collate_samples,
)

SEQ = 8


def write_shards(folder, name, doc_lengths_per_shard, first_token):
    """Shards whose tokens count up from ``first_token`` (so every window of the stream is unique).
    Returns (prefixes, stream as a list, set of document start positions in the stream)."""
    prefixes, stream, starts = [], [], set()
    token = first_token
    for k, lengths in enumerate(doc_lengths_per_shard):
        prefix = folder / f"{name}_{k}"
        writer = IndexedDatasetWriter(prefix, np.int32)
        for n in lengths:
            doc = list(range(token, token + n))
            token += n
            starts.add(len(stream))
            stream.extend(doc)
            writer.add_document(doc)
        writer.finish()
        writer.commit()
        prefixes.append(str(prefix))
    return prefixes, stream, starts


@pytest.fixture
def shard_sets(tmp_path):
    """Three shard sets of different sizes; set A has an empty shard in the middle."""
    rng = random.Random(0)
    a = write_shards(tmp_path, "a", [[rng.randint(1, 20) for _ in range(15)], [], [rng.randint(1, 20) for _ in range(15)]], 0)
    b = write_shards(tmp_path, "b", [[rng.randint(1, 30) for _ in range(10)]], 100_000)
    c = write_shards(tmp_path, "c", [[rng.randint(1, 10) for _ in range(8)]], 200_000)
    return a, b, c


def expected_sample(stream, starts, i, seq=SEQ):
    window = stream[i * seq : i * seq + seq + 1]
    boundaries = [(i * seq + p) in starts for p in range(seq)]
    return window[:-1], window[1:], boundaries


def test_samples_are_the_stream_cut_into_windows(shard_sets):
    prefixes, stream, starts = shard_sets[0]
    samples = PackedSamples(prefixes, SEQ)
    assert len(samples) == (len(stream) - 1) // SEQ
    for i in range(len(samples)):
        s = samples[i]
        inputs, labels, boundaries = expected_sample(stream, starts, i)
        assert s["input_ids"].tolist() == inputs
        assert s["labels"].tolist() == labels  # = inputs shifted by one
        assert s["doc_boundaries"].tolist() == boundaries
    assert any(samples[i]["doc_boundaries"][0] for i in range(len(samples)))  # a document starting at 0 is seen
    # with one shard mapped at a time (least recently used closed), the samples are the same
    one_open = PackedSamples(TokenStream(prefixes, max_open_shards=1), SEQ)
    for i in range(len(samples)):
        assert one_open[i]["input_ids"].tolist() == samples[i]["input_ids"].tolist()
        assert one_open[i]["doc_boundaries"].tolist() == samples[i]["doc_boundaries"].tolist()
    assert len(one_open.stream._open) == 1
    with pytest.raises(IndexError):
        samples[len(samples)]
    with pytest.raises(ValueError, match="fewer than one sample"):
        PackedSamples(prefixes, len(stream))


def test_permutation_is_a_keyed_bijection():
    for n in (1, 2, 3, 5, 16, 17, 100, 1000, 4097):
        perm = IndexPermutation(n, 7, 1)
        assert sorted(perm(i) for i in range(n)) == list(range(n))
    orders = [[IndexPermutation(1000, seed, 0)(i) for i in range(1000)] for seed in (1, 2)]
    assert orders[0] != orders[1] and orders[0] != list(range(1000))
    assert orders[0] == [IndexPermutation(1000, 1, 0)(i) for i in range(1000)]  # deterministic
    # not trivially structured: few fixed points, and successive outputs are far apart on average
    assert sum(orders[0][i] == i for i in range(1000)) < 10
    assert np.mean(np.abs(np.diff(orders[0]))) > 200


def test_each_epoch_visits_every_sample_once_in_a_new_order(shard_sets):
    prefixes, _, _ = shard_sets[0]
    samples = PackedSamples(prefixes, SEQ)
    n = len(samples)
    mix = ShuffledMixture([samples], seed=3)
    epoch0 = [mix.locate(g) for g in range(n)]
    epoch1 = [mix.locate(g) for g in range(n, 2 * n)]
    assert {loc.epoch for loc in epoch0} == {0} and {loc.epoch for loc in epoch1} == {1}
    assert sorted(loc.sample_index for loc in epoch0) == list(range(n))
    assert sorted(loc.sample_index for loc in epoch1) == list(range(n))
    assert [loc.sample_index for loc in epoch0] != [loc.sample_index for loc in epoch1]
    assert [ShuffledMixture([samples], seed=4).locate(g) for g in range(n)] != epoch0  # the seed matters


def test_mixture_weights_are_respected_and_deterministic(shard_sets):
    sets = [PackedSamples(p, SEQ) for p, _, _ in shard_sets]
    weights = [0.5, 0.3, 0.2]
    mix = ShuffledMixture(sets, weights, seed=11, block_size=100)
    locs = [mix.locate(g) for g in range(1000)]
    assert Counter(loc.set_index for loc in locs) == {0: 500, 1: 300, 2: 200}  # exact per block
    prefix = Counter(loc.set_index for loc in locs[:150])
    for j, w in enumerate(weights):
        assert abs(prefix[j] / 150 - w) < 0.1
    # each set is drawn epoch by epoch: within an epoch, no sample repeats
    for j, s in enumerate(sets):
        drawn = [(loc.epoch, loc.sample_index) for loc in locs if loc.set_index == j]
        assert len(set(drawn)) == len(drawn)
        for e in range(len(drawn) // len(s)):
            assert sorted(i for ep, i in drawn if ep == e) == list(range(len(s)))
    # a pure function of (seed, g): another instance, queried in random order, agrees
    other = ShuffledMixture(sets, weights, seed=11, block_size=100)
    order = list(range(1000))
    random.Random(5).shuffle(order)
    assert all(other.locate(g) == locs[g] for g in order)
    assert [ShuffledMixture(sets, weights, seed=12, block_size=100).locate(g) for g in range(100)] != locs[:100]
    with pytest.raises(ValueError, match="no slot"):
        ShuffledMixture(sets, [1.0, 1.0, 0.001], block_size=100)


def global_batches(dataset, steps, dp_size, consumed=0, gbs=16, mbs=2):
    """Per step, the global batch reassembled from every rank's micro-batches (ranks in order)."""
    per_rank = []
    for rank in range(dp_size):
        sampler = GlobalBatchSampler(gbs, mbs, rank, dp_size, consumed_samples=consumed, num_steps=steps)
        batches = [collate_samples([dataset[g] for g in idx]) for idx in sampler]
        k = sampler.micro_batches_per_step
        per_rank.append([batches[s * k : (s + 1) * k] for s in range(steps)])
    out = []
    for s in range(steps):
        micro = [mb for rank in range(dp_size) for mb in per_rank[rank][s]]
        out.append({key: torch.cat([mb[key] for mb in micro]) for key in micro[0]})
    return out


def test_same_global_batches_across_resume_and_dp_sizes(shard_sets):
    sets = [PackedSamples(p, SEQ) for p, _, _ in shard_sets]
    mix = ShuffledMixture(sets, [0.5, 0.3, 0.2], seed=1, block_size=50)
    reference = global_batches(mix, steps=6, dp_size=1)
    expected_first = collate_samples([mix[g] for g in range(16)])  # independent: the first 16 global samples
    assert all(torch.equal(reference[0][k], expected_first[k]) for k in expected_first)
    for dp in (2, 4):
        batches = global_batches(mix, steps=6, dp_size=dp)
        for ref, got in zip(reference, batches):
            assert all(torch.equal(ref[k], got[k]) for k in ref)
    # resume mid-run (after 3 steps), with a different DP size and a freshly built dataset
    fresh = ShuffledMixture([PackedSamples(p, SEQ) for p, _, _ in shard_sets], [0.5, 0.3, 0.2], seed=1, block_size=50)
    resumed = global_batches(fresh, steps=3, dp_size=2, consumed=3 * 16)
    for ref, got in zip(reference[3:], resumed):
        assert all(torch.equal(ref[k], got[k]) for k in ref)


def test_dataloader_workers_do_not_duplicate_samples(shard_sets):
    prefixes, stream, starts = shard_sets[0]
    samples = PackedSamples(prefixes, SEQ)
    n = len(samples)
    mix = ShuffledMixture([samples], seed=5)
    steps = n // 4  # whole global batches of 4 covering (almost) one epoch

    def collect(num_workers):
        loader = build_dataloader(mix, GlobalBatchSampler(4, 2, num_steps=steps), num_workers=num_workers)
        return [b for b in loader]

    serial, parallel = collect(0), collect(2)
    assert len(serial) == len(parallel) == 2 * steps
    for a, b in zip(serial, parallel):
        assert all(torch.equal(a[k], b[k]) for k in a)
    rows = [tuple(r.tolist()) for b in parallel for r in b["input_ids"]]
    assert len(set(rows)) == len(rows) == 4 * steps
    windows = {tuple(expected_sample(stream, starts, i)[0]) for i in range(n)}
    assert set(rows) <= windows
    batch = parallel[0]
    assert batch["input_ids"].dtype == torch.int64 and batch["labels"].dtype == torch.int64
    assert batch["doc_boundaries"].dtype == torch.bool and batch["input_ids"].shape == (2, SEQ)


def test_sampler_rejects_inconsistent_sizes():
    with pytest.raises(ValueError, match="multiple of"):
        GlobalBatchSampler(10, 4, 0, 1)
    with pytest.raises(ValueError, match="rank"):
        GlobalBatchSampler(8, 2, 2, 2)
    sampler = GlobalBatchSampler(8, 2, 1, 2, consumed_samples=16, num_steps=2)
    assert list(sampler) == [[20, 21], [22, 23], [28, 29], [30, 31]] and len(sampler) == 4


def ramped_steps(sched, steps, dp, mbs, first_step=0, consumed=0):
    """Per step, the global sample indices of every rank's micro-batches (ranks in order), from a ramped sampler."""
    per_rank = [list(GlobalBatchSampler(sched.batch_size, mbs, r, dp, consumed_samples=consumed,
                                        num_steps=steps - first_step, first_step=first_step)) for r in range(dp)]
    out, pos = [], 0
    for step in range(first_step, steps):
        k = sched.grad_accum(step, mbs, dp)
        out.append([g for rank in per_rank for mb in rank[pos:pos + k] for g in mb])
        pos += k
    assert all(len(rank) == pos for rank in per_rank)  # nothing left over
    return out


def test_batch_size_rampup_keeps_the_global_order_and_resumes(shard_sets):
    """Ramp-up 2 (2 steps) -> 4 (2 steps) -> 8: step s takes the next B(s) samples of the one global order (no
    sample lost or repeated), whatever the DP size or micro-batch; a resume mid ramp-up continues it exactly."""
    from xlstm_pretrain.train.batch_schedule import BatchSchedule

    sched, steps = BatchSchedule(((2, 2), (4, 2)), 8), 7
    reference = ramped_steps(sched, steps, dp=1, mbs=2)
    assert [len(b) for b in reference] == [2, 2, 4, 4, 8, 8, 8]
    constant = [g for idx in GlobalBatchSampler(4, 2, num_steps=9) for g in idx]  # the constant-batch order
    assert [g for b in reference for g in b] == constant[:sched.consumed_samples(steps)] == list(range(36))
    # DP=2 (each rank a contiguous half) and micro-batch 1: the same global batches
    assert ramped_steps(sched, steps, dp=2, mbs=1) == reference == ramped_steps(sched, steps, dp=1, mbs=1)
    for first in (1, 3, 4, 5):  # resume inside a stage, at a stage boundary, after the ramp-up
        assert ramped_steps(sched, steps, dp=2, mbs=1, first_step=first,
                            consumed=sched.consumed_samples(first)) == reference[first:]
    # through the DataLoader (2 workers), on the mixture: rank 1 of 2 gets its halves of the same samples
    sets = [PackedSamples(p, SEQ) for p, _, _ in shard_sets]
    mix = ShuffledMixture(sets, [0.5, 0.3, 0.2], seed=1, block_size=50)
    sampler = GlobalBatchSampler(sched.batch_size, 1, 1, 2, consumed_samples=sched.consumed_samples(3),
                                 num_steps=steps - 3, first_step=3)
    assert len(sampler) == 2 + 4 + 4 + 4
    rows = [r for b in build_dataloader(mix, sampler, num_workers=2) for r in b["input_ids"].tolist()]
    expected = [g for b in reference[3:] for g in b[len(b) // 2:]]
    assert rows == [mix[g]["input_ids"].tolist() for g in expected]
    with pytest.raises(TypeError, match="micro_batches_at"):
        sampler.micro_batches_per_step
    with pytest.raises(ValueError, match=r"global_batch_size=3 \(step 1\) must be a multiple of"):
        list(GlobalBatchSampler(lambda step: 2 + step, 1, 0, 2, num_steps=3))


def test_data_config_from_yaml_and_errors(shard_sets, tmp_path):
    (a_prefixes, a_stream, a_starts), (b_prefixes, _, _), _ = shard_sets
    yaml_file = tmp_path / "data.yaml"
    yaml_file.write_text(
        f"train:\n  - {{path: {a_prefixes[0]}, weight: 3}}\n  - {{path: {b_prefixes[0]}, weight: 1}}\n"
        f"validation:\n  - {{path: {a_prefixes[2]}}}\nseq_len: {SEQ}\n"
    )
    cfg = load_config(DataConfig, yaml_file, ["seed=9"])
    assert cfg.train[0].weight == 3.0 and cfg.seed == 9 and isinstance(cfg.train[1], ShardSetConfig)
    train = build_train_dataset(cfg)
    assert Counter(train.locate(g).set_index for g in range(10_000)) == {0: 7500, 1: 2500}
    val = build_validation_dataset(cfg)
    offset = len(PackedSamples([a_prefixes[0]], SEQ).stream)  # shard a_2 starts after a_0 (a_1 is empty)
    assert val[0]["input_ids"].tolist() == a_stream[offset : offset + SEQ]
    assert val[0]["doc_boundaries"][0]

    bad = [
        (["train=[{path: x, weight: 0}]"], "weight must be positive"),
        (["train=[{path: ''}]"], "path is empty"),
        (["seq_len=0"], "seq_len must be positive"),
        (["train=[{path: x, split: test}]"], "split must be 'train' or 'val'"),
        (["train=[{path: x, weight: 1000}, {path: y, weight: 0.001}]"], "raise mixture_block_size"),
        (["train=[{path: x, wieght: 1}]"], "did you mean"),
    ]
    for overrides, message in bad:
        with pytest.raises(ConfigError, match=message):
            load_config(DataConfig, None, overrides)
    with pytest.raises(ConfigError, match=r"data.train\[0\].*neither a data_prep output folder nor a shard prefix"):
        build_train_dataset(DataConfig(train=[ShardSetConfig(str(tmp_path / "nope"))]))
    (tmp_path / "folder").mkdir()
    with pytest.raises(ConfigError, match="without manifest.json"):
        build_train_dataset(DataConfig(train=[ShardSetConfig(str(tmp_path / "folder"))]))
    with pytest.raises(ConfigError, match="data.train is empty"):
        build_train_dataset(DataConfig())
