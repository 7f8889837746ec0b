"""launch/quickstart.sh with extra arguments for a short run (`bash launch/quickstart.sh train.steps=20`): the
warm-up that no longer fits is shortened with a note, and the final report does not fail a run that was
made too short to beat the unigram baseline. The pieces are tested, not the 5-minute quickstart itself."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from train_utils import REPO

from xlstm_pretrain.config import ConfigError
from xlstm_pretrain.train.config import OptimConfig, check_run, fit_schedule_to_run
from xlstm_pretrain.train.setup import load_run_config

QUICKSTART = REPO / "launch" / "quickstart.sh"


def quickstart_fixed_overrides() -> list[str]:
    """The overrides the quickstart passes to the trainer before the user's own ("$@", which win)."""
    line = re.search(r'--resume none (.*?)"\$@"', QUICKSTART.read_text()).group(1)
    return line.split()


def test_quickstart_with_20_steps_gets_a_shortened_warmup_and_a_note(capsys, monkeypatch):
    monkeypatch.setenv("RANK", "0")
    cfg = load_run_config([REPO / "configs" / "quickstart.yaml"], [*quickstart_fixed_overrides(), "train.steps=20"])
    assert cfg.optim.warmup_steps == 25
    check_run(cfg, world_size=2)
    assert cfg.optim.warmup_steps == 10  # half of the run
    assert "note: optim.warmup_steps + optim.cooldown_steps = 25 + 0 exceed train.steps=20: shortened to 10 + 0" \
        in capsys.readouterr().err


def test_the_quickstart_as_configured_keeps_its_warmup():
    cfg = load_run_config([REPO / "configs" / "quickstart.yaml"], quickstart_fixed_overrides())
    check_run(cfg, world_size=2)
    assert (cfg.optim.warmup_steps, cfg.train.steps) == (25, 250)


def test_without_fit_short_runs_a_too_long_warmup_is_a_clear_config_error():
    with pytest.raises(ConfigError, match=r"25 \+ 0 exceed train.steps=20 .*optim.fit_short_runs=true"):
        fit_schedule_to_run(OptimConfig(warmup_steps=25), 20)


@pytest.mark.parametrize("warmup, cooldown, steps, fitted", [
    (25, 0, 20, (10, 0)),
    (30, 10, 20, (7, 2)),  # half the run, in the ratio 3 : 1
    (100, 1, 10, (4, 1)),  # a cool-down (wsd's decay phase) keeps at least one step
    (25, 0, 1, (0, 0)),
])
def test_fit_short_runs_shortens_warmup_and_cooldown_into_half_the_run(warmup, cooldown, steps, fitted):
    optim = OptimConfig(warmup_steps=warmup, cooldown_steps=cooldown, fit_short_runs=True)
    assert fit_schedule_to_run(optim, steps).endswith(f"shortened to {fitted[0]} + {fitted[1]} (optim.fit_short_runs)")
    assert (optim.warmup_steps, optim.cooldown_steps) == fitted
    assert sum(fitted) <= steps


def test_a_warmup_that_fits_is_left_alone():
    optim = OptimConfig(warmup_steps=25, cooldown_steps=5, fit_short_runs=True)
    assert fit_schedule_to_run(optim, 30) is None
    assert (optim.warmup_steps, optim.cooldown_steps) == (25, 5)


def run_final_report(tmp_path, margin: float, n_args: int) -> subprocess.CompletedProcess:
    """The quickstart's closing Python step (its heredoc) on a made-up eval.json / summary.json."""
    report = re.search(r"<<'PY'\n(.*?)\nPY\n", QUICKSTART.read_text(), re.S).group(1)
    (tmp_path / "train").mkdir(exist_ok=True)
    (tmp_path / "eval.json").write_text(json.dumps(
        {"val_loss": 5.0, "val_ppl": 148.4, "tokens": 1000, "unigram_loss": 5.0 + margin}))
    (tmp_path / "train" / "summary.json").write_text(json.dumps(
        {"metrics": "m.jsonl", "plot": "loss.png", "checkpoint": "ckpt"}))
    return subprocess.run([sys.executable, "-", str(tmp_path), "61", str(n_args)], input=report, text=True,
                          capture_output=True, timeout=60)


def test_the_final_report_judges_only_the_run_as_configured(tmp_path):
    short = run_final_report(tmp_path, margin=0.3, n_args=1)  # bash launch/quickstart.sh train.steps=20
    assert short.returncode == 0, short.stderr
    assert "0.30 nats below it" in short.stdout and "checked only for the run as configured" in short.stdout
    full = run_final_report(tmp_path, margin=0.3, n_args=0)
    assert full.returncode == 1 and "not well below the unigram baseline" in full.stderr
