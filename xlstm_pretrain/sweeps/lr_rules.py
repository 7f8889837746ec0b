"""Peak learning rate per model size for a sweep.

- ``table``: log-log interpolation in (total parameters, lr) through a table, clamped at its ends. The
  built-in tables are the paper's xLSTM rows (Table 7, xlstm_pretrain/REFERENCE.md §3), keyed by the total
  parameter counts the paper prints: ``paper_300b`` and ``paper_15b``.
- ``power``: lr = value * (params / params_ref) ** -exponent (a muP-free rule of thumb for small sweeps).
- ``constant``: lr = value.
"""

from __future__ import annotations

import math

from .spec import LRSpec

PAPER_LR_TABLES = {
    # xLSTM peak LRs of Table 7 against the paper's parameter counts (xLSTM[1:0], vocab 50304)
    "paper_300b": [(163.8e6, 1.5e-3), (409.3e6, 7.5e-4), (840.4e6, 6.25e-4), (1422.6e6, 5e-4)],
    "paper_15b": [(163.8e6, 3e-3), (409.3e6, 1e-3), (840.4e6, 9e-4), (1422.6e6, 9e-4), (2788.3e6, 8e-4)],
}


def interpolate_log_log(x: float, table: list[tuple[float, float]]) -> float:
    pts = sorted(table)
    if x <= pts[0][0]:
        return pts[0][1]
    if x >= pts[-1][0]:
        return pts[-1][1]
    for (x0, y0), (x1, y1) in zip(pts, pts[1:]):
        if x0 <= x <= x1:
            t = math.log(x / x0) / math.log(x1 / x0)
            return math.exp(math.log(y0) + t * math.log(y1 / y0))
    raise AssertionError("unreachable: the table is sorted")


def peak_lr(params: float, spec: LRSpec) -> float:
    """The peak learning rate for a model with ``params`` total parameters."""
    if spec.rule == "constant":
        return spec.value
    if spec.rule == "power":
        return spec.value * (params / spec.params_ref) ** -spec.exponent
    table = PAPER_LR_TABLES[spec.table] if isinstance(spec.table, str) else [tuple(r) for r in spec.table]
    return interpolate_log_log(params, table)
