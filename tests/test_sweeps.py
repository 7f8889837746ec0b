"""Scaling-law sweeps (xlstm_pretrain/sweeps, tools/sweep.py).

- the shape rule reproduces the paper's size table; the LR table and grids do what the YAML says;
- both fits recover a known law L(N, D) = E + A/N^alpha + B/D^beta from noisy synthetic losses, and the
  bootstrap intervals contain the truth;
- generate -> run (the real trainer, 3 tiny runs) -> collect gives one row per (run, evaluation) with the
  FLOPs of an independent count;
- the compute plan of the paper's 300B-token run configs matches a hand count (xLSTM[7:1] 125M at 300e9
  tokens through tools/flops.py is in test_flops.py::test_cli_help_one_config_and_table);
- plot writes valid PNGs; the SLURM script is valid bash with one array task per pending run.
"""

import json
import math
import subprocess
from pathlib import Path

import numpy as np
import pytest
import yaml

from train_utils import PYTHON, REPO, output, prepare_data
from xlstm_pretrain.config import load
from xlstm_pretrain.flops import training_flops
from xlstm_pretrain.model import ModelConfig, count_params
from xlstm_pretrain.sweeps.collect import read_table, write_table
from xlstm_pretrain.sweeps.fit import fit_table, predict_runs
from xlstm_pretrain.sweeps.grid import expand, read_manifest
from xlstm_pretrain.sweeps.isoflop import fit_isoflop
from xlstm_pretrain.sweeps.launch import SlurmOptions, write_slurm
from xlstm_pretrain.sweeps.lr_rules import peak_lr
from xlstm_pretrain.sweeps.parametric import fit_parametric
from xlstm_pretrain.sweeps.plot import FIGURES, plot_all
from xlstm_pretrain.sweeps.shapes import Shape, param_counts, shape_for_params, shape_for_width
from xlstm_pretrain.sweeps.spec import LRSpec, ShapeSpec, load_sweep
from xlstm_pretrain.train import setup

SWEEP_CLI = str(REPO / "tools" / "sweep.py")
# a Chinchilla-like law (E, A, B, alpha, beta); compute C = 6 N D so that the optimum is exact:
# N_opt = G (C/6)^(beta/(alpha+beta)), D_opt = (C/6) / N_opt
TRUTH = dict(E=1.69, A=406.4, B=410.7, alpha=0.34, beta=0.28)
A_TRUE = TRUTH["beta"] / (TRUTH["alpha"] + TRUTH["beta"])


def law(n, d, E, A, B, alpha, beta):
    return E + A / np.power(n, alpha) + B / np.power(d, beta)


def synthetic_isoflop(noise=0.003, seed=1, budgets=np.logspace(18, 21, 6), ratios=np.geomspace(2, 300, 9)):
    """Per budget, sizes at fixed tokens-per-parameter ratios (as a real sweep lays them out, not centred
    on the unknown optimum), losses from the law with multiplicative log-normal noise."""
    rng = np.random.default_rng(seed)
    c = np.repeat(budgets, len(ratios))
    n = np.sqrt(c / (6 * np.tile(ratios, len(budgets))))
    d = c / (6 * n)
    return c, n, d, law(n, d, **TRUTH) * np.exp(rng.normal(0, noise, len(n)))


def run_cli(*args, timeout=300):
    return subprocess.run([PYTHON, SWEEP_CLI, *map(str, args)], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout)


# ---- shapes, LR, grids ----------------------------------------------------------------------------


def test_shape_rule_reproduces_the_paper_table():
    base = load(REPO / "configs" / "model" / "xlstm_7_1_125m.yaml").model
    seven_one = ShapeSpec(family="paper", slstm_fraction=0.125)
    expected = {768: (24, [3, 20]), 1024: (48, [3, 5, 7, 40, 42, 44]), 1536: (48, [3, 5, 7, 40, 42, 44]),
                2048: (48, [3, 5, 7, 40, 42, 44])}
    for d, (blocks, slstm) in expected.items():
        shape = shape_for_width(d, seven_one, base)
        assert (shape.num_blocks, shape.num_heads, list(shape.slstm_at)) == (blocks, 4, slstm), d
    assert shape_for_width(2560, ShapeSpec(), base).num_blocks == 64
    # between and beyond the table: log-log interpolation, constant d / blocks outside; d a multiple of 64
    assert 24 < shape_for_width(896, ShapeSpec(), base).num_blocks < 48
    small = shape_for_width(250, ShapeSpec(), base)
    assert (small.embedding_dim, small.num_blocks) == (256, 8)
    assert shape_for_width(512, seven_one, base).slstm_at == (3, 12)
    assert shape_for_width(256, seven_one, base).slstm_at == (3,)  # as the quickstart's 8 blocks
    # 125M at the paper's parameter count (xlstm_pretrain/REFERENCE.md §3), found by parameter target
    shape = shape_for_params(125e6, seven_one, base)
    assert (shape.embedding_dim, shape.num_blocks) == (768, 24)
    cfg = ModelConfig(**{**base.__dict__, "slstm_at": list(shape.slstm_at)})
    assert round(count_params(cfg) / 1e6, 1) == 163.7
    # the fast count the sweeps use (one block per kind) is the full model's
    assert param_counts(cfg) == (count_params(cfg), count_params(cfg, exclude_embedding=True))
    # heads are lowered until they divide the head-sharded dims
    large = ShapeSpec(family="large", anchors="large", width_multiple=8)
    assert shape_for_width(1024, large, ModelConfig(family="large")) == Shape(1024, 8, 8)  # the 7B's d / blocks
    odd = shape_for_width(72, large, ModelConfig(family="large"))  # qk dim 36: 8 heads do not divide it
    assert (odd.embedding_dim, odd.num_blocks, odd.num_heads) == (72, 1, 6)


def test_lr_rules():
    table = LRSpec(rule="table", table="paper_300b")
    assert peak_lr(163.8e6, table) == pytest.approx(1.5e-3)
    assert peak_lr(1422.6e6, table) == pytest.approx(5e-4)
    assert peak_lr(10e6, table) == pytest.approx(1.5e-3)  # clamped at the ends
    mid = peak_lr(math.sqrt(409.3e6 * 840.4e6), table)  # log-midpoint -> geometric mean of the LRs
    assert mid == pytest.approx(math.sqrt(7.5e-4 * 6.25e-4))
    power = LRSpec(rule="power", value=3e-3, params_ref=1e6, exponent=0.5)
    assert peak_lr(4e6, power) == pytest.approx(1.5e-3)


def test_paper_sweep_grid_points():
    spec = load_sweep(REPO / "configs" / "sweeps" / "paper_isoflop.yaml")
    points, dropped = expand(spec)
    assert points and all(p.tokens == p.steps * p.global_batch_size * p.seq_len for p in points)
    step_flops = {p.name: p.training_flops_per_token * p.global_batch_size * p.seq_len for p in points}
    for p in points:
        assert p.embedding_dim % 64 == 0 and p.steps >= spec.schedule.min_steps
        if p.kind == "isoflop":  # whole steps: within half a step of the budget
            assert abs(p.flops - p.budget) <= 0.5 * step_flops[p.name] + 1
            lo, hi = next(g.tokens_per_param for g in spec.grids if g.name == p.grid)
            assert lo <= p.tokens / p.params_non_embedding <= hi
        else:
            assert p.tokens == pytest.approx(p.tokens_per_param_target * p.params_non_embedding,
                                             abs=p.global_batch_size * p.seq_len)
        assert p.warmup_steps == min(750, round(spec.schedule.warmup_fraction * p.steps))
    assert {p.kind for p in points} == {"isoflop", "tokens"}


# ---- fits ---------------------------------------------------------------------------------------


def test_isoflop_fit_recovers_the_optimal_allocation():
    c, n, d, loss = synthetic_isoflop()
    fit = fit_isoflop(c, n, d, loss, bootstrap=200)
    assert all(b.interior for b in fit.budgets) and not fit.notes
    assert fit.n_opt.exponent == pytest.approx(A_TRUE, abs=0.01)
    assert fit.d_opt.exponent == pytest.approx(1 - A_TRUE, abs=0.01)
    lo, hi = fit.n_opt.exponent_ci
    assert lo < fit.n_opt.exponent < hi and hi - lo < 0.05
    # each budget's optimum against the exact one
    g = (TRUTH["alpha"] * TRUTH["A"] / (TRUTH["beta"] * TRUTH["B"])) ** (1 / (TRUTH["alpha"] + TRUTH["beta"]))
    for b in fit.budgets:
        n_true = g * (b.budget / 6) ** A_TRUE
        assert b.n_opt == pytest.approx(n_true, rel=0.15)
        assert b.n_opt * b.d_opt == pytest.approx(b.budget / 6, rel=0.02)  # C = 6 N D holds at the vertex


def test_parametric_fit_recovers_the_law_despite_an_outlier():
    c, n, d, loss = synthetic_isoflop()
    loss[7] *= 1.3  # one broken run: the Huber loss on ln L keeps it from dragging the fit
    fit = fit_parametric(n, d, loss, bootstrap=100)
    assert fit.E == pytest.approx(TRUTH["E"], abs=0.05)
    assert fit.alpha == pytest.approx(TRUTH["alpha"], abs=0.02)
    assert fit.beta == pytest.approx(TRUTH["beta"], abs=0.02)
    a, b = fit.allocation_exponents
    assert a == pytest.approx(A_TRUE, abs=0.01) and b == pytest.approx(1 - A_TRUE, abs=0.01)
    truth = {**TRUTH, "a": A_TRUE, "b": 1 - A_TRUE}
    assert fit.bootstrap >= 95
    for key in ("E", "A", "B", "alpha", "beta", "a", "b"):
        lo, hi = fit.ci[key]
        assert lo <= truth[key] <= hi, (key, fit.ci[key], truth[key])
    # the optimum at a budget, from the fit and from the truth (C = 6 N D)
    n_opt, d_opt, _ = fit.optimal(1e22, 6.0)
    g = (TRUTH["alpha"] * TRUTH["A"] / (TRUTH["beta"] * TRUTH["B"])) ** (1 / (TRUTH["alpha"] + TRUTH["beta"]))
    assert n_opt == pytest.approx(g * (1e22 / 6) ** A_TRUE, rel=0.25)


# ---- generate -> run -> collect, with the real trainer ---------------------------------------------


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return prepare_data(tmp_path_factory.getbasetemp() / "train_data")  # shared with the trainer tests


def test_generate_run_collect_round_trip(data, tmp_path):
    """Three tiny runs (one IsoFLOP budget, three widths) through the CLI; the trainer evaluates at FLOP
    milestones and at the end; the table has exactly those rows with FLOPs = 3 x forward x tokens."""
    sweep = {
        "name": "roundtrip", "output_dir": str(tmp_path / "sweep"),
        "base": {"overrides": [
            "model.vocab_size=512", "model.chunk_size=16", "model.context_length=32", "data.seq_len=32",
            f"data.train=[{{path: {data['tokens']}}}]", f"data.validation=[{{path: {data['tokens']}, split: val}}]",
            "data.num_workers=0", "data.pin_memory=false", f"train.tokenizer={data['tokenizer']}",
            "train.precision=fp32", "train.global_batch_size=8", "train.micro_batch_size=8",
            "logging.wandb=disabled", "logging.gate_telemetry=false", "logging.interval=1",
            "checkpoint.interval=0", "checkpoint.save_final=false",
            "eval.interval=0", "eval.flop_milestones_per_decade=4", "eval.samples=8"]},
        "shape": {"family": "paper", "width_multiple": 16, "slstm_fraction": 0.5},
        "lr": {"rule": "constant", "value": 3e-3},
        "schedule": {"warmup_fraction": 0.2, "min_steps": 2},
        "grids": [{"name": "iso", "kind": "isoflop", "budgets": [3e8], "widths": [16, 32, 48]}],
    }
    spec_file = tmp_path / "tiny.yaml"
    spec_file.write_text(yaml.safe_dump(sweep))
    gen = run_cli("generate", spec_file)
    assert gen.returncode == 0, output(gen)
    manifest, points = read_manifest(tmp_path / "sweep")
    assert len(points) == 3 and all(2 <= p.steps <= 20 for p in points), [p.steps for p in points]

    run = run_cli("run", spec_file, "--jobs", "2")
    assert run.returncode == 0, output(run) + "".join(Path(p).read_text()[-3000:] for p in
                                                     (tmp_path / "sweep" / "logs").glob("*.log"))
    again = run_cli("run", spec_file)  # finished runs are skipped
    assert again.returncode == 0 and again.stdout.count("done already") == 3, output(again)

    col = run_cli("collect", spec_file)
    assert col.returncode == 0, output(col)
    table = read_table(tmp_path / "sweep" / "results.csv")
    assert table == read_table(tmp_path / "sweep" / "results.json")  # the CSV reads back to the same values
    for p in points:
        metrics = [json.loads(line) for line in (Path(p.run_dir) / "metrics.jsonl").read_text().splitlines()]
        vals = [m for m in metrics if m["kind"] == "val"]
        rows = [r for r in table if r["run"] == p.name]
        assert [r["step"] for r in rows] == [v["step"] for v in vals] and len(rows) >= 2  # milestones + end
        assert [r["final"] for r in rows] == [False] * (len(rows) - 1) + [True]
        assert rows[-1]["step"] == p.steps
        cfg = load(Path(p.run_dir) / "config.yaml").model  # what the trainer ran, counted without the sweep code
        assert count_params(cfg, exclude_embedding=True) == rows[0]["params_non_embedding"]
        for r in rows:
            assert r["tokens"] == r["step"] * 8 * 32
            assert r["flops"] == pytest.approx(training_flops(cfg, 32, r["tokens"]), rel=1e-12)
            assert r["val_loss"] == pytest.approx(next(v["val_loss"] for v in vals if v["step"] == r["step"]))
    assert sum(r["final"] for r in table) == 3

    # three finished runs: the IsoFLOP parabola has its three points; plots work with partial fits
    fit = fit_table(table, bootstrap=0)
    assert fit["isoflop"]["budgets"][0]["n_points"] == 3 and "skipped" in fit["parametric"]
    assert [p.name for p in plot_all(table, fit, tmp_path / "figures")] == list(FIGURES)


# ---- the compute plan of the paper's 300B-token runs -----------------------------------------------


PLAN_300B = {  # run config -> (d, blocks, sLSTM positions, steps, batch) as in the paper (App. B.3)
    **{f"xlstm_{k}_{s}_300b.yaml": (d, b, p, 600_000, 256)
       for s, d, b in (("125m", 768, 24), ("350m", 1024, 48), ("760m", 1536, 48))
       for k, p in (("1_0", []), ("7_1", [3, 20] if s == "125m" else [3, 5, 7, 40, 42, 44]))},
    "xlstm_1_0_1_3b_300b.yaml": (2048, 48, [], 300_000, 512),
    "xlstm_7_1_1_3b_300b.yaml": (2048, 48, [3, 5, 7, 40, 42, 44], 300_000, 512),
}


def test_300b_run_configs_compute_plan():
    files = sorted(PLAN_300B)
    assert sorted(p.name for p in (REPO / "configs" / "runs").glob("*_300b.yaml")) == files
    plan = predict_runs({"params_column": "params_non_embedding"}, [REPO / "configs" / "runs" / f for f in files])
    for f, row in zip(files, plan):
        d, blocks, slstm_at, steps, batch = PLAN_300B[f]
        model = setup.load_run_config([REPO / "configs" / "runs" / f]).model
        assert (model.embedding_dim, model.num_blocks, list(model.slstm_at)) == (d, blocks, slstm_at), f
        tokens = steps * batch * 2048
        assert row["tokens"] == tokens
        # C of the plan is the FLOP module's count (checked against FlopCounterMode in tests/test_flops.py)
        assert row["flops"] == pytest.approx(training_flops(model, 2048, tokens), rel=1e-9), f


def test_run_plans_count_the_batch_rampup():
    """The 7B recipe's ramp-up (128, 256 for 2000 steps each, then 512) enters D and C; a sweep base refuses one."""
    from xlstm_pretrain.config_loader import ConfigError
    from xlstm_pretrain.sweeps.grid import load_base
    from xlstm_pretrain.train.config import BatchRampStage

    (row,) = predict_runs({"params_column": "params_non_embedding"},
                          [REPO / "configs" / "runs" / "xlstm_large_7b.yaml"])
    assert row["tokens"] == (128 * 2000 + 256 * 2000 + 512 * 546_000) * 8192
    spec = load_sweep(REPO / "configs" / "sweeps" / "micro_cpu.yaml")
    base = load_base(spec)
    base.train.batch_size_rampup = [BatchRampStage(global_batch_size=16, steps=10)]
    with pytest.raises(ConfigError, match="sweep base sets train.batch_size_rampup"):
        expand(spec, base)


# ---- figures, SLURM, CLI --------------------------------------------------------------------------


def synthetic_table(seed=2):
    """A collected table without running anything: IsoFLOP runs with evaluations along each run."""
    c, n, d, loss = synthetic_isoflop(seed=seed, budgets=np.logspace(18, 20, 3), ratios=np.geomspace(3, 200, 5))
    table = []
    for j, (budget, n_j, d_j, l_j) in enumerate(zip(c, n, d, loss)):
        for frac in (0.1, 0.3, 0.6, 1.0):
            tokens = frac * d_j
            table.append({"run": f"run{j}", "grid": "iso", "kind": "isoflop", "budget": budget,
                          "params_non_embedding": n_j, "params": 1.2 * n_j, "tokens": tokens,
                          "flops": 6 * n_j * tokens, "step": int(frac * 100),
                          "val_loss": l_j if frac == 1 else float(law(n_j, tokens, **TRUTH)) * 1.02,
                          "final": frac == 1.0})
    return table


def test_plot_writes_the_figures(tmp_path):
    table = synthetic_table()
    write_table(table, tmp_path / "results")
    proc = run_cli("fit", tmp_path / "results.json", "--bootstrap", "20", timeout=120)
    assert proc.returncode == 0, output(proc)
    fit = json.loads((tmp_path / "fit.json").read_text())  # written beside the table, read by `plot`
    assert fit["flops_per_param_token"] == pytest.approx(6.0)
    assert fit == json.loads(json.dumps(fit_table(table, bootstrap=20)))  # the CLI adds nothing of its own
    proc = run_cli("plot", tmp_path / "results.json", timeout=120)
    assert proc.returncode == 0, output(proc)
    from matplotlib.image import imread

    for name in FIGURES:
        png = tmp_path / "figures" / name
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
        height, width, _ = imread(png).shape
        assert width > 600 and height > 300


def test_slurm_script(tmp_path):
    spec = load_sweep(REPO / "configs" / "sweeps" / "micro_cpu.yaml", [f"output_dir={tmp_path}"])
    points, _ = expand(spec)
    script = write_slurm(points[:5], "micro", tmp_path, SlurmOptions(nodes=2, gpus_per_node=4, partition="gpu",
                                                                     max_parallel=2),
                         extra_configs=["configs/layout/dp_zero1.yaml"], overrides=["train.device=cuda"])
    text = script.read_text()
    assert "#SBATCH --array=0-4%2" in text and "#SBATCH --nodes=2" in text and "#SBATCH --partition=gpu" in text
    assert "srun --kill-on-bad-exit=1 torchrun" in text and "--nproc_per_node 4" in text
    assert '--config "$CONFIG" --config configs/layout/dp_zero1.yaml --resume auto train.device=cuda' in text
    assert (tmp_path / "slurm" / "configs.txt").read_text().splitlines() == [str(Path(p.config).resolve())
                                                                              for p in points[:5]]
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
