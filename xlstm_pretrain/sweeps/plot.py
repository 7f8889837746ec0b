"""Figures of a sweep (matplotlib, Agg backend: no display needed):

- ``loss_vs_flops.png``: validation loss against training FLOPs, one line per run coloured by model size,
  with the IsoFLOP minima and the parametric fit's compute-optimal frontier L_opt(C);
- ``isoflop_curves.png``: final loss against N and against D for each budget, the fitted parabolas and
  their minima;
- ``frontier.png``: compute-optimal N and D against C: the IsoFLOP minima, their power laws and the
  parametric fit's allocation.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from .fit import final_rows, parametric_from_json

FIGURES = ("loss_vs_flops.png", "isoflop_curves.png", "frontier.png")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _runs(table: list[dict]) -> dict[str, list[dict]]:
    runs: dict[str, list[dict]] = {}
    for r in table:
        runs.setdefault(r["run"], []).append(r)
    return {k: sorted(v, key=lambda r: r["flops"]) for k, v in runs.items()}


def _label_1_2_5(axis) -> None:
    """Log-axis labels at 1, 2 and 5 x 10^k in engineering notation (20k, 500k, 2M): an axis spanning less
    than a decade otherwise labels every minor tick and the labels run into each other."""
    from matplotlib.ticker import EngFormatter, FuncFormatter

    eng = EngFormatter(sep="")

    def label(value, _pos):
        if value <= 0:
            return ""
        lead = round(value / 10 ** math.floor(math.log10(value) + 1e-9))
        return eng(value) if lead in (1, 2, 5) else ""

    axis.set_major_formatter(FuncFormatter(label))
    axis.set_minor_formatter(FuncFormatter(label))


def _budget_colors(budgets):
    plt = _pyplot()
    cmap = plt.get_cmap("plasma")
    budgets = sorted(budgets)
    return {b: cmap(0.85 * j / max(len(budgets) - 1, 1)) for j, b in enumerate(budgets)}


def plot_loss_vs_flops(table: list[dict], fit: dict | None, path: Path, params_column: str) -> Path:
    plt = _pyplot()
    from matplotlib.colors import LogNorm

    fig, ax = plt.subplots(figsize=(8, 5.5))
    runs = _runs(table)
    sizes = [rows[0][params_column] for rows in runs.values()]
    norm = LogNorm(min(sizes), max(sizes) * (1.0001 if min(sizes) == max(sizes) else 1))
    cmap = plt.get_cmap("viridis")
    for rows in runs.values():
        color = cmap(norm(rows[0][params_column]))
        ax.plot([r["flops"] for r in rows], [r["val_loss"] for r in rows], color=color, lw=1.2, alpha=0.85)
        ends = [r for r in rows if r.get("final")]
        ax.scatter([r["flops"] for r in ends], [r["val_loss"] for r in ends], color=color, s=14, zorder=3)
    sm = plt.cm.ScalarMappable(norm=norm, cmap=cmap)
    fig.colorbar(sm, ax=ax, label=f"N ({params_column})")
    if fit:
        minima = [b for b in fit.get("isoflop", {}).get("budgets", []) if b.get("n_opt") and b["interior"]]
        if minima:
            ax.scatter([b["budget"] for b in minima], [b["loss_opt"] for b in minima], marker="*", s=120,
                       color="black", zorder=4, label="IsoFLOP minima")
        param = parametric_from_json(fit)
        if param is not None:  # over the compute range of the runs it was fitted on (their final points)
            flops = np.array([r["flops"] for r in final_rows(table)])
            c = np.logspace(np.log10(flops.min() / 2), np.log10(flops.max() * 1.5), 100)
            ax.plot(c, param.optimal(c, fit["flops_per_param_token"])[2], "k--", lw=1.5,
                    label="parametric fit: compute-optimal loss")
        if minima or param is not None:
            ax.legend()
    ax.set_xscale("log")
    ax.set_xlabel("training FLOPs")
    ax.set_ylabel("validation loss (nats/token)")
    ax.set_title("validation loss against compute, one line per run")
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_isoflop_curves(table: list[dict], fit: dict | None, path: Path, params_column: str) -> Path:
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(12, 5))
    rows = [r for r in final_rows(table) if r.get("kind") == "isoflop" and r.get("budget")]
    budgets = sorted({r["budget"] for r in rows})
    colors = _budget_colors(budgets)
    fits = {b["budget"]: b for b in (fit or {}).get("isoflop", {}).get("budgets", [])}
    for ax, column, key, opt, label in ((axes[0], params_column, "parabola_vs_ln_params", "n_opt", "N"),
                                        (axes[1], "tokens", "parabola_vs_ln_tokens", "d_opt", "D (tokens)")):
        for b in budgets:
            pts = sorted((r[column], r["val_loss"]) for r in rows if r["budget"] == b)
            x, y = np.array(pts).T
            ax.scatter(x, y, color=colors[b], s=20, label=f"C = {b:.2g}")
            f = fits.get(b)
            if f and f.get(key):
                c2, c1, c0 = f[key]
                lx = np.linspace(np.log(x.min()) - 0.2, np.log(x.max()) + 0.2, 100)
                ax.plot(np.exp(lx), c2 * lx**2 + c1 * lx + c0, color=colors[b], lw=1.2)
                if f.get(opt):
                    ax.scatter([f[opt]], [f["loss_opt"]], marker="*" if f["interior"] else "x", s=110,
                               color=colors[b], edgecolor="black", linewidths=0.5, zorder=4)
        ax.set_xscale("log")
        _label_1_2_5(ax.xaxis)
        ax.set_xlabel(label)
        ax.set_ylabel("final validation loss")
        ax.grid(alpha=0.3, which="both")
    axes[0].set_title("IsoFLOP curves (star: minimum of the parabola)")
    axes[1].set_title("the same runs against tokens")
    if budgets:
        axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_frontier(table: list[dict], fit: dict | None, path: Path, params_column: str) -> Path:
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(12, 5))
    iso = (fit or {}).get("isoflop", {})
    minima = [b for b in iso.get("budgets", []) if b.get("n_opt")]
    flops = [r["flops"] for r in final_rows(table)] + [b["budget"] for b in minima]
    if not flops:
        flops = [r["flops"] for r in table]
    c = np.logspace(np.log10(min(flops)) - 0.3, np.log10(max(flops)) + 0.3, 100)
    param = parametric_from_json(fit) if fit else None
    for ax, opt, law_key, j, label in ((axes[0], "n_opt", "n_opt_law", 0, "N_opt"),
                                       (axes[1], "d_opt", "d_opt_law", 1, "D_opt (tokens)")):
        inside = [b for b in minima if b["interior"]]
        outside = [b for b in minima if not b["interior"]]
        ax.scatter([b["budget"] for b in inside], [b[opt] for b in inside], color="C0", s=40, zorder=3,
                   label="IsoFLOP minima")
        if outside:
            ax.scatter([b["budget"] for b in outside], [b[opt] for b in outside], facecolor="none", edgecolor="C0",
                       s=40, zorder=3, label="minima outside the grid (not fitted)")
        law = iso.get(law_key)
        if law:
            ci = law.get("exponent_ci")
            ci_text = f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else ""
            ax.plot(c, law["coefficient"] * c ** law["exponent"], color="C0",
                    label=f"IsoFLOP power law: exponent {law['exponent']:.3f}{ci_text}")
        if param is not None:
            exponent = param.allocation_exponents[j]
            ci = fit["parametric"].get("ci", {}).get("ab"[j])
            ci_text = f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else ""
            ax.plot(c, param.optimal(c, fit["flops_per_param_token"])[j], "--", color="C3",
                    label=f"parametric fit: exponent {exponent:.3f}{ci_text}")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("training FLOPs C")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    axes[0].set_title("compute-optimal model size")
    axes[1].set_title("compute-optimal training tokens")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_all(table: list[dict], fit: dict | None, out_dir: str | Path,
             params_column: str = "params_non_embedding") -> list[Path]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if not table:
        raise ValueError("the table is empty: nothing to plot")
    return [plot_loss_vs_flops(table, fit, out_dir / FIGURES[0], params_column),
            plot_isoflop_curves(table, fit, out_dir / FIGURES[1], params_column),
            plot_frontier(table, fit, out_dir / FIGURES[2], params_column)]
