"""Both scaling-law fits on a collected table, as one JSON-ready dict, and predictions from them.

Only ``final`` rows are (N, D, loss) points: an earlier evaluation of a cosine run is not the loss of a
run planned for that many tokens (its learning rate has not decayed yet). N is the non-embedding parameter
count by default; D the tokens trained; C the run's nominal budget (IsoFLOP) or its training FLOPs.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from .isoflop import fit_isoflop
from .parametric import ParametricFit, fit_parametric


def final_rows(table: list[dict]) -> list[dict]:
    return [r for r in table if r.get("final")]


def flops_per_param_token(rows: list[dict], params_column: str) -> float:
    """k in C = k N D over the runs (the median): 6 for a transformer's 6ND rule; ours is measured per run."""
    return float(np.median([r["flops"] / (r[params_column] * r["tokens"]) for r in rows]))


def fit_table(table: list[dict], params_column: str = "params_non_embedding", bootstrap: int = 200,
              confidence: float = 0.95, seed: int = 0) -> dict:
    rows = final_rows(table)
    if not rows:
        raise ValueError("the table has no final evaluations (no run finished): nothing to fit")
    result = {"params_column": params_column, "runs": len(rows),
              "flops_per_param_token": flops_per_param_token(rows, params_column)}
    iso = [r for r in rows if r.get("kind") == "isoflop" and r.get("budget")]
    if iso:
        fit = fit_isoflop([r["budget"] for r in iso], [r[params_column] for r in iso], [r["tokens"] for r in iso],
                          [r["val_loss"] for r in iso], bootstrap=bootstrap, confidence=confidence, seed=seed)
        result["isoflop"] = fit.to_json()
    else:
        result["isoflop"] = {"skipped": "no finished IsoFLOP runs"}
    if len(rows) >= 5:
        fit = fit_parametric([r[params_column] for r in rows], [r["tokens"] for r in rows],
                             [r["val_loss"] for r in rows], bootstrap=bootstrap, confidence=confidence, seed=seed)
        result["parametric"] = fit.to_json()
    else:
        result["parametric"] = {"skipped": f"{len(rows)} finished runs; the fit needs at least 5"}
    return result


def parametric_from_json(fit: dict) -> ParametricFit | None:
    p = fit.get("parametric", {})
    if "E" not in p:
        return None
    return ParametricFit(p["E"], p["A"], p["B"], p["alpha"], p["beta"], p["objective"], p["n_points"])


def predict_budgets(fit: dict, budgets: list[float]) -> list[dict]:
    """Compute-optimal N, D (and loss) at each budget from both fits (power-law and parametric)."""
    out = []
    law_n, law_d = (fit.get("isoflop", {}).get(k) for k in ("n_opt_law", "d_opt_law"))
    param = parametric_from_json(fit)
    for c in budgets:
        row = {"flops": c}
        if law_n and law_d:
            row["isoflop"] = {"n_opt": law_n["coefficient"] * c ** law_n["exponent"],
                              "d_opt": law_d["coefficient"] * c ** law_d["exponent"]}
        if param is not None:
            n, d, loss = param.optimal(c, fit["flops_per_param_token"])
            row["parametric"] = {"n_opt": float(n), "d_opt": float(d), "loss": float(loss)}
        out.append(row)
    return out


def predict_runs(fit: dict, run_configs: list[str | Path]) -> list[dict]:
    """The parametric fit's loss for planned runs (e.g. configs/runs/*_300b.yaml): N, D and C from each
    config exactly as the trainer will count them, and the compute-optimal N at the same C."""
    from xlstm_pretrain.flops import TRAINING_FLOPS_FACTOR, forward_flops_per_token
    from xlstm_pretrain.train.batch_schedule import BatchSchedule
    from xlstm_pretrain.train.setup import load_run_config

    from .shapes import param_counts

    param = parametric_from_json(fit)
    out = []
    for path in run_configs:
        cfg = load_run_config([path])
        n = param_counts(cfg.model)[1 if fit["params_column"] == "params_non_embedding" else 0]
        d = BatchSchedule.from_config(cfg.train).consumed_samples(cfg.train.steps) * cfg.data.seq_len  # ramp-up too
        c = TRAINING_FLOPS_FACTOR * forward_flops_per_token(cfg.model, cfg.data.seq_len) * d
        row = {"config": str(path), "params": n, "tokens": d, "flops": c}
        if param is not None:
            loss = float(param.predict(n, d))
            n_opt, d_opt, loss_opt = param.optimal(c, fit["flops_per_param_token"])
            row.update(loss=loss, ppl=math.exp(loss), n_opt=float(n_opt), d_opt=float(d_opt), loss_opt=float(loss_opt))
        out.append(row)
    return out


def _ci(ci, fmt: str) -> str:
    return f" [{format(ci[0], fmt)}, {format(ci[1], fmt)}]" if ci else ""


def format_fit(fit: dict) -> str:
    lines = [f"{fit['runs']} finished runs; N = {fit['params_column']}; C = k N D with k = "
             f"{fit['flops_per_param_token']:.3f} (median over runs)"]
    iso = fit["isoflop"]
    if "skipped" in iso:
        lines.append(f"IsoFLOP: skipped ({iso['skipped']})")
    else:
        lines.append(f"IsoFLOP (parabola in ln N and ln D per budget), {iso['confidence']:.0%} bootstrap intervals "
                     f"from {iso['bootstrap']} resamples:")
        for b in iso["budgets"]:
            if b["n_opt"] is None:
                lines.append(f"  C = {b['budget']:.3e}: {b['n_points']} runs, no minimum")
            else:
                where = "" if b["interior"] else "  (outside the sampled sizes: not used)"
                lines.append(f"  C = {b['budget']:.3e}: {b['n_points']} runs, N_opt = {b['n_opt']:.4g}, "
                             f"D_opt = {b['d_opt']:.4g}, loss {b['loss_opt']:.4f}{where}")
        for key, sym in (("n_opt_law", "N_opt"), ("d_opt_law", "D_opt")):
            law = iso[key]
            if law:
                lines.append(f"  {sym} = {law['coefficient']:.4g} * C^{law['exponent']:.4f}"
                             f"{_ci(law['exponent_ci'], '.4f')}")
        lines += [f"  note: {n}" for n in iso["notes"]]
    p = fit["parametric"]
    if "skipped" in p:
        lines.append(f"parametric: skipped ({p['skipped']})")
    else:
        ci = p["ci"]
        lines.append(f"parametric L(N, D) = E + A/N^alpha + B/D^beta (Huber delta {p['huber_delta']:g} on ln L, "
                     f"{p['n_points']} runs), {p['confidence']:.0%} intervals from {p['bootstrap']} resamples:")
        for k in ("E", "A", "B", "alpha", "beta", "a", "b"):
            lines.append(f"  {k:<5} = {p[k]:.4g}{_ci(ci.get(k), '.4g')}")
        lines.append("  (a = beta/(alpha+beta): N_opt ~ C^a; b = alpha/(alpha+beta): D_opt ~ C^b)")
    return "\n".join(lines)
