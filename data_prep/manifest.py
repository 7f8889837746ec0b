"""``manifest.json``: what an output folder holds, assembled from the per-job progress records.

The training side (``xlstm_pretrain/data/shard_sets.py``) reads the shard list of a split from here.
Nothing in it depends on the worker count or wall time, so reruns give byte-identical manifests.

Version 2: ``shards`` lists only shards with files (every listed name has a readable ``.bin``/``.idx``);
jobs that produced no documents are under ``empty_shards`` (no files). ``set_names`` counts per split:
``{"train": {name: {documents, tokens}}, "val": {...}}``.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

from data_prep.readers import BAD_INPUT_REASONS, InputLog, format_example
from data_prep.shard_jobs import PrepSettings

MANIFEST_NAME = "manifest.json"
MANIFEST_VERSION = 2


def build_manifest(records: list[dict], settings: PrepSettings, validation: dict) -> dict:
    """``records``: the progress records of every job, in plan order. ``validation``: how the
    validation split was made (mode and its parameters)."""
    shards, empty_shards, sources, source_paths = [], [], {}, {}
    set_names: dict[str, dict[str, Counter]] = {"train": {}, "val": {}}
    splits = {"train": Counter(), "val": Counter()}
    log = InputLog()
    for record in records:
        for out in record["outputs"]:
            shard = {**out, "source_files": list(record["sources"])}
            if out["num_documents"]:
                shards.append(shard)
                splits[out["split"]].update(shards=1, documents=out["num_documents"], tokens=out["num_tokens"])
            else:  # no files were written for it
                empty_shards.append(shard)
                splits[out["split"]].update(empty_shards=1)
        job_split = record["outputs"][0]["split"]
        for key, counts in record["sources"].items():
            sources[key] = {"split": job_split, **counts}
        source_paths.update(record.get("source_paths", {}))
        for name, counts in record["set_names"].items():
            _add_set_counts(set_names, job_split, name, counts)
        log.merge(InputLog.from_dict(record["input_log"]))
    for key, path in source_paths.items():
        sources[key]["path"] = path
    tok = settings.tokenizer
    return {
        "format": "megatron-indexed (.bin + .idx), one sequence per document, EOD appended",
        "manifest_version": MANIFEST_VERSION,
        "tokenizer": {
            "path": tok.path,
            "sha256": tok.sha256,
            "vocab_size": tok.vocab_size,
            "eod_token": tok.eod_token,
            "eod_id": tok.eod_id,
        },
        "dtype": tok.dtype,
        "filter": {"redpajama_set_name": sorted(settings.set_names) if settings.set_names is not None else None},
        "validation": validation,
        "splits": {
            k: {f: v.get(f, 0) for f in ("shards", "documents", "tokens", "empty_shards")} for k, v in splits.items()
        },
        "shards": shards,
        "empty_shards": empty_shards,
        "sources": sources,
        "set_names": {split: {k: dict(v) for k, v in sorted(by_name.items())} for split, by_name in set_names.items()},
        "bad_input": log.to_dict(),
    }


def _add_set_counts(set_names: dict, job_split: str, name: str, counts: dict) -> None:
    """A job's documents count for its own split; its held-out documents for "val"."""
    for split, prefix in ((job_split, ""), ("val", "heldout_")):
        documents, tokens = counts.get(prefix + "documents", 0), counts.get(prefix + "tokens", 0)
        if documents:
            set_names[split].setdefault(name, Counter()).update(documents=documents, tokens=tokens)


def write_manifest(output_dir: str | Path, manifest: dict) -> Path:
    path = Path(output_dir) / MANIFEST_NAME
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(manifest, indent=1) + "\n")
    os.replace(tmp, path)
    return path


def format_summary(manifest: dict, jobs_run: int, jobs_skipped: int) -> str:
    lines = [f"shards: {jobs_run} job(s) tokenized, {jobs_skipped} already finished and skipped"]
    for split, s in manifest["splits"].items():
        empty = f" ({s['empty_shards']} empty job(s): no files written)" if s["empty_shards"] else ""
        lines.append(f"{split:>5}: {s['shards']} shard(s), {s['documents']:,} documents, {s['tokens']:,} tokens{empty}")
    bad = manifest["bad_input"]
    lines.append("skipped input (every reason listed):")
    for reason in BAD_INPUT_REASONS:
        lines.append(f"  {reason:<15} {bad['counts'][reason]:,}")
    lines.append(f"  {'filtered_out':<15} {bad['filtered_documents']:,}  (valid, excluded by --set-name)")
    if bad["examples"]:
        lines.append("first skipped lines:")
        lines.extend(f"  {format_example(e)}" for e in bad["examples"])
    return "\n".join(lines)
