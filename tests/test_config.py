"""Config system: YAML + includes + dotted overrides into dataclasses, with clear errors."""

from pathlib import Path

import pytest

from xlstm_pretrain.config import Config, ConfigError, dump_yaml, load

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "model"


def write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_yaml_and_overrides(tmp_path):
    p = write(tmp_path, "m.yaml", "model:\n  embedding_dim: 128\n  num_blocks: 4\n")
    cfg = load(p, ["model.num_blocks=12", "model.slstm_at=[1, 3]", "model.eps=1e-5", "model.family=paper"])
    assert isinstance(cfg, Config)
    assert (cfg.model.embedding_dim, cfg.model.num_blocks, cfg.model.slstm_at, cfg.model.eps) == (128, 12, [1, 3], 1e-5)
    assert cfg.model.ffn_proj_factor == 1.3  # the family's default, filled in


def test_include_chain_and_round_trip(tmp_path):
    write(tmp_path, "base.yaml", "model:\n  embedding_dim: 96\n  num_blocks: 2\n")
    p = write(tmp_path, "child.yaml", "include: base.yaml\nmodel:\n  num_blocks: 6\n")
    cfg = load(p)
    assert (cfg.model.embedding_dim, cfg.model.num_blocks) == (96, 6)
    dump_yaml(cfg, tmp_path / "out.yaml")
    assert load(tmp_path / "out.yaml") == cfg


@pytest.mark.parametrize("text, overrides, match", [
    ("model:\n  num_blockz: 3\n", [], r"m\.yaml: unknown key 'model\.num_blockz' \(did you mean 'model\.num_blocks'\?\)"),
    ("model:\n  num_blocks: three\n", [], r"m\.yaml: 'model\.num_blocks' must be int, got 'three'"),
    ("model: {}\n", ["model.chunk_size=48"], r"chunk_size must be a power of two, got 48"),
    ("model: {}\n", ["model.embedding_dim=100", "model.num_heads=3"], r"num_heads=3 must divide qk_dim"),
    ("model: {}\n", ["model.num_blocks=4", "model.slstm_at=[4]"], r"slstm_at indices \[4\] out of range"),
    ("model: {}\n", ["model.family=large", "model.slstm_at=[0]"], r"slstm_at is only valid"),
    ("model: {}\n", ["model.family=huge"], r"'model\.family' must be one of \['paper', 'large'\]"),
    ("model: {}\n", ["model.backend=cuda"], r"backend must be 'auto' or one of"),
    ("model: {}\n", ["model.tie_embeddings=1"], r"override 'model\.tie_embeddings=1': 'model\.tie_embeddings' must be bool"),
    ("model: {}\n", ["model.num_blocks"], r"expected key=value"),
    ("model: [1, 2]\n", [], r"expected a mapping"),
])
def test_clear_errors(tmp_path, text, overrides, match):
    p = write(tmp_path, "m.yaml", text)
    with pytest.raises(ConfigError, match=match):
        load(p, overrides)


def test_missing_file_and_include_cycle(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load(tmp_path / "nope.yaml")
    write(tmp_path, "a.yaml", "include: b.yaml\n")
    write(tmp_path, "b.yaml", "include: a.yaml\n")
    with pytest.raises(ConfigError, match="include cycle"):
        load(tmp_path / "a.yaml")


def test_every_shipped_model_config_loads():
    paths = sorted(CONFIGS.glob("*.yaml"))
    assert len(paths) >= 12
    for p in paths:
        load(p)


def test_several_files_merge_in_order(tmp_path):
    run = write(tmp_path, "run.yaml", "model:\n  embedding_dim: 96\n  num_blocks: 2\ntrain:\n  deepspeed: {a: {b: 1}}\n")
    layout = write(tmp_path, "layout.yaml", "model:\n  num_blocks: 6\ntrain:\n  deepspeed: {a: {c: 2}}\n")
    cfg = load([run, layout], ["model.num_blocks=8"])
    assert (cfg.model.embedding_dim, cfg.model.num_blocks) == (96, 8)
    assert cfg.train.deepspeed == {"a": {"b": 1, "c": 2}}  # mappings merge key by key


def test_retired_fault_section(tmp_path):
    """Older checkpoints' config.yaml dump the removed train.fault section with its defaults: still loadable;
    a fault that would do something is an error that names its replacement, never silently dropped."""
    old = ("train:\n  steps: 7\n  fault:\n    nonfinite_at_steps: []\n    kill_at_step: null\n"
           "    kill_during_checkpoint_at_step: null\n    kill_rank: 0\n    only_first_attempt: true\n")
    assert load(write(tmp_path, "old.yaml", old)).train.steps == 7
    with pytest.raises(ConfigError, match=r"'train\.fault' was removed: fault injection is a test hook"):
        load(write(tmp_path, "old.yaml", old), ["train.fault.kill_at_step=3"])
