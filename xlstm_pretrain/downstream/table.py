"""A run's evaluations as a table (tokens, FLOPs, validation loss, per-task accuracy) and accuracy vs FLOPs.

    python -m xlstm_pretrain.downstream.table runs/x/train [--metric acc] [--plot acc_vs_flops.png]

Reads the ``val`` rows of ``metrics.jsonl``; downstream results are their ``downstream/<task>/<metric>``
keys (``eval.tasks`` in the training config). Several runs (``table RUN_A RUN_B ...``) share one plot:
one line per (run, task), against training FLOPs on a log axis, like the paper's scaling figures.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

PREFIX = "downstream/"


def metrics_path(run: str | Path) -> Path:
    p = Path(run)
    return p / "metrics.jsonl" if p.is_dir() else p


def read_val_rows(run: str | Path) -> list[dict]:
    path = metrics_path(run)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no metrics.jsonl (give a run dir or the file)")
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in rows if r.get("kind") == "val"]


def task_columns(rows: list[dict], metric: str | None = None) -> list[str]:
    """The ``<task>/<metric>`` keys present in the rows (without the prefix), in first-seen order;
    only ``metric`` when given."""
    seen: dict[str, None] = {}
    for r in rows:
        for k in r:
            if k.startswith(PREFIX) and (metric is None or k.rsplit("/", 1)[-1] == metric):
                seen[k[len(PREFIX):]] = None
    return list(seen)


def _fmt(value, width: int, spec: str) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-".rjust(width)
    return format(value, spec).rjust(width)


def format_milestone_table(rows: list[dict], metric: str | None = "acc") -> str:
    """One line per evaluation: step, tokens, FLOPs, validation loss, then one column per task metric."""
    columns = task_columns(rows, metric)
    head = ["step", "tokens", "FLOPs", "val_loss", *columns]
    widths = [max(8, len(h)) for h in head]
    lines = ["  ".join(h.rjust(w) for h, w in zip(head, widths))]
    for r in rows:
        cells = [_fmt(r.get("step"), widths[0], "d"), _fmt(r.get("tokens"), widths[1], ",d"),
                 _fmt(r.get("flops"), widths[2], ".3e"), _fmt(r.get("val_loss"), widths[3], ".4f")]
        cells += [_fmt(r.get(PREFIX + c), w, ".4f") for c, w in zip(columns, widths[4:])]
        lines.append("  ".join(cells))
    return "\n".join(lines)


def format_task_table(summary: dict[str, dict[str, float]]) -> str:
    """One line per task, one column per metric (``tasks.summarize`` output)."""
    metrics = list(dict.fromkeys(m for row in summary.values() for m in row))
    name_w = max([4, *map(len, summary)])
    widths = [max(8, len(m)) for m in metrics]
    lines = ["task".ljust(name_w) + "  " + "  ".join(m.rjust(w) for m, w in zip(metrics, widths))]
    for task, row in summary.items():
        lines.append(task.ljust(name_w) + "  " + "  ".join(_fmt(row.get(m), w, ".4f") for m, w in zip(metrics, widths)))
    return "\n".join(lines)


def accuracy_figure(runs: dict[str, list[dict]], metric: str = "acc"):
    """``metric`` of every task against training FLOPs (log scale), one line per (run, task). A matplotlib
    ``Figure`` on the Agg canvas (no display needed)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 5), dpi=120, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for run, rows in runs.items():
        for column in task_columns(rows, metric):
            points = [(r["flops"], r[PREFIX + column]) for r in rows
                      if isinstance(r.get(PREFIX + column), (int, float)) and r.get("flops")]
            if points:
                label = column if len(runs) == 1 else f"{run}: {column}"
                ax.plot(*zip(*points), marker="o", ms=4, label=label)
    ax.set_xscale("log")
    ax.set_xlabel("training FLOPs")
    ax.set_ylabel(metric)
    ax.grid(alpha=0.3, which="both")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    return fig


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m xlstm_pretrain.downstream.table", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", help="run dirs (or metrics.jsonl files)")
    ap.add_argument("--metric", default="acc", help="the task metric to show (default acc; 'all': every metric)")
    ap.add_argument("--plot", type=Path, help="write the metric vs FLOPs plot here (PNG)")
    args = ap.parse_args(argv)
    metric = None if args.metric == "all" else args.metric
    runs = {str(r): read_val_rows(r) for r in args.runs}
    for name, rows in runs.items():
        if len(runs) > 1:
            print(f"== {name}")
        print(format_milestone_table(rows, metric))
    if args.plot:
        accuracy_figure(runs, args.metric if metric else "acc").savefig(args.plot, format="png")
        print(f"plot: {args.plot}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
