"""Sweep grids -> points -> one run config per point, plus ``manifest.json`` (what ``run`` and ``collect`` read).

Each point is a full, resolved run config (the base configs and overrides merged, the point's shape,
steps, peak LR and warm-up applied, validated by the trainer's own loader), so a run can be reproduced
from its file alone. Token counts are whole optimizer steps of the base's global batch x sequence length:
an IsoFLOP point's real compute differs from its nominal budget by less than one step; both are recorded.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from xlstm_pretrain.config import Config, to_dict
from xlstm_pretrain.flops import TRAINING_FLOPS_FACTOR, forward_flops_per_token

from .lr_rules import peak_lr
from .shapes import Shape, model_config, param_counts, shape_for_params, shape_for_width
from .spec import GridSpec, SweepSpec

MANIFEST = "manifest.json"


@dataclass
class SweepPoint:
    name: str
    grid: str
    kind: str  # isoflop | tokens
    budget: float | None  # isoflop: the nominal training FLOPs
    tokens_per_param_target: float | None  # tokens grid: the ratio D / N asked for
    embedding_dim: int
    num_blocks: int
    num_heads: int
    slstm_at: list[int]
    params: int  # total (embedding included)
    params_non_embedding: int  # N of the fits (the LM head is in it: its FLOPs are real)
    training_flops_per_token: float
    seq_len: int
    global_batch_size: int
    steps: int
    tokens: int  # D = steps x batch x seq_len
    flops: float  # training FLOPs of the whole run
    lr: float
    warmup_steps: int
    cooldown_steps: int
    config: str
    run_dir: str


@dataclass
class Dropped:
    grid: str
    size: str
    budget_or_ratio: float
    reason: str


def load_base(spec: SweepSpec) -> Config:
    from xlstm_pretrain.train.setup import load_run_config  # the trainer's own merge of several files

    return load_run_config(spec.base_config_paths(), spec.base.overrides)


def number_tag(x: float) -> str:
    """1e12 -> '1e12', 3.16e17 -> '3.16e17', 20 -> '20' (file-name friendly, no '+')."""
    if 1e-3 <= abs(x) < 1e4:
        return f"{x:g}"
    exp = math.floor(math.log10(abs(x)))
    return f"{round(x / 10**exp, 3):g}e{exp}"


class _Sizer:
    """Shapes and their parameter / FLOP counts, cached (every count builds a model on the meta device)."""

    def __init__(self, spec: SweepSpec, base: Config):
        self.spec, self.base = spec, base
        self._counts: dict[Shape, tuple[int, int, float]] = {}

    def shapes(self, grid: GridSpec) -> list[Shape]:
        found = [shape_for_width(w, self.spec.shape, self.base.model) for w in grid.widths] or \
                [shape_for_params(p, self.spec.shape, self.base.model) for p in grid.params]
        return list(dict.fromkeys(found))  # two targets may round to one shape

    def counts(self, shape: Shape) -> tuple[int, int, float]:
        """(params, non-embedding params, training FLOPs per token at the base's sequence length)."""
        if shape not in self._counts:
            cfg = model_config(shape, self.spec.shape, self.base.model)
            per_token = TRAINING_FLOPS_FACTOR * forward_flops_per_token(cfg, self.base.data.seq_len)
            self._counts[shape] = (*param_counts(cfg), per_token)
        return self._counts[shape]


def expand(spec: SweepSpec, base: Config | None = None) -> tuple[list[SweepPoint], list[Dropped]]:
    """Every point of every grid (not yet written), and the ones dropped with the reason."""
    base = base or load_base(spec)
    sizer = _Sizer(spec, base)
    batch, seq = base.train.global_batch_size, base.data.seq_len
    if base.train.batch_size_rampup:  # a point's tokens and FLOPs are steps x batch x seq_len
        from xlstm_pretrain.config_loader import ConfigError

        raise ConfigError("the sweep base sets train.batch_size_rampup: sweep points use one global batch size "
                          "(add train.batch_size_rampup=[] to base.overrides)")
    out_dir = Path(spec.output_dir)
    points, dropped = [], []

    def make(grid: GridSpec, shape: Shape, wanted_tokens: float, budget, ratio, name: str) -> None:
        params, n, per_token = sizer.counts(shape)
        steps = round(wanted_tokens / (batch * seq))
        tokens = steps * batch * seq
        size = f"d={shape.embedding_dim} ({n / 1e6:.3g}M)"
        if steps < spec.schedule.min_steps:
            dropped.append(Dropped(grid.name, size, budget or ratio, f"{steps} steps < min_steps"))
            return
        if grid.kind == "isoflop" and grid.tokens_per_param:
            lo, hi = grid.tokens_per_param
            if not lo <= tokens / n <= hi:
                dropped.append(Dropped(grid.name, size, budget, f"D/N = {tokens / n:.3g} outside [{lo:g}, {hi:g}]"))
                return
        warmup = min(spec.schedule.max_warmup_steps, max(1, round(spec.schedule.warmup_fraction * steps)))
        points.append(SweepPoint(
            name=name, grid=grid.name, kind=grid.kind, budget=budget, tokens_per_param_target=ratio,
            embedding_dim=shape.embedding_dim, num_blocks=shape.num_blocks, num_heads=shape.num_heads,
            slstm_at=list(shape.slstm_at), params=params, params_non_embedding=n, training_flops_per_token=per_token,
            seq_len=seq, global_batch_size=batch, steps=steps, tokens=tokens, flops=per_token * tokens,
            lr=peak_lr(params, spec.lr), warmup_steps=warmup,
            cooldown_steps=round(spec.schedule.cooldown_fraction * steps),
            config=str(out_dir / "configs" / f"{name}.yaml"), run_dir=str(out_dir / "runs" / name)))

    for grid in spec.grids:
        for shape in sizer.shapes(grid):
            d = shape.embedding_dim
            if grid.kind == "isoflop":
                for budget in grid.budgets:
                    make(grid, shape, budget / sizer.counts(shape)[2], float(budget), None,
                         f"{grid.name}_{number_tag(budget)}_d{d}")
            else:
                for ratio in grid.tokens_per_param:
                    make(grid, shape, ratio * sizer.counts(shape)[1], None, float(ratio),
                         f"{grid.name}_d{d}_r{number_tag(ratio)}")
    names = [p.name for p in points]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        from xlstm_pretrain.config_loader import ConfigError

        raise ConfigError(f"two points have the same name {duplicates}: widths must differ after rounding")
    return points, dropped


def point_overrides(spec: SweepSpec, point: SweepPoint) -> list[str]:
    shape = Shape(point.embedding_dim, point.num_blocks, point.num_heads, tuple(point.slstm_at))
    return [f"model.family={spec.shape.family}", *shape.overrides(),
            f"train.steps={point.steps}", f"train.run_dir={point.run_dir}",
            f"optim.lr={point.lr!r}", f"optim.warmup_steps={point.warmup_steps}",
            f"optim.cooldown_steps={point.cooldown_steps}", "optim.decay_steps=null",  # decay over this run
            f"logging.wandb_run_name={spec.name}-{point.name}"]


def resolved_config(spec: SweepSpec, point: SweepPoint) -> Config:
    from xlstm_pretrain.train.setup import load_run_config

    return load_run_config(spec.base_config_paths(), [*spec.base.overrides, *point_overrides(spec, point)])


def write(spec: SweepSpec, points: list[SweepPoint], dropped: list[Dropped]) -> Path:
    """One YAML per point under OUTPUT/configs/, and OUTPUT/manifest.json. Returns the manifest path."""
    out = Path(spec.output_dir)
    (out / "configs").mkdir(parents=True, exist_ok=True)
    for point in points:
        cfg = resolved_config(spec, point)
        header = (f"# sweep {spec.name}, point {point.name} (generated by tools/sweep.py generate from {spec.source})\n"
                  f"# {point.params_non_embedding:,} non-embedding parameters, {point.tokens:,} tokens, "
                  f"{point.flops:.4e} training FLOPs\n")
        Path(point.config).write_text(header + yaml.safe_dump(to_dict(cfg), sort_keys=False))
    manifest = {"sweep": spec.name, "source": spec.source, "output_dir": str(out),
                "generated": time.strftime("%Y-%m-%dT%H:%M:%S"), "spec": to_dict(spec),
                "points": [dataclasses.asdict(p) for p in points],
                "dropped": [dataclasses.asdict(d) for d in dropped]}
    path = out / MANIFEST
    path.write_text(json.dumps(manifest, indent=1) + "\n")
    return path


def read_manifest(sweep_dir: str | Path) -> tuple[dict, list[SweepPoint]]:
    path = Path(sweep_dir) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: run `tools/sweep.py generate SWEEP.yaml` first")
    manifest = json.loads(path.read_text())
    return manifest, [SweepPoint(**p) for p in manifest["points"]]


def format_points(points: list[SweepPoint], dropped: list[Dropped]) -> str:
    lines = [f"{'point':<28} {'d':>5} {'blocks':>6} {'heads':>5} {'N (non-emb)':>12} {'tokens':>11} {'D/N':>7} "
             f"{'steps':>7} {'FLOPs':>10} {'lr':>9}"]
    for p in points:
        lines.append(f"{p.name:<28} {p.embedding_dim:>5} {p.num_blocks:>6} {p.num_heads:>5} "
                     f"{p.params_non_embedding:>12,} {p.tokens:>11,} {p.tokens / p.params_non_embedding:>7.3g} "
                     f"{p.steps:>7,} {p.flops:>10.3e} {p.lr:>9.3g}")
    total = sum(p.flops for p in points)
    lines.append(f"{len(points)} runs, {total:.4e} training FLOPs in total")
    for d in dropped:
        lines.append(f"dropped: grid {d.grid} {d.size} at {d.budget_or_ratio:g}: {d.reason}")
    return "\n".join(lines)
