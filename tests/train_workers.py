"""Per-rank bodies of trainer tests that share one spawned process group (tests/dist_utils.py)."""

from __future__ import annotations


def run_configs(cases):
    """Train each (name, config files, overrides[, resume]) in turn on the same ranks; {name: summary}.
    ``resume`` (default "none") is the trainer's --resume: auto, none or a checkpoint directory."""
    from xlstm_pretrain.train import setup, trainer

    out = {}
    for name, paths, overrides, *resume in cases:
        cfg = setup.load_run_config(paths, overrides)
        out[name] = trainer.train(cfg, resume=resume[0] if resume else "none")
    return out
