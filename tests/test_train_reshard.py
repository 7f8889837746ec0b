"""Resuming on another layout from a checkpoint's universal/ part: a run saved at TP=2 x DP=2 under ZeRO-2
continues at TP=1 x DP=2 under ZeRO-3 and at CP=2 x TP=2 under ZeRO-1 with the losses, gradient norms
and weights of the uninterrupted run (up to the new layout's reduction order). Without AdamW's moments
and step count the continuation would differ at once, so the comparison checks the optimizer state too."""

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from train_utils import metrics, output, prepare_data, tiny_overrides, torchrun

SAVED = {"parallel.tensor_parallel": 2, "train.zero_stage": 2, "train.steps": 8, "checkpoint.interval": 4}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return prepare_data(tmp_path_factory.getbasetemp() / "train_data")


@pytest.fixture(scope="module")
def straight(data, tmp_path_factory):
    """8 steps at TP=2 x DP=2 (4 ranks), ZeRO-2, checkpoints at steps 4 and 8."""
    run = tmp_path_factory.mktemp("reshard_straight")
    proc = torchrun(4, ["--resume", "none"] + tiny_overrides(data, run, **SAVED))
    assert proc.returncode == 0, output(proc)
    return run


def test_universal_part_holds_full_master_weights_and_moments(straight):
    ckpt = straight / "checkpoints" / "step_00000004"
    index = json.loads((ckpt / "universal" / "index.json").read_text())
    assert index["optimizer_step"] == 4 and index["states"] == ["fp32", "exp_avg", "exp_avg_sq"]
    assert sorted(set(index["params"].values())) == [f"part_0000{r}.safetensors" for r in range(4)]
    consolidated = load_file(str(ckpt / "consolidated" / "model.safetensors"))
    for name, part in index["params"].items():
        with safe_open(str(ckpt / "universal" / part), framework="pt") as f:
            assert torch.equal(f.get_tensor(f"{name}/fp32"), consolidated[name]), name  # full TP=1 tensors
            assert f.get_tensor(f"{name}/exp_avg_sq").min() >= 0 and f.get_tensor(f"{name}/exp_avg").abs().max() > 0


@pytest.mark.parametrize("nproc, layout", [
    (2, {"parallel.tensor_parallel": 1, "train.zero_stage": 3}),
    (4, {"parallel.tensor_parallel": 2, "parallel.context_parallel": 2, "train.zero_stage": 1}),
], ids=["tp1-dp2-zero3", "tp2-cp2-zero1"])
def test_resume_on_another_layout_continues_the_run(data, straight, tmp_path, nproc, layout):
    run = tmp_path / "resharded"
    proc = torchrun(nproc, ["--resume", str(straight / "checkpoints" / "step_00000004")]
                    + tiny_overrides(data, run, **{**SAVED, **layout}))
    assert proc.returncode == 0, output(proc)
    assert "layout changed on resume" in proc.stdout and "at step 4" in proc.stdout
    a = {r["step"]: r for r in metrics(straight, "train")}
    b = {r["step"]: r for r in metrics(run, "train")}
    assert sorted(b) == [5, 6, 7, 8]
    for step, r in b.items():
        assert r["loss"] == pytest.approx(a[step]["loss"], abs=1e-5), step
        assert r["grad_norm"] == pytest.approx(a[step]["grad_norm"], rel=1e-4), step
    w_a = load_file(str(straight / "checkpoints/step_00000008/consolidated/model.safetensors"))
    w_b = load_file(str(run / "checkpoints/step_00000008/consolidated/model.safetensors"))
    worst = max(w_a, key=lambda k: (w_a[k] - w_b[k]).abs().max().item())
    assert (w_a[worst] - w_b[worst]).abs().max().item() < 1e-5, worst


def test_another_layout_without_universal_part_is_refused(data, straight, tmp_path):
    import shutil

    ckpt = tmp_path / "step_00000004"
    shutil.copytree(straight / "checkpoints" / "step_00000004", ckpt, ignore=shutil.ignore_patterns("universal"))
    proc = torchrun(2, ["--resume", str(ckpt)] + tiny_overrides(data, tmp_path / "run", **{
        **SAVED, "parallel.tensor_parallel": 1}))
    assert proc.returncode != 0
    assert "has no universal/ part" in proc.stderr and "train.init_from" in proc.stderr, output(proc)
