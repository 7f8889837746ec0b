"""The side-by-side benchmark scripts of this stack measure what they claim: the paper-family train-step
bench runs the official ``xlstm`` model and ours on the same weights (same logits), the CP timeline sees
the all-to-all in the sLSTM layout switch and the send/recv staircase in the relay, and the sLSTM critical-path
mode prints a row per CP degree."""

import argparse
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "tools" / "bench"
sys.path.insert(0, str(BENCH))


def test_paper_train_step_compares_the_same_model():
    pytest.importorskip("xlstm")
    import paper_train_step

    a = argparse.Namespace(d=32, blocks=2, heads=4, vocab=97, B=1, steps=1, chunk=16)
    for stack in paper_train_step.STACKS:
        times, n_ours, n_official, diff = paper_train_step.compare(stack, 32, a)
        assert n_ours == n_official and diff < 1e-4, (stack, n_ours, n_official, diff)
        assert set(times) == {"ours", "official"} and all(t > 0 for t in times.values())


def test_cp_timeline_records_each_layouts_collectives(tmp_path):
    import cp_timeline
    from dist_utils import run_distributed

    layouts = {name: run_distributed(cp_timeline.trace_step, 2, 2, 64, 32, 4, 2, 16, 1, relay)
               for name, relay in (("all-to-all", False), ("relay", True))}
    for name, traces in layouts.items():
        assert len(traces) == 2
        for tr in traces:
            ops = {op for op, s, e in tr["events"]}
            assert tr["start"] <= tr["backward"] <= tr["end"]
            assert all(tr["start"] <= s <= e <= tr["end"] for _, s, e in tr["events"])
            if name == "all-to-all":
                assert "all_to_all" in ops and not ops & {"send", "recv"}, ops
            else:
                assert ops & {"send", "recv"} and "all_to_all" not in ops, ops
    cp_timeline.plot(layouts, tmp_path / "t.png")
    assert (tmp_path / "t.png").stat().st_size > 1000
    assert [r[0] for r in cp_timeline.summarize(layouts["relay"])] == [0, 1]


def test_cp_step_time_critical_path_rows(capsys):
    """The sLSTM critical-path mode prints one row per CP degree, a dash where the heads do not divide."""
    import cp_step_time

    cp_step_time.slstm_critical_path(B=1, S=16, d=16, heads=4, cps=[1, 2, 3], reps=1)
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ") and "ms" in line
            or "do not divide" in line]
    assert [r.split("|")[1].strip() for r in rows] == ["1", "2", "3"], rows
    assert "heads do not divide" in rows[2]
    cp1 = rows[0].split("|")
    assert cp1[4].strip() == "1.00" and cp1[5].strip() == "1.00"
