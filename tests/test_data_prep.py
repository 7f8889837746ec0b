"""data_prep: SlimPajama-layout text -> Megatron indexed shards + manifest.

Every check compares against an independent computation: a hand-written .idx/.bin parser (below, from
the byte layout of Megatron-LM's indexed_dataset.py), the tokenizer called directly on the documents the
test itself wrote, or a second run with other settings.
"""

from __future__ import annotations

import json
import os
import random
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import zstandard
from tokenizers import Tokenizer

from data_prep import tokenize as tokenize_cli
from data_prep import train_tokenizer
from data_prep.pipeline import PrepOptions, prepare
from data_prep.readers import BAD_INPUT_REASONS, InputError
from data_prep.shard_jobs import OutputConflict
from data_prep.shard_writer import IndexedDatasetWriter
from xlstm_pretrain.data.shard_reader import IndexedDataset, token_dtype_for_vocab

REPO = Path(__file__).resolve().parent.parent
WORDS = "the of data model token stream shard sample naïve café 日本語 emoji🙂 x=1; def f(): return".split()
SET_NAMES = ["RedPajamaC4", "RedPajamaGithub", "RedPajamaWikipedia"]


# --------------------------------------------------------------------------------------------------
# An independent reader of the Megatron format (struct + raw bytes; shares no code with the package)
# --------------------------------------------------------------------------------------------------

DTYPE_BY_CODE = {4: "<i4", 8: "<u2"}


def hand_read_shard(prefix) -> list[list[int]]:
    """Documents of a Megatron .idx/.bin pair, parsed byte by byte."""
    raw = Path(f"{prefix}.idx").read_bytes()
    assert raw[:9] == b"MMIDIDX\x00\x00"
    version, code, n_seq, n_doc_idx = struct.unpack_from("<QBQQ", raw, 9)
    assert version == 1
    pos = 9 + 8 + 1 + 8 + 8
    lengths = struct.unpack_from(f"<{n_seq}i", raw, pos)
    pos += 4 * n_seq
    pointers = struct.unpack_from(f"<{n_seq}q", raw, pos)
    pos += 8 * n_seq
    doc_idx = struct.unpack_from(f"<{n_doc_idx}q", raw, pos)
    pos += 8 * n_doc_idx
    assert pos == len(raw), "trailing bytes in .idx"
    assert list(doc_idx) == list(range(n_seq + 1)), "one sequence per document, doc_idx = 0..n"
    data = Path(f"{prefix}.bin").read_bytes()
    itemsize = {4: 4, 8: 2}[code]
    docs, expected_pointer = [], 0
    for length, pointer in zip(lengths, pointers):
        assert pointer == expected_pointer  # byte offsets, contiguous
        docs.append(list(np.frombuffer(data, DTYPE_BY_CODE[code], count=length, offset=pointer)))
        expected_pointer += length * itemsize
    assert expected_pointer == len(data)
    return docs


# --------------------------------------------------------------------------------------------------
# Synthetic SlimPajama-like corpus and a tiny tokenizer
# --------------------------------------------------------------------------------------------------


def make_text(rng: random.Random) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 40)))


def write_jsonl(path: Path, lines: list[bytes], compress: bool) -> None:
    data = b"".join(line + b"\n" for line in lines)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(zstandard.ZstdCompressor().compress(data) if compress else data)


def record(text, set_name) -> bytes:
    return json.dumps({"text": text, "meta": {"redpajama_set_name": set_name}}, ensure_ascii=False).encode()


@pytest.fixture(scope="session")
def corpus(tmp_path_factory):
    """SlimPajama layout: train/chunk{1,2}/example_train_*.jsonl[.zst] and validation/chunk1/*.
    Returns (root, {file key: [(line, text, set_name), ...]}) with the valid documents per file."""
    root = tmp_path_factory.mktemp("slimpajama")
    rng = random.Random(0)
    expected = {}
    for split, files in (("train", 6), ("validation", 2)):
        for i in range(files):
            chunk = 1 + i % 2
            name = f"example_{split}_{i}.jsonl" + (".zst" if i % 2 == 0 else "")
            docs = [(n + 1, make_text(rng), rng.choice(SET_NAMES)) for n in range(rng.randint(15, 30))]
            write_jsonl(root / split / f"chunk{chunk}" / name, [record(t, s) for _, t, s in docs], i % 2 == 0)
            expected[f"{split}/chunk{chunk}/{name}"] = docs
    return root, expected


@pytest.fixture(scope="session")
def tokenizer_path(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    rc = train_tokenizer.main(["--input", str(corpus[0] / "train"), "--vocab-size", "400", "--output", str(out)])
    assert rc == 0 and out.is_file()
    return out


def encode(tokenizer_path, texts) -> list[list[int]]:
    tok = Tokenizer.from_file(str(tokenizer_path))
    eod = tok.token_to_id("<|endoftext|>")
    return [tok.encode(t, add_special_tokens=False).ids + [eod] for t in texts]


def sorted_keys(expected, split):
    # data_prep sorts files by their path below the input folder
    return sorted((k for k in expected if k.startswith(split + "/")), key=lambda k: k.split("/", 1)[1])


def run_prep(tokenizer_path, out, inputs, **kw) -> tuple:
    options = PrepOptions(output_dir=str(out), tokenizer=str(tokenizer_path), inputs=[str(p) for p in inputs],
                          progress=False, **{"workers": 1, **kw})
    result = prepare(options)
    return result, json.loads((Path(out) / "manifest.json").read_text())


def shard_docs(out, manifest, split) -> list[list[int]]:
    docs = []
    for shard in manifest["shards"]:
        if shard["split"] == split:
            docs.extend(hand_read_shard(Path(out) / shard["name"]))
    return docs


def all_bytes(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# --------------------------------------------------------------------------------------------------
# Format
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype, code", [(np.uint16, 8), (np.int32, 4)])
def test_idx_bin_byte_layout(tmp_path, dtype, code):
    docs = [[5, 6, 7], [1], [9, 9, 9, 9, 0], []]
    if dtype == np.int32:
        docs[0][0] = 70_000  # only representable as int32
    writer = IndexedDatasetWriter(tmp_path / "s", dtype)
    for d in docs:
        writer.add_document(d)
    writer.finish()
    assert not (tmp_path / "s.bin").exists(), "nothing under a final name before commit()"
    writer.commit()
    raw = (tmp_path / "s.idx").read_bytes()
    itemsize = np.dtype(dtype).itemsize
    expected = (
        b"MMIDIDX\x00\x00"
        + struct.pack("<Q", 1)
        + struct.pack("<B", code)
        + struct.pack("<Q", len(docs))  # sequence count
        + struct.pack("<Q", len(docs) + 1)  # document index entries
        + struct.pack("<4i", 3, 1, 5, 0)  # lengths
        + struct.pack("<4q", 0, 3 * itemsize, 4 * itemsize, 9 * itemsize)  # byte pointers
        + struct.pack("<5q", 0, 1, 2, 3, 4)  # document indices
    )
    assert raw == expected
    flat = [t for d in docs for t in d]
    assert (tmp_path / "s.bin").read_bytes() == struct.pack(f"<{len(flat)}{'H' if code == 8 else 'i'}", *flat)
    # and the package's reader agrees with the hand parser
    ds = IndexedDataset(tmp_path / "s")
    assert [list(ds[i]) for i in range(len(ds))] == hand_read_shard(tmp_path / "s") == docs
    # Megatron's dtype rule: GPT-2 / GPT-NeoX vocabularies fit uint16, a 128k vocabulary needs int32
    assert token_dtype_for_vocab(50304) == np.uint16 and token_dtype_for_vocab(65500) == np.int32


def test_reader_reads_general_megatron_index(tmp_path):
    """Megatron allows several sequences per document and empty documents; the reader finds document
    starts from doc_idx."""
    lengths = [2, 3, 1, 4]
    # documents: seqs {0,1}, {} (empty), {2}, {3}, {} (empty, at the end)
    doc_idx = [0, 2, 2, 3, 4, 4]
    flat = list(range(sum(lengths)))
    pointers = np.concatenate([[0], np.cumsum(lengths[:-1])]) * 2
    idx = (b"MMIDIDX\x00\x00" + struct.pack("<QBQQ", 1, 8, len(lengths), len(doc_idx))
           + struct.pack(f"<{len(lengths)}i", *lengths) + struct.pack(f"<{len(lengths)}q", *pointers)
           + struct.pack(f"<{len(doc_idx)}q", *doc_idx))
    (tmp_path / "m.idx").write_bytes(idx)
    (tmp_path / "m.bin").write_bytes(struct.pack(f"<{len(flat)}H", *flat))
    ds = IndexedDataset(tmp_path / "m")
    assert ds.num_documents == 5 and len(ds) == 4 and list(ds.tokens) == flat
    assert [list(ds[i]) for i in range(4)] == [[0, 1], [2, 3, 4], [5], [6, 7, 8, 9]]
    assert list(ds.document_starts_between(0, 10)) == [0, 5, 6]
    assert list(ds.document_starts_between(1, 6)) == [5]
    assert list(ds.document_starts_between(6, 7)) == [6]


def test_reader_rejects_damaged_files(tmp_path):
    writer = IndexedDatasetWriter(tmp_path / "s", np.uint16)
    writer.add_document([1, 2, 3])
    writer.finish()
    writer.commit()
    (tmp_path / "s.bin").write_bytes(b"\x01\x00")  # truncated data
    with pytest.raises(ValueError, match="index says"):
        IndexedDataset(tmp_path / "s")
    (tmp_path / "s.idx").write_bytes(b"NOTANIDX" + bytes(40))
    with pytest.raises(ValueError, match="magic"):
        IndexedDataset(tmp_path / "s")


# --------------------------------------------------------------------------------------------------
# Tokenization
# --------------------------------------------------------------------------------------------------


def test_shards_hold_exactly_the_tokenized_documents(corpus, tokenizer_path, tmp_path):
    root, expected = corpus
    result, manifest = run_prep(tokenizer_path, tmp_path, [root / "train"], files_per_shard=4,
                                validation_inputs=[str(root / "validation")])
    for split, folder in (("train", "train"), ("val", "validation")):
        keys = sorted_keys(expected, folder)
        texts = [t for k in keys for _, t, _ in expected[k]]
        assert shard_docs(tmp_path, manifest, split) == encode(tokenizer_path, texts)
        assert manifest["splits"][split]["documents"] == len(texts)
    # manifest accounting: shard grouping, per-file and per-set-name counts, tokenizer identity
    assert [s["name"] for s in manifest["shards"]] == ["train_00000", "train_00001", "val_00000"]
    assert manifest["shards"][0]["source_files"] == sorted_keys(expected, "train")[:4]
    key = sorted_keys(expected, "train")[0]
    assert manifest["sources"][key]["documents"] == len(expected[key])
    assert manifest["sources"][key]["tokens"] == sum(map(len, encode(tokenizer_path, [t for _, t, _ in expected[key]])))
    # set-name counts per split: validation documents are not counted as train documents
    for split, folder in (("train", "train"), ("val", "validation")):
        by_set = {}
        for k in sorted_keys(expected, folder):
            for _, t, s in expected[k]:
                by_set[s] = by_set.get(s, 0) + 1
        assert {k: v["documents"] for k, v in manifest["set_names"][split].items()} == by_set
    tok = manifest["tokenizer"]
    assert tok["vocab_size"] == Tokenizer.from_file(str(tokenizer_path)).get_vocab_size() and tok["eod_id"] == 0
    assert manifest["dtype"] == "uint16"
    assert manifest["bad_input"]["counts"] == {r: 0 for r in BAD_INPUT_REASONS}
    assert result.jobs_run == 3 and result.jobs_skipped == 0


def test_output_is_identical_for_one_and_two_workers(corpus, tokenizer_path, tmp_path):
    root, _ = corpus
    run_prep(tokenizer_path, tmp_path / "w1", [root / "train"], files_per_shard=1, workers=1, validation_fraction=0.2)
    run_prep(tokenizer_path, tmp_path / "w2", [root / "train"], files_per_shard=1, workers=2, validation_fraction=0.2)
    one, two = all_bytes(tmp_path / "w1"), all_bytes(tmp_path / "w2")
    assert len([k for k in one if k.endswith(".bin")]) == 12  # 6 train + 6 held-out shards
    assert one == two


def test_resume_after_crash_gives_identical_output(corpus, tokenizer_path, tmp_path, monkeypatch):
    root, expected = corpus
    kw = dict(files_per_shard=2, validation_fraction=0.2)
    run_prep(tokenizer_path, tmp_path / "clean", [root / "train"], **kw)
    first_job_docs = sum(len(expected[k]) for k in sorted_keys(expected, "train")[:2])

    # Crash part-way through the second job (after the first one has finished).
    original = IndexedDatasetWriter.add_document
    calls = {"n": 0}

    def crashing_add_document(self, ids):
        calls["n"] += 1
        if calls["n"] > first_job_docs + 5:
            raise RuntimeError("simulated crash")
        original(self, ids)

    crashed = tmp_path / "crashed"
    monkeypatch.setattr(IndexedDatasetWriter, "add_document", crashing_add_document)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_prep(tokenizer_path, crashed, [root / "train"], **kw)
    monkeypatch.setattr(IndexedDatasetWriter, "add_document", original)
    assert (crashed / "progress" / "train_00000.json").exists()
    assert not (crashed / "progress" / "train_00001.json").exists()
    assert not (crashed / "manifest.json").exists()
    # What a hard kill leaves behind: a partial temp file, and a committed .bin whose job never recorded.
    (crashed / "train_00001.bin.tmp").write_bytes(b"partial garbage")
    (crashed / "train_00002.bin").write_bytes(b"renamed but never recorded")
    finished_mtime = (crashed / "train_00000.bin").stat().st_mtime_ns

    result, _ = run_prep(tokenizer_path, crashed, [root / "train"], **kw)
    assert (result.jobs_skipped, result.jobs_run) == (1, 2)
    assert (crashed / "train_00000.bin").stat().st_mtime_ns == finished_mtime  # not redone
    assert all_bytes(crashed) == all_bytes(tmp_path / "clean")

    # A finished shard from other settings is not silently mixed in; --overwrite redoes everything.
    with pytest.raises(OutputConflict, match="other inputs or settings"):
        run_prep(tokenizer_path, crashed, [root / "train"], files_per_shard=2, validation_fraction=0.3)
    result, _ = run_prep(tokenizer_path, crashed, [root / "train"], overwrite=True, **kw)
    assert (result.jobs_skipped, result.jobs_run) == (0, 3)
    assert all_bytes(crashed) == all_bytes(tmp_path / "clean")


def test_heldout_validation_split(corpus, tokenizer_path, tmp_path):
    root, expected = corpus
    _, m1 = run_prep(tokenizer_path, tmp_path / "a", [root / "train"], files_per_shard=1, validation_fraction=0.25)
    _, m3 = run_prep(tokenizer_path, tmp_path / "b", [root / "train"], files_per_shard=3, validation_fraction=0.25)
    all_docs = encode(tokenizer_path, [t for k in sorted_keys(expected, "train") for _, t, _ in expected[k]])
    train, val = shard_docs(tmp_path / "a", m1, "train"), shard_docs(tmp_path / "a", m1, "val")
    # a partition of the documents, order kept within each side
    assert sorted(map(tuple, train + val)) == sorted(map(tuple, all_docs))
    assert 0.1 < len(val) / len(all_docs) < 0.4
    # the choice does not depend on how files are grouped into shards
    assert val == shard_docs(tmp_path / "b", m3, "val") and train == shard_docs(tmp_path / "b", m3, "train")
    assert m1["validation"] == {"mode": "heldout_fraction", "fraction": 0.25, "seed": 1234}
    with pytest.raises(InputError, match="choose one validation split"):
        run_prep(tokenizer_path, tmp_path / "c", [root / "train"], validation_fraction=0.1,
                 validation_inputs=[str(root / "validation")])


def test_set_name_filter(corpus, tokenizer_path, tmp_path):
    root, expected = corpus
    _, manifest = run_prep(tokenizer_path, tmp_path, [root / "train"], set_names=["RedPajamaGithub"])
    keys = sorted_keys(expected, "train")
    kept = [t for k in keys for _, t, s in expected[k] if s == "RedPajamaGithub"]
    assert shard_docs(tmp_path, manifest, "train") == encode(tokenizer_path, kept)
    total = sum(len(expected[k]) for k in keys)
    assert manifest["bad_input"]["filtered_documents"] == total - len(kept)
    assert list(manifest["set_names"]["train"]) == ["RedPajamaGithub"] and manifest["set_names"]["val"] == {}


# --------------------------------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------------------------------


def test_every_bad_input_reason_is_counted_and_valid_documents_kept(tokenizer_path, tmp_path, capsys):
    rng = random.Random(1)
    src = tmp_path / "in"
    good = lambda: record(make_text(rng), "RedPajamaC4")  # noqa: E731
    # plain file: one of each line-level problem, at known lines
    lines = [good(), b"{not json", json.dumps({"meta": {}}).encode(), good(), json.dumps({"text": 5}).encode(),
             json.dumps({"text": "  \n "}).encode(), b"", "{\"text\": \"caf\xe9\"}".encode("latin-1"),
             b'{"text": "lone \\ud800 surrogate"}', b"[1, 2]", good()]
    bad_at = {2: "malformed_json", 3: "missing_text", 5: "missing_text", 6: "empty_document", 7: "blank_line",
              8: "invalid_utf8", 9: "invalid_utf8", 10: "malformed_json"}
    write_jsonl(src / "a.jsonl", lines, compress=False)
    # truncated .zst: big enough for several zstd blocks, cut in the middle
    long_lines = [record(" ".join(rng.choice(WORDS) for _ in range(60)), "RedPajamaGithub") for _ in range(3000)]
    blob = zstandard.ZstdCompressor().compress(b"".join(x + b"\n" for x in long_lines))
    truncated = blob[: len(blob) // 2]
    (src / "b.jsonl.zst").write_bytes(truncated)
    # corrupt .zst: a valid frame followed by garbage
    c_lines = [good() for _ in range(4)]
    (src / "c.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(b"".join(x + b"\n" for x in c_lines))
                                      + b"\x00garbage that is not a zstd frame")

    out = tmp_path / "out"
    rc = tokenize_cli.main(["--tokenizer", str(tokenizer_path), "--input", str(src), "--output-dir", str(out),
                            "--workers", "1", "--no-progress"])
    assert rc == 0
    manifest = json.loads((out / "manifest.json").read_text())

    # The complete lines of the truncated file, found independently with a plain streaming decoder.
    visible = zstandard.ZstdDecompressor().decompressobj().decompress(truncated)
    complete = visible.split(b"\n")[:-1]
    assert 0 < len(complete) < len(long_lines)
    valid = [json.loads(x)["text"] for x in (lines[0], lines[3], lines[10])]
    valid += [json.loads(x)["text"] for x in complete] + [json.loads(x)["text"] for x in c_lines]
    assert shard_docs(out, manifest, "train") == encode(tokenizer_path, valid)

    counts = manifest["bad_input"]["counts"]
    expected_counts = {r: 0 for r in BAD_INPUT_REASONS}
    for reason in bad_at.values():
        expected_counts[reason] += 1
    expected_counts["truncated_zst"] = expected_counts["corrupt_zst"] = 1
    assert counts == expected_counts
    where = {(e["source"], e["line"], e["reason"]) for e in manifest["bad_input"]["examples"]}
    assert {("in/a.jsonl", line, reason) for line, reason in bad_at.items()} <= where
    assert ("in/b.jsonl.zst", len(complete) + 1, "truncated_zst") in where
    assert ("in/c.jsonl.zst", 5, "corrupt_zst") in where
    summary = capsys.readouterr().out
    for reason in BAD_INPUT_REASONS:
        assert reason in summary
    assert "in/a.jsonl:8: invalid_utf8" in summary


def test_missing_or_unusable_inputs_are_clear_errors(tokenizer_path, tmp_path, capsys):
    args = ["--tokenizer", str(tokenizer_path), "--output-dir", str(tmp_path / "o"), "--no-progress"]
    assert tokenize_cli.main(args + ["--input", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert tokenize_cli.main(args + ["--input", str(tmp_path / "empty")]) == 2
    assert "no *.jsonl" in capsys.readouterr().err
    (tmp_path / "notes.csv").write_text("a,b")
    assert tokenize_cli.main(args + ["--input", str(tmp_path / "notes.csv")]) == 2
    assert "unsupported input file" in capsys.readouterr().err
    write_jsonl(tmp_path / "ok.jsonl", [record("hello", "x")], compress=False)
    assert tokenize_cli.main(args + ["--input", str(tmp_path / "ok.jsonl"), "--eod-token", "<eos>"]) == 2
    assert "no token '<eos>'" in capsys.readouterr().err
    if os.geteuid() != 0:  # root can read anything
        locked = tmp_path / "locked.jsonl"
        write_jsonl(locked, [record("hello", "x")], compress=False)
        locked.chmod(0)
        assert tokenize_cli.main(args + ["--input", str(locked)]) == 2
        assert "not readable" in capsys.readouterr().err


def test_hub_source_gives_the_same_tokens_as_local_files(corpus, tokenizer_path, tmp_path, monkeypatch):
    """The Hugging Face path, exercised offline with the packaged "json" builder."""
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    root, expected = corpus
    key = sorted_keys(expected, "train")[1]  # a plain .jsonl file
    path = root / key
    _, local = run_prep(tokenizer_path, tmp_path / "local", [path])
    options = PrepOptions(output_dir=str(tmp_path / "hub"), tokenizer=str(tokenizer_path), hf_dataset="json",
                          hf_data_files=[str(path)], records_per_shard=7, workers=1, progress=False,
                          validation_fraction=0.3)
    hub_result = prepare(options)
    hub = hub_result.manifest
    assert hub["splits"]["train"]["shards"] == -(-len(expected[key]) // 7)
    hub_docs = shard_docs(tmp_path / "hub", hub, "train") + shard_docs(tmp_path / "hub", hub, "val")
    assert sorted(map(tuple, hub_docs)) == sorted(map(tuple, shard_docs(tmp_path / "local", local, "train")))
    assert hub["splits"]["val"]["documents"] > 0
    # resume: every hub job is found finished and skipped
    again = prepare(options)
    assert (again.jobs_run, again.jobs_skipped) == (0, hub["splits"]["train"]["shards"])


def test_prepared_folder_feeds_the_training_sampler(corpus, tokenizer_path, tmp_path):
    from xlstm_pretrain.data import DataConfig, ShardSetConfig, build_train_dataset, build_validation_dataset

    root, _ = corpus
    _, manifest = run_prep(tokenizer_path, tmp_path, [root / "train"], files_per_shard=2,
                           validation_inputs=[str(root / "validation")])
    stream = [t for d in shard_docs(tmp_path, manifest, "train") for t in d]
    cfg = DataConfig(train=[ShardSetConfig(str(tmp_path))], validation=[ShardSetConfig(str(tmp_path), split="val")],
                     seq_len=16)
    train = build_train_dataset(cfg)
    n = (len(stream) - 1) // 16
    windows = {tuple(stream[i * 16 : i * 16 + 17]) for i in range(n)}
    seen = set()
    for g in range(n):  # one epoch: every window exactly once
        s = train[g]
        seen.add(tuple(s["input_ids"]) + (int(s["labels"][-1]),))
    assert seen == windows
    val = build_validation_dataset(cfg)
    val_stream = [t for d in shard_docs(tmp_path, manifest, "val") for t in d]
    assert list(val[0]["input_ids"]) == val_stream[:16]


@pytest.mark.parametrize("module", ["data_prep.tokenize", "data_prep.train_tokenizer"])
def test_cli_help(module):
    proc = subprocess.run([sys.executable, "-m", module, "--help"], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"usage: python -m {module}")


# --------------------------------------------------------------------------------------------------
# Damaged and empty input, empty shards, eval folders, changed inputs, file order (issue 16 item 4)
# --------------------------------------------------------------------------------------------------


def test_corrupt_zst_keeps_every_line_decoded_before_the_damage(tokenizer_path, tmp_path):
    rng = random.Random(3)
    texts = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 80))) for _ in range(4000)]
    lines = [json.dumps({"text": t}).encode() for t in texts]
    blob = zstandard.ZstdCompressor(level=3).compress(b"".join(x + b"\n" for x in lines))
    damage_at = len(blob) // 2
    damaged = bytearray(blob)
    damaged[damage_at] ^= 1  # one bit flip, in the middle of a file far smaller than 1 MiB
    with pytest.raises(zstandard.ZstdError):
        zstandard.ZstdDecompressor().decompressobj().decompress(bytes(damaged))
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.jsonl.zst").write_bytes(bytes(damaged))

    # Independently: every line a decoder can give from the bytes before the damage.
    before = zstandard.ZstdDecompressor().decompressobj().decompress(blob[:damage_at]).split(b"\n")[:-1]
    assert 1000 < len(before) < len(lines)

    _, manifest = run_prep(tokenizer_path, tmp_path / "out", [tmp_path / "in"])
    assert shard_docs(tmp_path / "out", manifest, "train") == encode(tokenizer_path, texts[: len(before)])
    assert manifest["bad_input"]["counts"]["corrupt_zst"] == 1
    [example] = manifest["bad_input"]["examples"]
    assert (example["source"], example["line"], example["reason"]) == ("in/a.jsonl.zst", len(before) + 1, "corrupt_zst")


def test_empty_input_files_are_counted_not_silently_accepted(tokenizer_path, tmp_path, capsys):
    src = tmp_path / "in"
    write_jsonl(src / "a.jsonl", [record("some text", "RedPajamaC4")], compress=False)
    (src / "b.jsonl.zst").write_bytes(b"")  # a download that never wrote a byte: not even a zstd header
    (src / "c.jsonl").write_bytes(b"")
    rc = tokenize_cli.main(["--tokenizer", str(tokenizer_path), "--input", str(src), "--output-dir",
                            str(tmp_path / "out"), "--workers", "1", "--no-progress"])
    assert rc == 0
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["bad_input"]["counts"]["empty_file"] == 2
    assert {(e["source"], e["reason"]) for e in manifest["bad_input"]["examples"]} == {
        ("in/b.jsonl.zst", "empty_file"), ("in/c.jsonl", "empty_file")}
    assert "in/b.jsonl.zst:0: empty_file" in capsys.readouterr().out
    assert manifest["splits"]["train"]["documents"] == 1


def test_a_shard_without_documents_writes_no_files(tokenizer_path, tmp_path):
    src = tmp_path / "in"
    write_jsonl(src / "a.jsonl", [record("kept text", "RedPajamaC4")], compress=False)
    write_jsonl(src / "b.jsonl", [b"{not json", b""], compress=False)  # a whole shard of bad lines
    out = tmp_path / "out"
    out.mkdir()
    (out / "train_00001.bin").write_bytes(b"")  # what an earlier version wrote for an empty shard
    (out / "train_00001.idx").write_bytes(b"stale")
    _, manifest = run_prep(tokenizer_path, out, [src], files_per_shard=1)
    # Megatron-LM and gpt-neox mmap every shard they are given: no 0-byte .bin may exist or be listed.
    assert not (out / "train_00001.bin").exists() and not (out / "train_00001.idx").exists()
    assert [s["name"] for s in manifest["shards"]] == ["train_00000"]
    assert [(s["name"], s["num_documents"], s["source_files"]) for s in manifest["empty_shards"]] == [
        ("train_00001", 0, ["in/b.jsonl"])]
    assert manifest["splits"]["train"] == {"shards": 1, "documents": 1, "tokens": manifest["shards"][0]["num_tokens"],
                                           "empty_shards": 1}
    for binary in out.glob("*.bin"):
        assert binary.stat().st_size > 0
    # the empty job counts as finished on a rerun, which also removes the 0-byte files of earlier versions
    (out / "train_00001.bin").write_bytes(b"")
    (out / "train_00001.idx").write_bytes(b"MMIDIDX\x00\x00")
    again, _ = run_prep(tokenizer_path, out, [src], files_per_shard=1)
    assert (again.jobs_run, again.jobs_skipped) == (0, 2)
    assert not (out / "train_00001.bin").exists() and not (out / "train_00001.idx").exists()


def test_heldout_set_name_counts_go_to_the_val_split(corpus, tokenizer_path, tmp_path):
    root, _ = corpus
    _, manifest = run_prep(tokenizer_path, tmp_path, [root / "train"], validation_fraction=0.3)
    for split in ("train", "val"):
        docs = sum(c["documents"] for c in manifest["set_names"][split].values())
        tokens = sum(c["tokens"] for c in manifest["set_names"][split].values())
        assert (docs, tokens) == (manifest["splits"][split]["documents"], manifest["splits"][split]["tokens"])
        assert manifest["splits"][split]["documents"] > 0


def test_hub_json_counts_bad_lines_like_local_files(tokenizer_path, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    lines = [record("first document", "RedPajamaC4"), b"{not json", b"", record("second document", "RedPajamaC4"),
             json.dumps({"meta": {}}).encode(), record("third document", "RedPajamaC4")]
    path = tmp_path / "a.jsonl"
    write_jsonl(path, lines, compress=False)
    _, local = run_prep(tokenizer_path, tmp_path / "local", [path])
    hub = prepare(PrepOptions(output_dir=str(tmp_path / "hub"), tokenizer=str(tokenizer_path), hf_dataset="json",
                              hf_data_files=[str(path)], workers=1, progress=False)).manifest
    assert shard_docs(tmp_path / "hub", hub, "train") == shard_docs(tmp_path / "local", local, "train")
    assert hub["bad_input"]["counts"] == local["bad_input"]["counts"]
    assert hub["bad_input"]["counts"]["malformed_json"] == hub["bad_input"]["counts"]["blank_line"] == 1
    # lines that hold no record are named by file:line; records by the stream's record number (= line here)
    assert [(e["reason"], e["line"]) for e in hub["bad_input"]["examples"]] == [
        (e["reason"], e["line"]) for e in local["bad_input"]["examples"]]
    assert [e["source"] for e in hub["bad_input"]["examples"]] == ["a.jsonl", "a.jsonl", "hf:json:train"]


def test_hub_stream_failure_is_a_clear_error(tokenizer_path, tmp_path, monkeypatch, capsys):
    """A source the datasets library streams (not a local json file) cannot skip a bad record; the
    run stops with a message naming the stream, not a pyarrow traceback."""
    import datasets

    def failing_stream(*args, **kwargs):
        yield {"text": "one good record"}
        raise ValueError("JSON parse error: Missing a name for object member. in row 1")

    monkeypatch.setattr(datasets, "load_dataset", failing_stream)
    args = ["--tokenizer", str(tokenizer_path), "--hf-dataset", "someone/corpus", "--output-dir", str(tmp_path),
            "--workers", "1", "--no-progress"]
    assert tokenize_cli.main(args) == 2
    err = capsys.readouterr().err
    assert "hf:someone/corpus:train: the datasets stream failed after record 1: ValueError: JSON parse error" in err
    assert "Traceback" not in err


def test_input_folder_with_eval_splits_is_refused(corpus, tokenizer_path, tmp_path, capsys):
    root, _ = corpus  # SlimPajama's root: train/ and validation/
    args = ["--tokenizer", str(tokenizer_path), "--output-dir", str(tmp_path / "o"), "--workers", "1", "--no-progress"]
    assert tokenize_cli.main(args + ["--input", str(root)]) == 2
    err = capsys.readouterr().err
    assert "validation/" in err and "leak" in err and str(root / "train") in err
    assert not (tmp_path / "o" / "manifest.json").exists()
    # explicit folders are the user's choice
    explicit = ["--input", str(root / "train"), "--validation-input", str(root / "validation")]
    assert tokenize_cli.main(args + explicit) == 0


def test_changed_input_files_are_named_and_redone_with_redo_changed(tokenizer_path, tmp_path, capsys):
    src = tmp_path / "in"
    for i in range(3):
        write_jsonl(src / f"f{i}.jsonl", [record(f"document {i} {j}", "RedPajamaC4") for j in range(3)], compress=False)
    out = tmp_path / "out"
    run_prep(tokenizer_path, out, [src], files_per_shard=1)
    untouched_mtime = (out / "train_00000.bin").stat().st_mtime_ns

    # f1 re-downloaded with more documents (new size); f2 fixed in place with the same size (a bit flip)
    write_jsonl(src / "f1.jsonl", [record(f"document 1 {j} fixed", "RedPajamaC4") for j in range(4)], compress=False)
    same_size = (src / "f2.jsonl").read_bytes().replace(b"document 2 0", b"document 2 X")
    (src / "f2.jsonl").write_bytes(same_size)
    os.utime(src / "f2.jsonl", ns=(1, 1))  # a moved modification time makes the content checked
    os.utime(src / "f0.jsonl", ns=(2, 2))  # f0 copied elsewhere and back: new time, same content

    args = ["--tokenizer", str(tokenizer_path), "--input", str(src), "--output-dir", str(out), "--files-per-shard",
            "1", "--workers", "1", "--no-progress"]
    assert tokenize_cli.main(args) == 2
    err = capsys.readouterr().err
    assert "train_00001: in/f1.jsonl" in err and "train_00002: in/f2.jsonl" in err and "--redo-changed" in err
    assert "train_00000" not in err

    assert tokenize_cli.main(args + ["--redo-changed"]) == 0
    assert "2 job(s) tokenized, 1 already finished" in capsys.readouterr().out
    assert (out / "train_00000.bin").stat().st_mtime_ns == untouched_mtime
    # f0's new time is recorded once its content was found unchanged: later runs need not hash it again
    f0_record = json.loads((out / "progress" / "train_00000.json").read_text())["input_files"][0]
    assert (f0_record["key"], f0_record["mtime_ns"]) == ("in/f0.jsonl", 2)
    _, clean = run_prep(tokenizer_path, tmp_path / "clean", [src], files_per_shard=1)
    assert all_bytes(out / "progress").keys() == all_bytes(tmp_path / "clean" / "progress").keys()
    for name in ("train_00000", "train_00001", "train_00002"):
        assert hand_read_shard(out / name) == hand_read_shard(tmp_path / "clean" / name)
    assert json.loads((out / "manifest.json").read_text()) == clean

    # other settings are still a conflict, --redo-changed or not
    with pytest.raises(OutputConflict, match="other inputs or settings"):
        run_prep(tokenizer_path, out, [src], files_per_shard=1, validation_fraction=0.5, redo_changed=True)


def test_files_are_taken_in_natural_order(tokenizer_path, tmp_path):
    src = tmp_path / "train"
    for chunk in (1, 2, 10):
        lines = [record(f"from chunk {chunk}", "x")]
        write_jsonl(src / f"chunk{chunk}" / "example_train_0.jsonl", lines, compress=False)
    _, manifest = run_prep(tokenizer_path, tmp_path / "out", [src], files_per_shard=1)
    assert [s["source_files"] for s in manifest["shards"]] == [
        ["train/chunk1/example_train_0.jsonl"], ["train/chunk2/example_train_0.jsonl"],
        ["train/chunk10/example_train_0.jsonl"]]


def test_a_second_run_on_the_same_output_folder_is_refused(tokenizer_path, tmp_path):
    """A second run would delete the first one's .tmp files while its workers write them."""
    import fcntl

    src = tmp_path / "in"
    write_jsonl(src / "a.jsonl", [record("some text", "RedPajamaC4")], compress=False)
    out = tmp_path / "out"
    out.mkdir()
    (out / "train_00000.bin.tmp").write_bytes(b"being written by the first run")
    with open(out / ".data_prep.lock", "a+") as held:  # what the first run holds while it runs
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        held.write("4242\n")
        held.flush()
        with pytest.raises(OutputConflict, match=r"in use by another data_prep run \(pid 4242\)"):
            run_prep(tokenizer_path, out, [src])
        assert (out / "train_00000.bin.tmp").exists()
    result, _ = run_prep(tokenizer_path, out, [src])  # the lock ends with its holder
    assert result.jobs_run == 1 and not (out / "train_00000.bin.tmp").exists()
