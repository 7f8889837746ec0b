"""Every run's validation rows (``metrics.jsonl``, ``kind: val``) joined with its sweep point -> one table.

One row per (run, evaluation): the point's description (grid, budget, shape, N, planned D, lr) followed
by what the trainer measured then (step, tokens, flops, train/val loss, val ppl, why it evaluated).
``final`` marks the last evaluation of a run that reached its planned step count: the (N, D, loss) points
the fits use; the earlier rows trace loss against compute.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

from .grid import SweepPoint

METRICS_FILE = "metrics.jsonl"  # written by xlstm_pretrain.train (metrics.py)
POINT_COLUMNS = ["run", "grid", "kind", "budget", "tokens_per_param_target", "embedding_dim", "num_blocks",
                 "num_heads", "params", "params_non_embedding", "training_flops_per_token", "seq_len",
                 "global_batch_size", "planned_steps", "planned_tokens", "lr"]
EVAL_COLUMNS = ["step", "tokens", "flops", "train_loss", "val_loss", "val_ppl", "reason", "final"]
COLUMNS = POINT_COLUMNS + EVAL_COLUMNS


def read_metrics(run_dir: str | Path) -> list[dict]:
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:  # a line cut by a kill: everything before it is still good
                continue
    return rows


def point_rows(point: SweepPoint) -> list[dict]:
    desc = {"run": point.name, "grid": point.grid, "kind": point.kind, "budget": point.budget,
            "tokens_per_param_target": point.tokens_per_param_target, "embedding_dim": point.embedding_dim,
            "num_blocks": point.num_blocks, "num_heads": point.num_heads, "params": point.params,
            "params_non_embedding": point.params_non_embedding,
            "training_flops_per_token": point.training_flops_per_token, "seq_len": point.seq_len,
            "global_batch_size": point.global_batch_size, "planned_steps": point.steps,
            "planned_tokens": point.tokens, "lr": point.lr}
    vals = [r for r in read_metrics(point.run_dir) if r.get("kind") == "val"]
    rows = []
    for k, r in enumerate(vals):
        final = k == len(vals) - 1 and r["step"] == point.steps
        rows.append({**desc, "step": r["step"], "tokens": r["tokens"], "flops": r["flops"],
                     "train_loss": r.get("train_loss"), "val_loss": r["val_loss"], "val_ppl": r.get("val_ppl"),
                     "reason": r.get("reason"), "final": final})
    return rows


def collect(points: list[SweepPoint], echo=print) -> list[dict]:
    """The table of every point's evaluations; runs without any are reported and left out."""
    table = []
    for point in points:
        rows = point_rows(point)
        if not rows:
            echo(f"no validation rows yet: {point.name} ({point.run_dir})")
        elif not rows[-1]["final"]:
            echo(f"not finished: {point.name} (last evaluation at step {rows[-1]['step']} of {point.steps})")
        for row in rows:
            # the trainer and the plan count FLOPs the same way; a mismatch means the run was changed
            expected = point.training_flops_per_token * row["tokens"]
            if not math.isclose(row["flops"], expected, rel_tol=1e-6):
                echo(f"warning: {point.name} step {row['step']}: {row['flops']:.6e} FLOPs logged, "
                     f"{expected:.6e} planned for {row['tokens']:,} tokens (was the run config edited?)")
                break
        table.extend(rows)
    return table


def write_table(table: list[dict], prefix: str | Path) -> tuple[Path, Path]:
    """PREFIX.csv and PREFIX.json (the JSON keeps types; the CSV is for spreadsheets and pandas)."""
    prefix = Path(prefix)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    csv_path, json_path = prefix.with_suffix(".csv"), prefix.with_suffix(".json")
    with open(csv_path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for row in table:
            writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in COLUMNS})
    json_path.write_text(json.dumps(table, indent=1) + "\n")
    return csv_path, json_path


def _parse_cell(column: str, text: str):
    if text == "":
        return None
    if column in ("run", "grid", "kind", "reason"):
        return text
    if column == "final":
        return text.lower() == "true"
    value = float(text)
    return int(value) if value.is_integer() and column not in ("budget", "lr", "flops") else value


def read_table(path: str | Path) -> list[dict]:
    """A collected table from its .json or .csv (or a sweep dir: its results.json)."""
    path = Path(path)
    if path.is_dir():
        path = path / "results.json"
    if path.suffix == ".json":
        return json.loads(path.read_text())
    with open(path, newline="") as f:
        return [{k: _parse_cell(k, v) for k, v in row.items()} for row in csv.DictReader(f)]
