"""The run's loss plot (``RUN_DIR/loss.png``): a matplotlib PNG of exactly the logged losses."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from xlstm_pretrain.train.metrics import loss_figure, plot_metrics, read_metrics

TOKENS_PER_STEP, FLOPS_PER_TOKEN = 2048, 6.1e6


def run_rows(steps=250, val_steps=(10, 18, 32, 56, 100, 178, 250)) -> list[dict]:
    """metrics.jsonl rows of a short run: a train row per step (one non-finite loss, logged as null) and
    validation rows at some steps."""
    rng = np.random.default_rng(0)
    rows = []
    for step in range(1, steps + 1):
        tokens = step * TOKENS_PER_STEP
        loss = 3.4 + 4.2 * math.exp(-step / 40) + 0.1 * rng.standard_normal()
        rows.append({"kind": "train", "step": step, "tokens": tokens, "flops": tokens * FLOPS_PER_TOKEN,
                     "loss": None if step == 7 else loss})
        if step in val_steps:
            rows.append({"kind": "val", "step": step, "tokens": tokens, "flops": tokens * FLOPS_PER_TOKEN,
                         "val_loss": 3.5 + 4.0 * math.exp(-step / 40), "reason": "milestone"})
    return rows


def line(fig, label):
    (ax,) = [a for a in fig.axes if a.get_lines()]
    (found,) = [ln for ln in ax.get_lines() if ln.get_label() == label]
    return found


def test_figure_plots_exactly_the_logged_losses():
    rows = run_rows()
    fig = loss_figure(rows)
    train = line(fig, "train loss").get_xydata()
    expected = [(r["tokens"], r["loss"]) for r in rows if r["kind"] == "train" and r["loss"] is not None]
    assert len(expected) == 249 and np.array_equal(train, np.array(expected))  # the null loss is left out
    val = line(fig, "validation loss")
    assert val.get_marker() == "o"  # every validation point is marked
    assert np.array_equal(val.get_xydata(), [(r["tokens"], r["val_loss"]) for r in rows if r["kind"] == "val"])


def test_axes_say_what_and_in_which_units():
    fig = loss_figure(run_rows())
    ax = line(fig, "train loss").axes
    assert ax.get_xlabel() == "training tokens" and ax.get_ylabel() == "loss (nats per token)"
    # the second x axis is the training FLOPs of the same points
    (flops_axis,) = ax.child_axes
    fig.canvas.draw()  # (a secondary axis takes its limits from its parent when drawn)
    assert flops_axis.get_xlabel() == "training FLOPs"
    assert np.allclose(flops_axis.get_xlim(), np.array(ax.get_xlim()) * FLOPS_PER_TOKEN)
    assert ax.get_legend() is not None and {t.get_text() for t in ax.get_legend().get_texts()} == {
        "train loss", "validation loss"}


def test_png_is_written(tmp_path):
    from matplotlib.image import imread

    run = tmp_path / "quickstart"
    run.mkdir()
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in run_rows()))
    out = plot_metrics(run / "metrics.jsonl", run / "loss.png")
    assert out == run / "loss.png" and out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    height, width, _ = imread(out).shape
    assert (width, height) == (960, 600)  # 8 x 5 inches at 120 dpi
    assert read_metrics(run / "metrics.jsonl") == run_rows()


def test_a_run_without_validation_rows_still_plots(tmp_path):
    rows = [r for r in run_rows(steps=5) if r["kind"] == "train"]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert plot_metrics(tmp_path / "metrics.jsonl", tmp_path / "loss.png").stat().st_size > 1000
    assert len(line(loss_figure(rows), "validation loss").get_xydata()) == 0


@pytest.mark.parametrize("rows", [[], [{"kind": "skipped", "step": 1, "loss": None, "grad_norm": None}]])
def test_an_empty_log_gives_an_empty_plot(tmp_path, rows):
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert plot_metrics(tmp_path / "metrics.jsonl", tmp_path / "loss.png").read_bytes()[:4] == b"\x89PNG"
