"""Per-rank bodies of trainer tests that share one spawned process group (tests/dist_utils.py)."""

from __future__ import annotations


def run_configs(cases):
    """Train each (name, config files, overrides) in turn on the same ranks; {name: summary}."""
    from xlstm_pretrain.train import setup, trainer

    out = {}
    for name, paths, overrides in cases:
        cfg = setup.load_run_config(paths, overrides)
        out[name] = trainer.train(cfg, resume="none")
    return out
