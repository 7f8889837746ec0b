"""``manifest.json``: what an output folder holds, assembled from the per-job progress records.

The training side (``xlstm_pretrain/data/shard_sets.py``) reads the shard list of a split from here.
Nothing in it depends on the worker count or wall time, so reruns give byte-identical manifests.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

from data_prep.readers import BAD_INPUT_REASONS, InputLog, format_example
from data_prep.shard_jobs import PrepSettings

MANIFEST_NAME = "manifest.json"
MANIFEST_VERSION = 1


def build_manifest(records: list[dict], settings: PrepSettings, validation: dict) -> dict:
    """``records``: the progress records of every job, in plan order. ``validation``: how the
    validation split was made (mode and its parameters)."""
    shards, sources, source_paths, set_names = [], {}, {}, {}
    splits = {"train": Counter(), "val": Counter()}
    log = InputLog()
    for record in records:
        for out in record["outputs"]:
            shard_sources = list(record["sources"])
            shards.append({**out, "source_files": shard_sources})
            splits[out["split"]].update(shards=1, documents=out["num_documents"], tokens=out["num_tokens"])
        for key, counts in record["sources"].items():
            sources[key] = {"split": record["outputs"][0]["split"], **counts}
        source_paths.update(record.get("source_paths", {}))
        for name, counts in record["set_names"].items():
            set_names.setdefault(name, Counter()).update(counts)
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
        "splits": {k: {f: v.get(f, 0) for f in ("shards", "documents", "tokens")} for k, v in splits.items()},
        "shards": shards,
        "sources": sources,
        "set_names": {k: dict(v) for k, v in sorted(set_names.items())},
        "bad_input": log.to_dict(),
    }


def write_manifest(output_dir: str | Path, manifest: dict) -> Path:
    path = Path(output_dir) / MANIFEST_NAME
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(manifest, indent=1) + "\n")
    os.replace(tmp, path)
    return path


def format_summary(manifest: dict, jobs_run: int, jobs_skipped: int) -> str:
    lines = [f"shards: {jobs_run} job(s) tokenized, {jobs_skipped} already finished and skipped"]
    for split, s in manifest["splits"].items():
        lines.append(f"{split:>5}: {s['shards']} shard(s), {s['documents']:,} documents, {s['tokens']:,} tokens")
    bad = manifest["bad_input"]
    lines.append("skipped input (every reason listed):")
    for reason in BAD_INPUT_REASONS:
        lines.append(f"  {reason:<15} {bad['counts'][reason]:,}")
    lines.append(f"  {'filtered_out':<15} {bad['filtered_documents']:,}  (valid, excluded by --set-name)")
    if bad["examples"]:
        lines.append("first skipped lines:")
        lines.extend(f"  {format_example(e)}" for e in bad["examples"])
    return "\n".join(lines)
