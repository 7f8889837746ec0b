"""The parametric loss L(N, D) = E + A / N^alpha + B / D^beta (Chinchilla's approach 3), from the equations.

With a = ln A, b = ln B, e = ln E the model's log loss is a log-sum-exp,
    ln L_hat = LSE(a - alpha ln N, b - beta ln D, e),
and the fit minimises sum_i Huber_delta(ln L_hat_i - ln L_i) (delta = 1e-3): robust to a few bad runs.
The objective has many poor local minima, so it is evaluated on a grid of initial points (alpha, beta in
{0, 0.5, ..., 2}, e in {-1, -0.5, ..., 1}, a, b in {0, 5, ..., 25}) and L-BFGS (scipy's L-BFGS-B, with the
analytic gradient) starts from the ``starts`` best of them; the lowest optimum wins. The objective is
divided by delta so that it is O(1) per point: with values of ~1e-6, L-BFGS's relative tolerances would
stop it long before convergence.

Confidence intervals: a bootstrap over runs (resampled with replacement), each refit started from the full
fit and the best grid points of the resample.

Compute-optimal allocation: with training FLOPs C = k N D, minimising L at fixed C gives
    N_opt = G (C/k)^(beta/(alpha+beta)),  D_opt = (C/k) / N_opt,  G = (alpha A / (beta B))^(1/(alpha+beta)).
"""

from __future__ import annotations

import itertools
import os
import sys
from dataclasses import dataclass, field

import numpy as np

if "scipy" not in sys.modules:
    # L-BFGS-B calls BLAS on 5-element vectors: a multi-threaded OpenBLAS only adds synchronisation, which
    # on a busy machine made a bootstrap 5x slower. Must be set before scipy loads its OpenBLAS.
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
from scipy.optimize import minimize  # noqa: E402

HUBER_DELTA = 1e-3
PARAMS = ("E", "A", "B", "alpha", "beta")
INIT_GRID = {"a": np.arange(0, 30, 5.0), "b": np.arange(0, 30, 5.0), "e": np.arange(-1, 1.5, 0.5),
             "alpha": np.arange(0, 2.5, 0.5), "beta": np.arange(0, 2.5, 0.5)}
EXPONENT_BOUNDS = (0.0, 5.0)


def huber(r: np.ndarray, delta: float) -> np.ndarray:
    a = np.abs(r)
    return np.where(a <= delta, 0.5 * r * r, delta * (a - 0.5 * delta))


def objective(theta: np.ndarray, ln_n: np.ndarray, ln_d: np.ndarray, ln_loss: np.ndarray, delta: float):
    """(sum of Huber losses / delta, gradient) at theta = (a, b, e, alpha, beta). Written out rather than
    with scipy's logsumexp: it runs thousands of times per fit and the arrays are short."""
    a, b, e, alpha, beta = theta
    t_n, t_d = a - alpha * ln_n, b - beta * ln_d
    top = np.maximum(np.maximum(t_n, t_d), e)
    x_n, x_d, x_e = np.exp(t_n - top), np.exp(t_d - top), np.exp(e - top)
    total = x_n + x_d + x_e
    r = top + np.log(total) - ln_loss
    dh = np.clip(r, -delta, delta) / (delta * total)  # Huber'(r) / delta, times the softmax denominator
    g_n, g_d = dh * x_n, dh * x_d  # d lse / d term = softmax weight
    grad = np.array([g_n.sum(), g_d.sum(), (dh * x_e).sum(), -(g_n * ln_n).sum(), -(g_d * ln_d).sum()])
    return float(huber(r, delta).sum() / delta), grad


def grid_objectives(grid: np.ndarray, ln_n, ln_d, ln_loss, delta: float) -> np.ndarray:
    """The objective at every row of ``grid`` (G x 5) at once."""
    a, b, e, alpha, beta = (grid[:, j : j + 1] for j in range(5))
    t_n, t_d = a - alpha * ln_n, b - beta * ln_d
    top = np.maximum(np.maximum(t_n, t_d), e)
    r = top + np.log(np.exp(t_n - top) + np.exp(t_d - top) + np.exp(e - top)) - ln_loss
    return huber(r, delta).sum(axis=1) / delta


def init_grid() -> np.ndarray:
    g = INIT_GRID
    return np.array(list(itertools.product(g["a"], g["b"], g["e"], g["alpha"], g["beta"])))


@dataclass
class ParametricFit:
    E: float
    A: float
    B: float
    alpha: float
    beta: float
    objective: float
    n_points: int
    delta: float = HUBER_DELTA
    ci: dict[str, tuple[float, float]] = field(default_factory=dict)  # parameter -> (low, high)
    bootstrap: int = 0
    confidence: float = 0.95

    @classmethod
    def from_theta(cls, theta, objective_value: float, n_points: int, delta: float) -> ParametricFit:
        a, b, e, alpha, beta = (float(v) for v in theta)
        return cls(float(np.exp(e)), float(np.exp(a)), float(np.exp(b)), alpha, beta, objective_value, n_points, delta)

    def predict(self, n, d):
        return self.E + self.A / np.power(n, self.alpha) + self.B / np.power(d, self.beta)

    @property
    def allocation_exponents(self) -> tuple[float, float]:
        """(a, b) with N_opt ~ C^a, D_opt ~ C^b."""
        s = self.alpha + self.beta
        return self.beta / s, self.alpha / s

    def optimal(self, flops, flops_per_param_token: float):
        """(N_opt, D_opt, L_opt) at training compute ``flops`` = k N D, k = ``flops_per_param_token``."""
        s = np.asarray(flops, dtype=float) / flops_per_param_token
        g = (self.alpha * self.A / (self.beta * self.B)) ** (1 / (self.alpha + self.beta))
        n_opt = g * np.power(s, self.allocation_exponents[0])
        d_opt = s / n_opt
        return n_opt, d_opt, self.predict(n_opt, d_opt)

    def values(self) -> dict[str, float]:
        a, b = self.allocation_exponents
        return {"E": self.E, "A": self.A, "B": self.B, "alpha": self.alpha, "beta": self.beta, "a": a, "b": b}

    def to_json(self) -> dict:
        return {**self.values(), "objective": self.objective, "n_points": self.n_points, "huber_delta": self.delta,
                "ci": {k: list(v) for k, v in self.ci.items()}, "bootstrap": self.bootstrap,
                "confidence": self.confidence}


def _minimise(start: np.ndarray, ln_n, ln_d, ln_loss, delta: float):
    bounds = [(None, None)] * 3 + [EXPONENT_BOUNDS] * 2
    res = minimize(objective, start, args=(ln_n, ln_d, ln_loss, delta), jac=True, method="L-BFGS-B", bounds=bounds,
                   options={"maxiter": 5000, "ftol": 1e-15, "gtol": 1e-10})
    return res.x, float(res.fun)


def _best_fit(starts: np.ndarray, ln_n, ln_d, ln_loss, delta: float):
    best = None
    for start in starts:
        theta, value = _minimise(start, ln_n, ln_d, ln_loss, delta)
        if np.all(np.isfinite(theta)) and (best is None or value < best[1]):
            best = (theta, value)
    return best


def fit_parametric(n, d, loss, delta: float = HUBER_DELTA, starts: int = 16, bootstrap: int = 200,
                   confidence: float = 0.95, seed: int = 0, bootstrap_starts: int = 1) -> ParametricFit:
    """Fit L(N, D) to final losses; ``bootstrap`` resamples give percentile intervals for every parameter
    and for the allocation exponents a, b."""
    ln_n, ln_d, ln_loss = (np.log(np.asarray(v, dtype=float)) for v in (n, d, loss))
    if len(ln_n) < 5:
        raise ValueError(f"the parametric fit has 5 parameters; it needs at least 5 runs, got {len(ln_n)}")
    grid = init_grid()
    order = np.argsort(grid_objectives(grid, ln_n, ln_d, ln_loss, delta))
    theta, value = _best_fit(grid[order[:starts]], ln_n, ln_d, ln_loss, delta)
    fit = ParametricFit.from_theta(theta, value, len(ln_n), delta)
    fit.confidence = confidence
    if bootstrap <= 0:
        return fit

    rng = np.random.default_rng(seed)
    samples = []
    restarts = np.vstack([theta, grid[order[:bootstrap_starts]]])  # a resample's optimum is near the full one
    for _ in range(bootstrap):
        pick = rng.integers(0, len(ln_n), len(ln_n))
        if len(np.unique(pick)) < 5:
            continue
        best = _best_fit(restarts, ln_n[pick], ln_d[pick], ln_loss[pick], delta)
        if best is not None:
            values = ParametricFit.from_theta(best[0], best[1], len(pick), delta).values()
            samples.append([values[k] for k in (*PARAMS, "a", "b")])
    s = np.array(samples)
    q = 100 * np.array([(1 - confidence) / 2, (1 + confidence) / 2])
    fit.ci = {k: tuple(float(v) for v in np.percentile(s[:, j], q)) for j, k in enumerate((*PARAMS, "a", "b"))}
    fit.bootstrap = len(samples)
    return fit
