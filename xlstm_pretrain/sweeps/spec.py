"""The sweep definition: a YAML file read into dataclasses (the same loader and checks as run configs).

    name: micro_cpu
    output_dir: runs/sweeps/micro_cpu   # configs/, runs/, logs/, manifest.json, results.*, fit.json, figures/
    base:                              # the run config every point starts from
      configs: [../quickstart.yaml]    # relative to the sweep file; merged in order (later files win)
      overrides: [parallel.tensor_parallel=1]
    shape: {family: paper, anchors: paper, slstm_fraction: 0.0, width_multiple: 64}
    lr: {rule: table, table: paper_300b}          # or {rule: power, value, params_ref, exponent} / {rule: constant}
    schedule: {warmup_fraction: 0.05, max_warmup_steps: 750, min_steps: 100}
    grids:
      - {name: iso, kind: isoflop, budgets: [1e18, 3e18], widths: [512, 768, 1024], tokens_per_param: [2, 200]}
      - {name: tok, kind: tokens, widths: [512, 768], tokens_per_param: [10, 20, 40]}

Model sizes are given as widths (``widths``, the embedding dim d) or as target non-embedding parameter
counts (``params``); the shape rule (shapes.py) turns either into a full model. In an ``isoflop`` grid every
size trains for budget / (training FLOPs per token) tokens, and ``tokens_per_param`` is an optional
[min, max] filter on D/N; in a ``tokens`` grid every size trains for D = r N tokens for each r listed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from xlstm_pretrain.config_loader import ConfigError, build_dataclass, read_yaml


def _need(cond: bool, msg: str) -> None:
    if not cond:
        raise ConfigError(msg)


@dataclass
class BaseSpec:
    configs: list[str] = field(default_factory=list)  # run YAMLs, relative to the sweep file
    overrides: list[str] = field(default_factory=list)  # dotted overrides applied to every point


@dataclass
class ShapeSpec:
    """How a width becomes a model (see shapes.py)."""

    family: Literal["paper", "large"] = "paper"
    # "paper": the NeurIPS size table (d, blocks, heads); "large": the 7B; or explicit [[d, blocks, heads], ...]
    anchors: str | list[list[int]] = "paper"
    slstm_fraction: float = 0.0  # 0 = xLSTM[1:0]; 0.125 = xLSTM[7:1] (paper family only)
    width_multiple: int = 64  # d is a multiple of this (64 on GPUs; smaller for CPU micro sweeps)
    min_blocks: int = 1

    def validate(self) -> None:
        _need(0 <= self.slstm_fraction <= 1, f"slstm_fraction must be in [0, 1], got {self.slstm_fraction}")
        _need(self.family == "paper" or self.slstm_fraction == 0, "slstm_fraction is only for family=paper")
        _need(self.width_multiple > 0 and self.min_blocks > 0, "width_multiple and min_blocks must be positive")
        if isinstance(self.anchors, str):
            _need(self.anchors in ("paper", "large"), f"anchors must be 'paper', 'large' or a list, got {self.anchors!r}")
        else:
            _need(bool(self.anchors) and all(len(a) == 3 and min(a) > 0 for a in self.anchors),
                  f"anchors must be a non-empty list of positive [d, blocks, heads], got {self.anchors}")


@dataclass
class LRSpec:
    """Peak learning rate per model (see lr_rules.py); ``params`` is the total parameter count, as in the
    paper's Table 7."""

    rule: Literal["table", "power", "constant"] = "table"
    table: str | list[list[float]] = "paper_300b"  # "paper_300b", "paper_15b" or [[params, lr], ...]
    value: float = 1e-3  # constant: the lr; power: the lr at params_ref
    params_ref: float = 1e8
    exponent: float = 0.0  # power: lr = value * (params / params_ref) ** -exponent

    def validate(self) -> None:
        _need(self.value > 0 and self.params_ref > 0, "lr.value and lr.params_ref must be positive")
        if isinstance(self.table, str):
            _need(self.table in ("paper_300b", "paper_15b"), "lr.table must be paper_300b, paper_15b or a list")
        else:
            _need(bool(self.table) and all(len(r) == 2 and min(r) > 0 for r in self.table),
                  "lr.table must be a non-empty list of positive [params, lr] pairs")


@dataclass
class ScheduleSpec:
    """Warm-up per point; the cosine (or whatever the base sets) decays over each run's own length,
    because a schedule cut short of its end makes a run look worse than it is (Chinchilla's point)."""

    warmup_fraction: float = 0.05
    max_warmup_steps: int = 750
    cooldown_fraction: float = 0.0  # optim.cooldown_steps = this x steps (for schedule: wsd)
    min_steps: int = 20  # points with fewer optimizer steps are dropped, not stretched (that would change C)

    def validate(self) -> None:
        _need(0 <= self.warmup_fraction < 1, f"warmup_fraction must be in [0, 1), got {self.warmup_fraction}")
        _need(0 <= self.cooldown_fraction < 1 - self.warmup_fraction, "cooldown_fraction must be in [0, 1 - warmup)")
        _need(self.max_warmup_steps >= 0 and self.min_steps >= 1, "max_warmup_steps >= 0 and min_steps >= 1")


@dataclass
class GridSpec:
    name: str = ""
    kind: Literal["isoflop", "tokens"] = "isoflop"
    budgets: list[float] = field(default_factory=list)  # isoflop: training FLOPs per run
    widths: list[int] = field(default_factory=list)  # model sizes as embedding dims ...
    params: list[float] = field(default_factory=list)  # ... or as target non-embedding parameter counts
    tokens_per_param: list[float] = field(default_factory=list)  # tokens: the ratios; isoflop: [min, max] filter

    def validate(self) -> None:
        _need(bool(self.name) and self.name.replace("_", "").replace("-", "").isalnum(),
              f"grid name must be a non-empty word (letters, digits, _ or -), got {self.name!r}")
        _need(bool(self.widths) != bool(self.params), f"grid {self.name}: give exactly one of widths or params")
        _need(all(w > 0 for w in self.widths) and all(p > 0 for p in self.params), "sizes must be positive")
        _need(all(r > 0 for r in self.tokens_per_param), "tokens_per_param must be positive")
        if self.kind == "isoflop":
            _need(bool(self.budgets) and all(b > 0 for b in self.budgets), f"grid {self.name}: list positive budgets")
            _need(len(self.tokens_per_param) in (0, 2), f"grid {self.name}: tokens_per_param is a [min, max] filter")
        else:
            _need(not self.budgets, f"grid {self.name}: budgets are for kind=isoflop")
            _need(bool(self.tokens_per_param), f"grid {self.name}: list the tokens_per_param ratios")


@dataclass
class SweepSpec:
    name: str = ""
    output_dir: str = ""  # default: runs/sweeps/<name> (relative to where the tools run, like train.run_dir)
    base: BaseSpec = field(default_factory=BaseSpec)
    shape: ShapeSpec = field(default_factory=ShapeSpec)
    lr: LRSpec = field(default_factory=LRSpec)
    schedule: ScheduleSpec = field(default_factory=ScheduleSpec)
    grids: list[GridSpec] = field(default_factory=list)
    source: str = ""  # the sweep file (set by load_sweep; base.configs are relative to it)

    def validate(self) -> None:
        _need(bool(self.name), "name is required")
        _need(bool(self.grids), "grids: list at least one grid")
        names = [g.name for g in self.grids]
        _need(len(set(names)) == len(names), f"grid names must be unique, got {names}")
        if not self.output_dir:
            self.output_dir = f"runs/sweeps/{self.name}"

    def base_config_paths(self) -> list[Path]:
        here = Path(self.source).parent if self.source else Path(".")
        return [here / c for c in self.base.configs]


def load_sweep(path: str | Path, overrides: list[str] = ()) -> SweepSpec:
    """Read a sweep YAML (``include:`` works as for run configs); dotted overrides like ``output_dir=...``."""
    from xlstm_pretrain.config_loader import apply_overrides

    tree, sources = read_yaml(path)
    apply_overrides(tree, sources, overrides)
    tree["source"] = str(Path(path).resolve())
    return build_dataclass(SweepSpec, tree, sources)
