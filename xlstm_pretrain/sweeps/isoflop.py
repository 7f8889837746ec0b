"""IsoFLOP analysis (Chinchilla's approach 2), from the equations.

For each compute budget C, the final losses of the runs of that budget are fitted by a parabola in
x = ln N, L(x) = c2 x^2 + c1 x + c0; its vertex x* = -c1 / (2 c2) gives the compute-optimal size N_opt(C).
The same points fitted against ln D give D_opt(C) (both directly: our FLOPs per token are not 6N, so D is
not C / 6N). Then ln N_opt = a ln C + ln k_N and ln D_opt = b ln C + ln k_D by least squares over the
budgets: N_opt = k_N C^a, D_opt = k_D C^b.

A vertex outside the sampled sizes is an extrapolation (the grid missed the optimum); such budgets are
reported but left out of the power laws. Confidence intervals: a bootstrap that resamples the runs within
each budget (with replacement) and redoes every fit.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Parabola:
    c2: float
    c1: float
    c0: float

    def __call__(self, x):
        return self.c2 * np.square(x) + self.c1 * np.asarray(x) + self.c0

    @property
    def vertex(self) -> float | None:
        """x at the minimum; None when the parabola opens downwards (no minimum)."""
        return -self.c1 / (2 * self.c2) if self.c2 > 0 else None


def fit_parabola(x: np.ndarray, y: np.ndarray) -> Parabola | None:
    """Least-squares parabola; None with fewer than 3 distinct x."""
    if len(np.unique(x)) < 3:
        return None
    return Parabola(*np.polyfit(x, y, 2))


@dataclass
class BudgetFit:
    budget: float
    n_points: int
    vs_params: Parabola | None  # loss against ln N
    vs_tokens: Parabola | None  # loss against ln D
    n_opt: float | None
    d_opt: float | None
    loss_opt: float | None
    interior: bool  # both vertices inside the sampled ranges

    def to_json(self) -> dict:
        as_list = lambda p: None if p is None else [p.c2, p.c1, p.c0]  # noqa: E731
        return {"budget": self.budget, "n_points": self.n_points, "n_opt": self.n_opt, "d_opt": self.d_opt,
                "loss_opt": self.loss_opt, "interior": self.interior,
                "parabola_vs_ln_params": as_list(self.vs_params), "parabola_vs_ln_tokens": as_list(self.vs_tokens)}


def fit_budget(budget: float, n: np.ndarray, d: np.ndarray, loss: np.ndarray) -> BudgetFit:
    ln_n, ln_d = np.log(n), np.log(d)
    pn, pd = fit_parabola(ln_n, loss), fit_parabola(ln_d, loss)
    xn = None if pn is None else pn.vertex
    xd = None if pd is None else pd.vertex
    if xn is None or xd is None:
        return BudgetFit(budget, len(n), pn, pd, None, None, None, False)
    interior = bool(ln_n.min() <= xn <= ln_n.max() and ln_d.min() <= xd <= ln_d.max())
    return BudgetFit(budget, len(n), pn, pd, float(np.exp(xn)), float(np.exp(xd)), float(pn(xn)), interior)


@dataclass
class PowerLaw:
    """y = coefficient * C ** exponent (least squares in log-log)."""

    exponent: float
    coefficient: float
    exponent_ci: tuple[float, float] | None = None
    coefficient_ci: tuple[float, float] | None = None

    def __call__(self, c):
        return self.coefficient * np.power(c, self.exponent)

    def to_json(self) -> dict:
        return {"exponent": self.exponent, "coefficient": self.coefficient,
                "exponent_ci": self.exponent_ci, "coefficient_ci": self.coefficient_ci}


def fit_power_law(c: np.ndarray, y: np.ndarray) -> PowerLaw | None:
    if len(np.unique(c)) < 2:
        return None
    slope, intercept = np.polyfit(np.log(c), np.log(y), 1)
    return PowerLaw(float(slope), float(np.exp(intercept)))


@dataclass
class IsoFlopFit:
    budgets: list[BudgetFit]
    n_opt: PowerLaw | None  # N_opt(C)
    d_opt: PowerLaw | None  # D_opt(C)
    bootstrap: int = 0
    confidence: float = 0.95
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return {"budgets": [b.to_json() for b in self.budgets],
                "n_opt_law": None if self.n_opt is None else self.n_opt.to_json(),
                "d_opt_law": None if self.d_opt is None else self.d_opt.to_json(),
                "bootstrap": self.bootstrap, "confidence": self.confidence, "notes": self.notes}


def _laws(fits: list[BudgetFit]) -> tuple[PowerLaw | None, PowerLaw | None]:
    good = [f for f in fits if f.interior]
    if len(good) < 2:
        return None, None
    c = np.array([f.budget for f in good])
    return (fit_power_law(c, np.array([f.n_opt for f in good])),
            fit_power_law(c, np.array([f.d_opt for f in good])))


def _groups(budget, n, d, loss) -> dict[float, np.ndarray]:
    budget = np.asarray(budget, dtype=float)
    return {float(b): np.flatnonzero(budget == b) for b in np.unique(budget)}


def fit_isoflop(budget, n, d, loss, bootstrap: int = 200, confidence: float = 0.95, seed: int = 0) -> IsoFlopFit:
    """Per-budget parabolas, then the power laws N_opt(C), D_opt(C) with bootstrap intervals.

    ``budget``: each run's nominal compute (runs of one budget share the value); ``n``, ``d``, ``loss``:
    its parameters, tokens and final validation loss.
    """
    n, d, loss = (np.asarray(v, dtype=float) for v in (n, d, loss))
    groups = _groups(budget, n, d, loss)
    fits = [fit_budget(b, n[i], d[i], loss[i]) for b, i in groups.items()]
    notes = [f"budget {f.budget:.3g}: optimum outside the sampled sizes (extrapolated), not used in the power laws"
             for f in fits if f.n_opt is not None and not f.interior]
    notes += [f"budget {f.budget:.3g}: no minimum (fewer than 3 sizes, or loss not convex in ln N)"
              for f in fits if f.n_opt is None]
    law_n, law_d = _laws(fits)
    result = IsoFlopFit(fits, law_n, law_d, 0, confidence, notes)
    if law_n is None or bootstrap <= 0:
        return result

    rng = np.random.default_rng(seed)
    samples = []
    for _ in range(bootstrap):
        refits = []
        for b, idx in groups.items():
            pick = rng.choice(idx, size=len(idx), replace=True)
            refits.append(fit_budget(b, n[pick], d[pick], loss[pick]))
        ln, ld = _laws(refits)
        if ln is not None:
            samples.append((ln.exponent, ln.coefficient, ld.exponent, ld.coefficient))
    if len(samples) >= max(10, bootstrap // 4):
        s = np.array(samples)
        q = 100 * np.array([(1 - confidence) / 2, (1 + confidence) / 2])
        ci = [tuple(float(v) for v in np.percentile(s[:, j], q)) for j in range(4)]
        law_n.exponent_ci, law_n.coefficient_ci, law_d.exponent_ci, law_d.coefficient_ci = ci
        result.bootstrap = len(samples)
    else:
        result.notes.append(f"bootstrap: only {len(samples)} of {bootstrap} resamples gave two usable budgets; "
                            "no intervals")
    return result
