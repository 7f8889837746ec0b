"""End-to-end training runs on CPU (gloo), checked against independent computations.

- a TP=2 x DP=2 ZeRO-2 run equals a plain single-process PyTorch loop (AdamW with the official weight-decay
  groups, the schedule, clipping, the same global batches): losses, final weights, validation loss;
- 20 steps straight == 10 steps, kill -9, resume, 10 steps (identical losses and gradient norms);
- a non-finite step leaves the weights untouched; N in a row stop the run with the last checkpoint intact;
- a missing data path or a tokenizer mismatch fails before anything is written;
- a short run of every config family, shrunk with model.* overrides, completes.
"""

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from dist_utils import run_distributed
from fault_hooks import fault_env
from train_utils import REPO, metrics, output, prepare_data, python_module, tiny_overrides, torchrun, train_losses
from train_workers import run_configs

RESUME_RUN = {"parallel.tensor_parallel": 2, "train.zero_stage": 2, "train.steps": 20, "checkpoint.interval": 10,
              "eval.interval": 10}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return prepare_data(tmp_path_factory.getbasetemp() / "train_data")


@pytest.fixture(scope="module")
def straight(data, tmp_path_factory):
    """20 steps without interruption: TP=2 x DP=2 (4 ranks), ZeRO-2, fp32, 2 accumulation steps."""
    run = tmp_path_factory.mktemp("straight")
    proc = torchrun(4, ["--resume", "none"] + tiny_overrides(data, run, **RESUME_RUN))
    assert proc.returncode == 0, output(proc)
    return run, proc


# ---- an independent single-process reference -----------------------------------------------------


def reference_run(data, steps=20, lr=3e-3, warmup=2, batch=8, val_samples=16, batches=None):
    """Plain PyTorch: one process, the whole global batch, torch AdamW + clipping, our own lr formula.
    ``batches``: the global batch of every step (a ramp-up), else ``batch`` throughout."""
    from xlstm_pretrain.data import build_train_dataset, build_validation_dataset, collate_samples
    from xlstm_pretrain.model import build_model
    from xlstm_pretrain.train import setup
    from xlstm_pretrain.train.validation import validation_windows

    cfg = setup.load_run_config([], tiny_overrides(data, Path("unused")))
    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg.model)
    named = dict(model.named_parameters())
    decay = [p for n, p in named.items() if "weight" in n and "norm" not in n and n != "embedding.weight"]
    rest = [p for n, p in named.items() if not ("weight" in n and "norm" not in n and n != "embedding.weight")]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": rest, "weight_decay": 0.0}],
                            lr=lr, betas=(0.9, 0.95), eps=1e-5)
    dataset = build_train_dataset(cfg.data)
    losses, lrs, norms = {}, {}, {}
    consumed = 0
    for step in range(steps):
        s = step - warmup
        lrs[step + 1] = lr * (step + 1) / warmup if step < warmup else \
            0.1 * lr + 0.9 * lr * 0.5 * (1 + math.cos(math.pi * s / (steps - warmup)))
        for g in opt.param_groups:
            g["lr"] = lrs[step + 1]
        size = batches[step] if batches else batch
        b = collate_samples([dataset[i] for i in range(consumed, consumed + size)])
        consumed += size
        logits = model(b["input_ids"], doc_boundaries=b["doc_boundaries"])
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), b["labels"].flatten())
        opt.zero_grad()
        loss.backward()
        norms[step + 1] = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0).item()
        opt.step()
        losses[step + 1] = loss.item()
    val = build_validation_dataset(cfg.data)
    with torch.no_grad():
        b = collate_samples([val[i] for i in validation_windows(len(val), val_samples)])
        logits = model(b["input_ids"], doc_boundaries=b["doc_boundaries"])
        val_loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), b["labels"].flatten()).item()
    return dict(losses=losses, lrs=lrs, norms=norms, weights=model.state_dict(), val_loss=val_loss)


def test_tp_dp_zero2_run_matches_a_plain_pytorch_loop(data, straight):
    run, proc = straight
    ref = reference_run(data)
    rows = {r["step"]: r for r in metrics(run, "train")}
    assert sorted(rows) == list(range(1, 21))
    for step, r in rows.items():
        assert r["loss"] == pytest.approx(ref["losses"][step], abs=2e-5), step
        assert r["lr"] == pytest.approx(ref["lrs"][step], rel=1e-9), step
        assert r["grad_norm"] == pytest.approx(ref["norms"][step], rel=1e-4), step
    assert rows[20]["loss"] < rows[1]["loss"] - 0.3  # it learns
    # the consolidated checkpoint is the TP=1 model with the reference's weights
    final = load_file(str(run / "checkpoints" / "step_00000020" / "consolidated" / "model.safetensors"))
    assert set(final) == set(ref["weights"])
    worst = max(final, key=lambda n: (final[n] - ref["weights"][n]).abs().max().item())
    assert (final[worst] - ref["weights"][worst]).abs().max().item() < 1e-4, worst
    val = [r for r in metrics(run, "val") if r["step"] == 20]
    assert len(val) == 1 and val[0]["val_loss"] == pytest.approx(ref["val_loss"], abs=2e-5)
    assert val[0]["val_ppl"] == pytest.approx(math.exp(val[0]["val_loss"]))
    assert val[0]["tokens"] == 20 * 8 * 32 and val[0]["flops"] == pytest.approx(20 * rows[1]["flops"])


def test_context_parallel_run_matches_a_plain_pytorch_loop(data, tmp_path):
    """CP=2 x DP=2 (4 ranks), ZeRO-2: each sequence split across 2 ranks with state passed between them,
    every block recomputed in backward (activation checkpointing replays the CP messages)."""
    run = tmp_path / "cp"
    proc = torchrun(4, ["--resume", "none"] + tiny_overrides(data, run, **{
        "parallel.context_parallel": 2, "train.zero_stage": 2, "eval.interval": 6,
        "train.activation_checkpointing": "true"}))
    assert proc.returncode == 0, output(proc)
    ref = reference_run(data, steps=6)
    rows = {r["step"]: r for r in metrics(run, "train")}
    assert sorted(rows) == list(range(1, 7))
    for step, r in rows.items():
        assert r["loss"] == pytest.approx(ref["losses"][step], abs=2e-5), step
        assert r["grad_norm"] == pytest.approx(ref["norms"][step], rel=1e-4), step
    val = [r for r in metrics(run, "val") if r["step"] == 6]
    assert len(val) == 1 and val[0]["val_loss"] == pytest.approx(ref["val_loss"], abs=2e-5)


def test_resume_after_kill_is_exact(data, straight, tmp_path):
    straight_run, _ = straight
    run = tmp_path / "killed"
    # rank 1 is SIGKILLed after step 13 (the checkpoint of step 10 is the last one)
    killed = torchrun(4, ["--resume", "none"] + tiny_overrides(data, run, **RESUME_RUN),
                      env=fault_env(kill_at_step=13, kill_rank=1))
    assert killed.returncode != 0 and "SIGKILL after step 13" in killed.stdout, output(killed)
    assert (run / "checkpoints" / "latest").read_text().strip() == "step_00000010"
    assert max(train_losses(run)) == 13
    resumed = torchrun(4, ["--resume", "auto"] + tiny_overrides(data, run, **RESUME_RUN))
    assert resumed.returncode == 0, output(resumed)
    assert "resumed from" in resumed.stdout and "at step 10" in resumed.stdout
    a, b = metrics(straight_run, "train"), metrics(run, "train")
    assert [r["step"] for r in b] == list(range(1, 21))  # the lost steps 11-13 were dropped from the log
    assert [r["loss"] for r in b] == [r["loss"] for r in a]  # bit-identical
    assert [r["grad_norm"] for r in b] == [r["grad_norm"] for r in a]
    assert [r["val_loss"] for r in metrics(run, "val")] == [r["val_loss"] for r in metrics(straight_run, "val")]
    w_a = load_file(str(straight_run / "checkpoints/step_00000020/consolidated/model.safetensors"))
    w_b = load_file(str(run / "checkpoints/step_00000020/consolidated/model.safetensors"))
    assert all(torch.equal(w_a[k], w_b[k]) for k in w_a)


RAMP_RUN = {"train.micro_batch_size": 1, "checkpoint.interval": 3,
            "train.batch_size_rampup": "[{global_batch_size: 2, steps: 2}, {global_batch_size: 4, steps: 2}]"}


def test_batch_size_rampup_matches_a_plain_loop_and_resumes_mid_ramp(data, tmp_path, capfd):
    """DP=2, micro-batch 1, ramp-up 2 (2 steps) -> 4 (2 steps) -> 8: accumulation 1, 1, 2, 2, 4, 4 micro-batches
    equal a plain loop over the same consecutive samples; a resume from the step-3 checkpoint (mid ramp-up)
    continues bit-identically."""
    straight, resumed = tmp_path / "ramp", tmp_path / "ramp_resumed"
    run_distributed(run_configs, 2, [
        ("straight", [], tiny_overrides(data, straight, **RAMP_RUN)),
        ("resumed", [], tiny_overrides(data, resumed, **RAMP_RUN), str(straight / "checkpoints" / "step_00000003"))])
    line = "batch ramp-up: 2 (2 steps) -> 4 (2 steps) -> 8 sequences per step; 896 tokens in 6 steps"
    assert line in capfd.readouterr().out
    sizes = [2, 2, 4, 4, 8, 8]
    rows = metrics(straight, "train")
    assert [r["step"] for r in rows] == list(range(1, 7))
    assert [r["tokens"] for r in rows] == [32 * sum(sizes[:k + 1]) for k in range(6)]  # seq_len 32
    assert all(r["flops"] == pytest.approx(rows[0]["flops"] / 64 * r["tokens"], rel=1e-12) for r in rows)
    ref = reference_run(data, steps=6, batches=sizes)
    for r in rows:
        assert r["loss"] == pytest.approx(ref["losses"][r["step"]], abs=2e-5), r["step"]
        assert r["grad_norm"] == pytest.approx(ref["norms"][r["step"]], rel=1e-4), r["step"]
    state = json.loads((straight / "checkpoints" / "step_00000003" / "trainer_state.json").read_text())
    assert state["progress"]["consumed_samples"] == 8 and state["data"]["batch_size_rampup"] == [[2, 2], [4, 2]]
    final = json.loads((straight / "checkpoints" / "step_00000006" / "trainer_state.json").read_text())
    assert (final["progress"]["consumed_samples"], final["progress"]["tokens"]) == (28, 896)
    again = metrics(resumed, "train")
    assert [r["step"] for r in again] == [4, 5, 6]
    keys = ("loss", "grad_norm", "tokens", "flops", "lr")
    assert [[r[k] for k in keys] for r in again] == [[r[k] for k in keys] for r in rows[3:]]  # bit-identical
    w_a = load_file(str(straight / "checkpoints/step_00000006/consolidated/model.safetensors"))
    w_b = load_file(str(resumed / "checkpoints/step_00000006/consolidated/model.safetensors"))
    assert all(torch.equal(w_a[k], w_b[k]) for k in w_a)


def test_run_outputs(data, straight):
    """Checkpoint contents, gate telemetry, no MFU on CPU, the standalone evaluation at TP=1."""
    from xlstm_pretrain.export import read_plain_checkpoint

    run, proc = straight
    ckpt = run / "checkpoints" / "step_00000020"
    state = json.loads((ckpt / "trainer_state.json").read_text())
    assert state["progress"]["consumed_samples"] == 20 * 8 and state["progress"]["step"] == 20
    assert state["layout"]["tensor_parallel"] == 2 and state["layout"]["data_parallel"] == 2
    from data_prep.tokenizer_info import file_sha256

    assert state["tokenizer_sha256"] == file_sha256(data["tokenizer"])
    assert sorted(p.name for p in (ckpt / "rng").iterdir()) == [f"rank_0000{r}.pt" for r in range(4)]
    plain = read_plain_checkpoint(ckpt / "consolidated")  # the export's reader takes it as it is
    assert plain.cfg.model.embedding_dim == 32 and (ckpt / "consolidated" / "tokenizer.json").is_file()
    assert json.loads((run / "deepspeed_config.json").read_text())["zero_optimization"]["stage"] == 2
    # MFU is never reported on a CPU (no known peak), neither in metrics.jsonl nor on stdout
    rows = metrics(run, "train")
    assert all("mfu" not in r for r in rows) and "mfu" not in proc.stdout
    assert all(math.isfinite(r["tokens_per_s"]) and r["mem_gib"] > 0 for r in rows)
    # gate telemetry: at step 1 the mLSTM forget pre-activations are the init biases linspace(3, 6)
    gates = rows[0]["gates"]
    assert set(gates) == {"0.mlstm", "1.slstm", "2.mlstm"}
    assert gates["0.mlstm"]["f"] == pytest.approx([3.0, 4.5, 6.0], abs=1e-4)
    summary = json.loads((run / "summary.json").read_text())
    assert (run / "loss.png").is_file() and summary["step"] == 20
    assert summary["kernel_backend"] == "torch" and "auto: cpu device" in summary["kernel_backend_reason"]
    # the standalone evaluation of the consolidated weights, one process (TP=1), gives the logged loss
    proc = python_module("xlstm_pretrain.evaluate", ["--checkpoint", str(run), "--unigram-baseline"])
    assert proc.returncode == 0, output(proc)
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    logged = [r for r in metrics(run, "val") if r["step"] == 20][0]
    assert result["val_loss"] == pytest.approx(logged["val_loss"], abs=1e-5)
    assert 0 < result["unigram_loss"] < math.log(512)  # (20 tiny steps do not beat it; the quickstart does)


def test_nonfinite_steps_are_skipped_and_stop_the_run(data, tmp_path):
    """bf16 autocast, ZeRO-1, TP=2: NaN losses at steps 3, 5, 6; two in a row stop the run (exit 3)."""
    run = tmp_path / "nan"
    proc = torchrun(2, ["--resume", "none"] + tiny_overrides(data, run, **{
        "parallel.tensor_parallel": 2, "train.precision": "bf16", "train.zero_stage": 1, "train.steps": 8,
        "checkpoint.interval": 1, "train.max_consecutive_nonfinite": 2}), env=fault_env(nonfinite_at_steps=[3, 5, 6]))
    assert proc.returncode != 0 and "exitcode  : 3" in proc.stderr, output(proc)  # torchrun reports the ranks' 3
    assert "stopped: 2 non-finite steps in a row" in proc.stderr
    skipped = metrics(run, "skipped")
    assert [(r["step"], r["consecutive"]) for r in skipped] == [(3, 1), (5, 1), (6, 2)]
    assert all(r["loss"] is None for r in skipped)  # NaN, written as null (strict JSON)
    root = run / "checkpoints"
    assert (root / "latest").read_text().strip() == "step_00000005"  # the run stopped before saving step 6

    def weights(step):
        return load_file(str(root / f"step_{step:08d}" / "consolidated" / "model.safetensors"))

    w2, w3, w4, w5 = weights(2), weights(3), weights(4), weights(5)
    assert all(torch.equal(w2[k], w3[k]) for k in w2)  # skipped: untouched
    assert not all(torch.equal(w3[k], w4[k]) for k in w3)  # applied
    assert all(torch.equal(w4[k], w5[k]) for k in w4)
    state = json.loads((root / "step_00000005" / "trainer_state.json").read_text())["progress"]
    assert (state["skipped_steps"], state["consecutive_skipped"], state["step"]) == (2, 1, 5)
    assert [r["step"] for r in metrics(run, "train")] == [1, 2, 4]  # skipped steps have their own rows


@pytest.mark.parametrize("case", ["missing_data", "tokenizer_mismatch"])
def test_data_problems_fail_before_training(data, tmp_path, case):
    run = tmp_path / "run"
    bad = {"missing_data": {"data.train": f"[{{path: {tmp_path / 'nowhere'}}}]"},
           "tokenizer_mismatch": {"train.tokenizer": data["other_tokenizer"]}}[case]
    proc = python_module("xlstm_pretrain.train", tiny_overrides(data, run, **bad))
    assert proc.returncode == 2, output(proc)
    message = {"missing_data": r"config error: data.train\[0\] \(path '.*nowhere'\): .*neither a data_prep output folder",
               "tokenizer_mismatch": r"config error: data.train\[0\] .* was tokenized with another tokenizer: "
                                     r"manifest sha256"}
    assert __import__("re").search(message[case], proc.stderr), output(proc)
    assert "Traceback" not in proc.stderr and not run.exists()  # nothing was written


FAMILY_SHRINK = ["model.vocab_size=512", "model.embedding_dim=32", "model.num_heads=4", "model.slstm_num_heads=4",
                 "model.chunk_size=16", "model.context_length=32"]


def family_cases(data, base: Path):
    def case(name, run, layout, *extra):
        overrides = tiny_overrides(data, base / name) + FAMILY_SHRINK + list(extra) + [
            "train.steps=3", "optim.warmup_steps=1", "train.micro_batch_size=4", "eval.samples=8",
            "eval.flop_milestones_per_decade=0", "logging.wandb=disabled"]
        # tiny_overrides set fp32 and the tiny model's shape; the family configs keep their own precision etc.
        overrides = [o for o in overrides if not o.startswith(("train.precision=", "model.family=", "model.slstm_at=",
                                                               "model.num_blocks=", "optim.lr="))]
        return (name, [str(REPO / "configs/runs" / run), str(REPO / "configs/layout" / layout)], overrides)

    return [
        case("paper_1_0_tp2", "xlstm_1_0_125m_15b.yaml", "tp2_zero1.yaml", "model.num_blocks=2"),
        case("paper_7_1_dp2_zero2", "xlstm_7_1_350m_300b.yaml", "dp_zero2.yaml", "model.num_blocks=4", "model.slstm_at=[1]"),
        case("paper_2_7b_tp2_sp", "xlstm_1_0_2_7b_15b.yaml", "tp4_sp_zero2.yaml", "model.num_blocks=2",
             "parallel.tensor_parallel=2"),
        case("large_7b_zero3", "xlstm_large_7b.yaml", "dp_zero3.yaml", "model.num_blocks=2",
             "optim.decay_steps=2", "optim.cooldown_steps=1",  # the recipe's batch ramp-up, shrunk: 8, then 16
             "train.batch_size_rampup=[{global_batch_size: 8, steps: 1}]", "train.global_batch_size=16"),
    ]


def test_every_config_family_runs_shrunk(data, tmp_path):
    cases = family_cases(data, tmp_path)
    results = run_distributed(run_configs, 2, cases)[0]
    for name, _, _ in cases:
        r = results[name]
        assert r["step"] == 3 and r["skipped_steps"] == 0, (name, r)
        assert math.isfinite(r["train_loss"]) and math.isfinite(r["val_loss"]), (name, r)
        assert Path(r["checkpoint"], "consolidated", "model.safetensors").is_file(), name
    large = json.loads(Path(results["large_7b_zero3"]["checkpoint"], "trainer_state.json").read_text())
    assert large["layout"] == {"world_size": 2, "tensor_parallel": 1, "context_parallel": 1, "data_parallel": 2,
                               "zero_stage": 3, "precision": "bf16-params"}
    assert large["progress"]["consumed_samples"] == 8 + 2 * 16
    lrs = [r["lr"] for r in metrics(tmp_path / "large_7b_zero3", "train")]
    assert lrs[0] == pytest.approx(5e-4) and lrs[2] == pytest.approx(0.0, abs=1e-12)  # warm-up, decay, cool-down
