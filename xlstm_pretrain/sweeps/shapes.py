"""Model shapes for a sweep: a width (or a target parameter count) -> blocks, heads, sLSTM positions.

The rule follows the published family rather than inventing one:
- ``num_blocks`` is interpolated through the anchors (the paper's size table, xlstm_pretrain/REFERENCE.md §3:
  d 768/1024/1536/2048/2560 -> 24/48/48/48/64 blocks, 4 heads) linearly in (log d, log blocks); outside
  the table the nearest anchor's aspect ratio d / blocks is kept, so smaller models get shallower in
  proportion (d=256 -> 8 blocks) instead of being clamped to 24 blocks.
- heads: the nearest anchor's (in log d), lowered until it divides every head-sharded dimension.
- d is a multiple of ``width_multiple`` (64: the paper's widths and tensor-core friendly).
- sLSTM blocks (xLSTM[a:b], paper family): n = 2 * floor(fraction * blocks / 2) (at least 1), half of
  them at blocks 3, 5, 7, ... and half mirrored from the end (blocks-4, blocks-6, ...). This reproduces
  the paper's placements ([3, 20] for 24 blocks, [3, 5, 7, 40, 42, 44] for 48) and the quickstart's [3].
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from xlstm_pretrain.config_loader import ConfigError
from xlstm_pretrain.model.config import ModelConfig

from .spec import ShapeSpec

# (d, blocks, mLSTM heads): NeurIPS paper Table 7 / xlstm_pretrain/REFERENCE.md §3, and the 7B (same section)
PAPER_ANCHORS = [(768, 24, 4), (1024, 48, 4), (1536, 48, 4), (2048, 48, 4), (2560, 64, 4)]
LARGE_ANCHORS = [(4096, 32, 8)]


@dataclass(frozen=True)
class Shape:
    embedding_dim: int
    num_blocks: int
    num_heads: int
    slstm_at: tuple[int, ...] = ()

    def overrides(self) -> list[str]:
        """Dotted overrides that give a base model config this shape."""
        return [f"model.embedding_dim={self.embedding_dim}", f"model.num_blocks={self.num_blocks}",
                f"model.num_heads={self.num_heads}", f"model.slstm_at=[{', '.join(map(str, self.slstm_at))}]"]


def anchors_of(spec: ShapeSpec) -> list[tuple[int, int, int]]:
    if spec.anchors == "paper":
        return PAPER_ANCHORS
    if spec.anchors == "large":
        return LARGE_ANCHORS
    return sorted(tuple(int(v) for v in a) for a in spec.anchors)


def blocks_for_width(d: float, anchors: list[tuple[int, int, int]]) -> float:
    """Blocks (unrounded) at width d: log-log interpolation inside the anchors, constant d/blocks outside."""
    (d_lo, b_lo, _), (d_hi, b_hi, _) = anchors[0], anchors[-1]
    if d <= d_lo:
        return b_lo * d / d_lo
    if d >= d_hi:
        return b_hi * d / d_hi
    for (d0, b0, _), (d1, b1, _) in zip(anchors, anchors[1:]):
        if d0 <= d <= d1:
            t = math.log(d / d0) / math.log(d1 / d0)
            return math.exp(math.log(b0) + t * math.log(b1 / b0))
    raise AssertionError("unreachable: anchors are sorted")


def heads_for_width(d: float, anchors: list[tuple[int, int, int]]) -> int:
    return min(anchors, key=lambda a: abs(math.log(d / a[0])))[2]


def slstm_positions(num_blocks: int, fraction: float) -> tuple[int, ...]:
    if fraction <= 0:
        return ()
    n = min(num_blocks, max(1, 2 * math.floor(fraction * num_blocks / 2)))
    front = [min(3 + 2 * k, num_blocks - 1) for k in range(math.ceil(n / 2))]
    back = [num_blocks - 4 - 2 * k for k in range(n // 2)]
    positions = sorted(set(front) | {p for p in back if p >= 0})
    return tuple(positions) if len(positions) == n else tuple(range(num_blocks - n, num_blocks))  # tiny models


def shape_for_width(d: int, spec: ShapeSpec, base: ModelConfig) -> Shape:
    """The shape at width d (rounded to the width multiple), with heads that divide every sharded dim."""
    d = max(spec.width_multiple, spec.width_multiple * round(d / spec.width_multiple))
    anchors = anchors_of(spec)
    blocks = max(spec.min_blocks, round(blocks_for_width(d, anchors)))
    slstm = slstm_positions(blocks, spec.slstm_fraction) if spec.family == "paper" else ()
    for heads in range(heads_for_width(d, anchors), 0, -1):
        shape = Shape(d, blocks, heads, slstm)
        try:
            model_config(shape, spec, base).validate()
        except ConfigError:
            continue
        return shape
    raise ConfigError(f"no head count divides the dimensions of a width-{d} model")


def model_config(shape: Shape, spec: ShapeSpec, base: ModelConfig) -> ModelConfig:
    """``base`` with this shape (and the family's FFN factor when the base is of another family)."""
    ffn = base.ffn_proj_factor if base.family == spec.family else None
    return dataclasses.replace(base, family=spec.family, embedding_dim=shape.embedding_dim,
                               num_blocks=shape.num_blocks, num_heads=shape.num_heads, slstm_at=list(shape.slstm_at),
                               ffn_proj_factor=ffn)


def param_counts(cfg: ModelConfig) -> tuple[int, int]:
    """(total, non-embedding) parameters, equal to ``count_params`` (tests check it), from a model with one
    block of each kind: all blocks of a kind have the same parameters, and building a 48-block model takes
    seconds even on the meta device (its initialisation runs), which a search over widths repeats often."""
    from xlstm_pretrain.model import build_model, count_params

    kinds = sorted(set(cfg.block_types))
    one_each = dataclasses.replace(cfg, num_blocks=len(kinds),
                                   slstm_at=[kinds.index("slstm")] if "slstm" in kinds else [])
    model = build_model(one_each, device="meta")
    per_kind = {kind: sum(p.numel() for p in block.parameters())
                for kind, block in zip(one_each.block_types, model.blocks)}
    blocks = sum(per_kind[kind] for kind in cfg.block_types)
    outside = count_params(model) - sum(per_kind.values()), count_params(model, exclude_embedding=True) - sum(
        per_kind.values())
    return outside[0] + blocks, outside[1] + blocks


def non_embedding_params(shape: Shape, spec: ShapeSpec, base: ModelConfig) -> int:
    return param_counts(model_config(shape, spec, base))[1]


def shape_for_params(target: float, spec: ShapeSpec, base: ModelConfig) -> Shape:
    """The shape whose non-embedding parameter count is closest to ``target`` (in log), by bisection on d:
    the count grows with d because blocks never decrease with d."""
    m = spec.width_multiple
    lo, hi = 1, 1
    while non_embedding_params(shape_for_width(hi * m, spec, base), spec, base) < target:
        lo, hi = hi, hi * 2
        if hi > 1 << 16:
            raise ConfigError(f"no width up to {hi * m} reaches {target:.3g} parameters")
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if non_embedding_params(shape_for_width(mid * m, spec, base), spec, base) < target:
            lo = mid
        else:
            hi = mid
    candidates = [shape_for_width(k * m, spec, base) for k in (lo, hi)]
    return min(candidates, key=lambda s: abs(math.log(non_embedding_params(s, spec, base) / target)))
