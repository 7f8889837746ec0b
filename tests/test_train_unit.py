"""Trainer pieces without processes: schedules, weight-decay groups, FLOP milestones, configs, checkpoint
bookkeeping, MFU, the generated DeepSpeed config."""

import json
import math
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from xlstm_pretrain.config import ConfigError
from xlstm_pretrain.model import ModelConfig, build_model, count_params
from xlstm_pretrain.train import setup
from xlstm_pretrain.train.batch_schedule import BatchSchedule
from xlstm_pretrain.train.checkpoint import LATEST, Checkpointer
from xlstm_pretrain.train.config import OptimConfig, check_run
from xlstm_pretrain.train.validation import crossed_milestone, unigram_cross_entropy
from xlstm_pretrain.train.metrics import device_mfu, training_flops_per_token
from xlstm_pretrain.train.optim import LRSchedule, decay_names, weight_decay_groups

REPO = Path(__file__).resolve().parents[1]


# ---- learning-rate schedules --------------------------------------------------------------------


def test_cosine_schedule_matches_the_paper_recipe():
    cfg = OptimConfig(lr=1.0, warmup_steps=10, min_lr_ratio=0.1, schedule="cosine")
    lr = LRSchedule(cfg, total_steps=110)
    assert lr(0) == pytest.approx(0.1) and lr(9) == pytest.approx(1.0)  # linear warm-up to the peak
    assert lr(10) == pytest.approx(1.0)
    assert lr(60) == pytest.approx(0.1 + 0.9 * 0.5)  # half way: midpoint between peak and 10 %
    assert lr(110) == pytest.approx(0.1) and lr(500) == pytest.approx(0.1)  # floor at 10 % of the peak
    # decay_steps set explicitly (the 15B recipe: decays over 30k steps, training stops earlier)
    lr = LRSchedule(OptimConfig(lr=1e-3, warmup_steps=750, decay_steps=29250), total_steps=28610)
    assert lr(750 + 29250) == pytest.approx(1e-4)
    assert lr(28609) > 1e-4


def test_seven_b_exponential_schedule():
    cfg = OptimConfig(lr=5e-4, warmup_steps=3000, schedule="exponential", decay_steps=497000, min_lr_ratio=0.1,
                      cooldown_steps=7000, cooldown_min_ratio=0.0)
    lr = LRSchedule(cfg, total_steps=550000)
    assert lr(2999) == pytest.approx(5e-4)
    assert lr(500000) == pytest.approx(5e-5)  # 10 % of the peak at step 500k
    assert lr(250000) == pytest.approx(5e-4 * 0.1 ** (247000 / 497000))
    start = 5e-4 * 0.1 ** ((543000 - 3000) / 497000)  # the cool-down starts where the decay got to
    assert lr(542999) == pytest.approx(5e-4 * 0.1 ** ((542999 - 3000) / 497000))
    assert lr(543000 + 3499) == pytest.approx(start * (1 - 3500 / 7000))
    assert lr(549999) == pytest.approx(0.0, abs=1e-15)
    values = [lr(s) for s in range(3000, 550000, 997)]
    assert all(a >= b for a, b in zip(values, values[1:]))


def test_wsd_schedule():
    cfg = OptimConfig(lr=2.0, warmup_steps=10, schedule="wsd", cooldown_steps=20, cooldown_shape="sqrt")
    lr = LRSchedule(cfg, total_steps=100)
    assert lr(50) == lr(79) == 2.0  # stable phase
    assert lr(80) == pytest.approx(2.0 * (1 - math.sqrt(1 / 20)))
    assert lr(99) == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ConfigError, match="wsd .* needs cooldown_steps > 0"):
        OptimConfig(schedule="wsd").validate()


# ---- batch-size ramp-up -------------------------------------------------------------------------


def test_batch_size_rampup_schedule():
    seven_b = BatchSchedule(((128, 2000), (256, 2000)), 512)
    for sched in (seven_b, BatchSchedule(((2, 2), (4, 2)), 8), BatchSchedule(((8, 3),), 4), BatchSchedule((), 16)):
        consumed = 0
        for step in range(sched.ramp_steps + 50):  # the closed form is the running sum of the batches
            assert sched.consumed_samples(step) == consumed, (sched, step)
            consumed += sched.batch_size(step)
        assert sched.consumed_samples(10**6) == sched.consumed_samples(sched.ramp_steps) + \
            (10**6 - sched.ramp_steps) * sched.final
    # boundaries: the first step of each stage (0-based steps)
    assert [seven_b.batch_size(s) for s in (0, 1999, 2000, 3999, 4000, 549_999)] == [128, 128, 256, 256, 512, 512]
    assert [seven_b.consumed_samples(s) for s in (2000, 4000)] == [256_000, 768_000]
    assert seven_b.consumed_samples(550_000) == 768_000 + 546_000 * 512  # 2.296T tokens at 8192
    assert (seven_b.ramp_steps, seven_b.max_batch_size, seven_b.ramped) == (4000, 512, True)
    assert [seven_b.grad_accum(s, 1, 16) for s in (0, 2000, 4000)] == [8, 16, 32]  # 128 GPUs, TP 8: DP 16
    assert seven_b.describe() == "128 (2000 steps) -> 256 (2000 steps) -> 512"
    flat = BatchSchedule((), 16)
    assert (flat.ramped, flat.ramp_steps, flat.describe(), flat.batch_size(0), flat.consumed_samples(5)) == \
        (False, 0, "16", 16, 80)
    with pytest.raises(ValueError, match="not a multiple of micro_batch_size x dp_size = 1 x 3"):
        seven_b.grad_accum(0, 1, 3)
    with pytest.raises(ValueError, match="must be positive"):
        BatchSchedule(((128, 0),), 512)
    with pytest.raises(ValueError, match="step must be >= 0"):
        seven_b.consumed_samples(-1)
    # from the config: the 7B recipe's stages
    cfg = setup.load_run_config([REPO / "configs/runs/xlstm_large_7b.yaml"])
    assert BatchSchedule.from_config(cfg.train) == seven_b


# ---- weight-decay groups ------------------------------------------------------------------------


def test_official_weight_decay_groups_paper_family():
    model = build_model(ModelConfig(vocab_size=64, embedding_dim=32, num_blocks=2, num_heads=4, slstm_at=[1]))
    decay, other = decay_names(model, OptimConfig())
    # xlstm_pretrain/REFERENCE.md §4.2: decay iff "weight" in the name and "norm" not, minus the token embedding
    for name in ("lm_head.weight", "blocks.0.mlstm.proj_up.weight", "blocks.0.mlstm.q_proj.weight",
                 "blocks.0.mlstm.conv.weight", "blocks.0.mlstm.igate.weight", "blocks.0.mlstm.proj_down.weight",
                 "blocks.1.slstm.fgate.weight", "blocks.1.ffn.proj_up.weight", "blocks.1.ffn.proj_down.weight"):
        assert name in decay, name
    for name in ("embedding.weight", "out_norm.weight", "blocks.0.norm.weight", "blocks.0.mlstm.igate.bias",
                 "blocks.0.mlstm.fgate.bias", "blocks.0.mlstm.conv.bias", "blocks.0.mlstm.learnable_skip",
                 "blocks.0.mlstm.outnorm.weight", "blocks.1.slstm.recurrent_kernel", "blocks.1.slstm.bias",
                 "blocks.1.slstm.group_norm.weight", "blocks.1.ffn_norm.weight"):
        assert name in other, name
    assert set(decay) | set(other) == {n for n, _ in model.named_parameters()} and not set(decay) & set(other)
    groups = weight_decay_groups(model, OptimConfig(weight_decay=0.1))
    assert [g["weight_decay"] for g in groups] == [0.1, 0.0]
    assert sum(p.numel() for g in groups for p in g["params"]) == count_params(model)
    assert "embedding.weight" in decay_names(model, OptimConfig(weight_decay_on_embedding=True))[0]


def test_official_weight_decay_groups_large_family_and_tied():
    model = build_model(ModelConfig(family="large", vocab_size=64, embedding_dim=32, num_blocks=1, num_heads=4))
    decay, other = decay_names(model, OptimConfig())
    assert {"blocks.0.mlstm_layer.q.weight", "blocks.0.mlstm_layer.igate_preact.weight",
            "blocks.0.ffn.proj_up_gate.weight", "lm_head.weight"} <= set(decay)
    assert {"blocks.0.mlstm_layer.igate_preact.bias", "blocks.0.mlstm_layer.fgate_preact.bias",
            "blocks.0.norm_mlstm.weight", "blocks.0.mlstm_layer.multihead_norm.weight", "embedding.weight"} <= set(other)
    tied = build_model(ModelConfig(vocab_size=64, embedding_dim=32, num_blocks=1, num_heads=4, tie_embeddings=True))
    groups = weight_decay_groups(tied, OptimConfig())
    assert all(p is not tied.embedding.weight for p in groups[0]["params"])  # the tied head is the embedding
    assert sum(p.numel() for g in groups for p in g["params"]) == count_params(tied)


# ---- evaluation points and baselines ------------------------------------------------------------


def test_flop_milestones_are_a_shared_log_grid():
    assert crossed_milestone(0, 1.5e10, 2) == pytest.approx(1e10)
    assert crossed_milestone(1.5e10, 2.9e10, 2) is None
    assert crossed_milestone(2.9e10, 3.2e10, 2) == pytest.approx(10**10.5)
    assert crossed_milestone(0.9e12, 5e12, 4) == pytest.approx(10**12.5)  # several crossed: the largest
    assert crossed_milestone(0, 1e9, 4, min_flops=1e10) is None
    assert crossed_milestone(1e10, 2e10, 0) is None
    # steps of equal FLOPs: evaluations thin out logarithmically
    steps = [s for s in range(1, 10001) if crossed_milestone((s - 1) * 1e9, s * 1e9, 4)]
    assert steps[:4] == [1, 2, 4, 6] and len(steps) == 17


def test_unigram_baseline():
    counts = torch.tensor([3, 1, 0, 0]).numpy()  # smoothed: (4, 2, 1, 1) / 8
    targets = torch.tensor([0, 1]).numpy()
    assert unigram_cross_entropy(counts, targets) == pytest.approx(-(math.log(0.5) + math.log(0.25)) / 2)


# ---- MFU and FLOPs ------------------------------------------------------------------------------


def test_mfu_only_for_known_devices():
    assert device_mfu(1e12, None) is None  # CPU: no peak, no MFU
    assert device_mfu(1e12, "Some Future Accelerator") is None
    assert device_mfu(98.9e12, "NVIDIA H100 80GB HBM3") == pytest.approx(0.1)
    cfg = ModelConfig(vocab_size=512, embedding_dim=32, num_blocks=3, num_heads=4, chunk_size=16, slstm_at=[1])
    assert training_flops_per_token(cfg, 32) > 6 * count_params(cfg, exclude_embedding=True)


# ---- configs ------------------------------------------------------------------------------------


RUN_CONFIGS = sorted((REPO / "configs" / "runs").glob("*.yaml"))
LAYOUTS = sorted((REPO / "configs" / "layout").glob("*.yaml"))


def test_config_families_present():
    names = {p.stem for p in RUN_CONFIGS}
    for kind in ("1_0", "7_1"):
        for size in ("125m", "350m", "760m", "1_3b"):
            assert {f"xlstm_{kind}_{size}_15b", f"xlstm_{kind}_{size}_300b"} <= names
    assert {"xlstm_1_0_2_7b_15b", "xlstm_large_7b"} <= names


# a layout file is named after what it sets: dp | tp<N>, optional _sp (sequence parallel), _zero<stage>
LAYOUT_NAME = re.compile(r"(?:dp|tp(?P<tp>\d+))(?P<sp>_sp)?_zero(?P<zero>[123])")


@pytest.mark.parametrize("layout", LAYOUTS, ids=lambda p: p.stem)
def test_layouts_set_what_their_names_say(layout):
    name = LAYOUT_NAME.fullmatch(layout.stem)
    assert name, f"{layout.name}: layout names say dp|tp<N>[_sp]_zero<stage>"
    cfg = setup.load_run_config([RUN_CONFIGS[0], layout])
    assert (cfg.parallel.tensor_parallel, cfg.parallel.sequence_parallel, cfg.train.zero_stage) == (
        int(name["tp"] or 1), bool(name["sp"]), int(name["zero"]))


@pytest.mark.parametrize("path", RUN_CONFIGS, ids=lambda p: p.stem)
def test_run_configs_follow_the_papers(path):
    cfg = setup.load_run_config([path])
    table7 = {"125m": (3e-3, 1.5e-3), "350m": (1e-3, 7.5e-4), "760m": (9e-4, 6.25e-4), "1_3b": (9e-4, 5e-4),
              "2_7b": (8e-4, None)}
    if cfg.model.family == "paper":
        size, budget = path.stem[len("xlstm_1_0_"):].rsplit("_", 1)
        assert cfg.optim.lr == table7[size][0 if budget == "15b" else 1]
        assert (cfg.data.seq_len, cfg.optim.warmup_steps, cfg.optim.min_lr_ratio, cfg.optim.eps) == (2048, 750, 0.1, 1e-5)
        batch = 512 if (size, budget) == ("1_3b", "300b") else 256
        assert cfg.train.global_batch_size == batch
        tokens = cfg.train.steps * batch * 2048
        assert (14.9e9 < tokens < 15.1e9) if budget == "15b" else (300e9 <= tokens < 320e9)
        assert cfg.model.vocab_size == 50304 and cfg.optim.schedule == "cosine"
        assert cfg.train.batch_size_rampup == []  # the NeurIPS runs use one batch size throughout
    else:
        assert (cfg.optim.lr, cfg.optim.schedule) == (5e-4, "exponential")
        assert (cfg.data.seq_len, cfg.train.global_batch_size) == (8192, 512)
        assert (cfg.optim.grad_clip, cfg.optim.eps, cfg.train.zero_stage) == (0.5, 1e-8, 3)
        ramp = [(s.global_batch_size, s.steps) for s in cfg.train.batch_size_rampup]
        assert ramp == [(128, 2000), (256, 2000)]  # 7B paper: 128 -> 256 -> 512
    # every layout combines with every run
    for layout in LAYOUTS:
        combined = setup.load_run_config([path, layout])
        assert combined.train.steps == cfg.train.steps


@pytest.mark.parametrize("overrides, world, match", [
    (["parallel.context_parallel=2", "data.seq_len=47"], 2, "sequence length 47 is not divisible by context_parallel=2"),
    (["train.global_batch_size=12", "train.micro_batch_size=4"], 2,
     "must be a multiple of train.micro_batch_size x data-parallel size"),
    (["parallel.tensor_parallel=3"], 6, "num_heads=4 is not divisible by tensor_parallel=3"),
    (["train.zero_stage=0"], 1, "zero_stage must be 1, 2 or 3"),
    (["train.precision=fp16"], 1, r"'train.precision' must be one of \['fp32', 'bf16', 'bf16-params'\]"),
    (["train.stepz=3"], 1, r"unknown key 'train.stepz' \(did you mean 'train.steps'\?\)"),
    (["train.deepspeed={gradient_clipping: 2.0}"], 1, r"generated from train/optim settings"),
    (["optim.warmup_steps=10", "train.steps=5"], 1, "exceed train.steps=5"),
    (["optim.betas=[0.9]"], 1, "betas must be two values"),
    (["data.train=[]"], 1, "data.train is empty"),
    (["train.batch_size_rampup=[{global_batch_size: 0, steps: 2}]"], 1,
     r"train: batch_size_rampup\[0\].global_batch_size=0 must be positive"),
    (["train.batch_size_rampup=[{global_batch_size: 4, steps: 2}, {global_batch_size: 4}]"], 1,
     r"batch_size_rampup\[1\].steps=0 must be positive"),
    (["train.batch_size_rampup=[{global_batch_size: 4, steps: 2}, {global_batch_size: 5, steps: 1}]"], 1,
     r"batch_size_rampup\[1\].global_batch_size=5 is not a multiple of micro_batch_size=2"),
    (["train.batch_size_rampup=[{global_batch_size: 2, steps: 2}]"], 2,
     r"train.batch_size_rampup\[0\].global_batch_size=2 must be a multiple of train.micro_batch_size x "
     r"data-parallel size = 2 x 2"),
    (["train.batch_size_rampup=[{global_batch_size: 4, steps: 60}, {global_batch_size: 6, steps: 40}]"], 1,
     "batch_size_rampup stages take 100 steps in all; they must end before steps=100"),
    (["train.batch_size_rampup=[{global_batch: 4, steps: 2}]"], 1,
     r"unknown key 'train.batch_size_rampup\[0\].global_batch' \(did you mean "
     r"'train.batch_size_rampup\[0\].global_batch_size'\?\)"),
])
def test_config_errors_are_clear(overrides, world, match):
    base = ["model.vocab_size=512", "model.embedding_dim=32", "model.num_blocks=2", "train.steps=100",
            "optim.warmup_steps=2", "train.global_batch_size=8", "train.micro_batch_size=2",
            "data.train=[{path: somewhere}]"]
    with pytest.raises(ConfigError, match=match):
        cfg = setup.load_run_config([], base + overrides)
        check_run(cfg, world)


def test_generated_deepspeed_config(capsys):
    from xlstm_pretrain.train.trainer import main

    rc = main(["--config", str(REPO / "configs/runs/xlstm_7_1_125m_15b.yaml"), "--config",
               str(REPO / "configs/layout/tp2_zero1.yaml"), "--print-deepspeed-config", "--world-size", "8",
               "train.zero_stage=2", "train.precision=bf16-params"])
    assert rc == 0
    ds = json.loads(capsys.readouterr().out)
    # DP = 8 / TP 2 = 4; 256 = 8 x 4 x 8 accumulation steps (the run's micro-batch 8: tools/plan.py)
    assert (ds["train_batch_size"], ds["train_micro_batch_size_per_gpu"], ds["gradient_accumulation_steps"]) == (256, 8, 8)
    assert ds["zero_optimization"]["stage"] == 2 and ds["bf16"]["enabled"] and ds["gradient_clipping"] == 1.0
    assert ds["zero_allow_untested_optimizer"] and "optimizer" not in ds  # our torch AdamW, not a JIT-built one


# ---- checkpoint bookkeeping ---------------------------------------------------------------------


def test_latest_only_names_complete_checkpoints(tmp_path):
    cfg = setup.load_run_config([], [f"train.run_dir={tmp_path}", "checkpoint.keep_last=2"])
    rt = SimpleNamespace(is_main=True, rank=0, world_size=1)
    ck = Checkpointer(cfg, None, None, rt, SimpleNamespace(tp=1, cp=1, dp=1), None)
    assert ck.find("auto") is None and ck.find("none") is None  # a fresh run
    root = tmp_path / "checkpoints"
    (root / "step_00000010").mkdir(parents=True)
    (root / "step_00000010" / "trainer_state.json").write_text("{}")
    (root / LATEST).write_text("step_00000010\n")
    (root / ".tmp-step_00000020").mkdir()  # a write that was killed half way
    (root / "step_00000030").mkdir()  # renamed, but killed before `latest` was updated
    assert ck.find("auto") == root / "step_00000010"
    with pytest.raises(ConfigError, match="already has checkpoints"):
        ck.find("none")
    with pytest.raises(ConfigError, match="not a complete checkpoint"):
        ck.find(str(root / ".tmp-step_00000020"))
    ck.clean_stale(10)
    assert sorted(p.name for p in root.iterdir()) == [LATEST, "step_00000010"]


# ---- model setup: init_from, activation checkpointing, resume compatibility -----------------------


def tiny_run_config(tmp_path, *extra):
    return setup.load_run_config([], ["model.vocab_size=64", "model.embedding_dim=32", "model.num_blocks=3",
                                      "model.num_heads=4", "model.chunk_size=8", "model.slstm_at=[1]",
                                      f"train.run_dir={tmp_path}", *extra])


def test_init_from_a_plain_checkpoint(tmp_path):
    from safetensors.torch import save_file

    from xlstm_pretrain.parallel import single_process_state

    cfg = tiny_run_config(tmp_path, "train.seed=1")
    source = setup.build_parallel_model(cfg, single_process_state(), torch.device("cpu"))
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(tmp_path / "model.safetensors"))
    other = tiny_run_config(tmp_path, "train.seed=2", f"train.init_from={tmp_path}")
    model = setup.build_parallel_model(other, single_process_state(), torch.device("cpu"))
    assert all(torch.equal(v, source.state_dict()[k]) for k, v in model.state_dict().items())
    wrong = tiny_run_config(tmp_path, "model.num_blocks=2", "model.slstm_at=[]", f"train.init_from={tmp_path}")
    with pytest.raises(ConfigError, match="do not match model"):
        setup.build_parallel_model(wrong, single_process_state(), torch.device("cpu"))


@pytest.mark.parametrize("family", ["paper", "large"])
def test_activation_checkpointing_changes_nothing_but_memory(tmp_path, family):
    from xlstm_pretrain.parallel import lm_loss, single_process_state

    extra = ["model.family=large", "model.slstm_at=[]"] if family == "large" else []
    cfg = tiny_run_config(tmp_path, *extra)
    ids = torch.randint(0, 64, (2, 17), generator=torch.Generator().manual_seed(0))
    bounds = torch.zeros(2, 16, dtype=torch.bool)
    bounds[0, 7] = True
    out = []
    for ckpt in (False, True):
        cfg.train.activation_checkpointing = ckpt
        model = setup.build_parallel_model(cfg, single_process_state(), torch.device("cpu"))
        loss = lm_loss(model, model(ids[:, :-1], doc_boundaries=bounds), ids[:, 1:]).mean()
        loss.backward()
        out.append((loss.item(), {n: p.grad.clone() for n, p in model.named_parameters()}))
    assert out[0][0] == out[1][0]
    assert all(torch.allclose(out[0][1][n], g, atol=1e-7, rtol=1e-6) for n, g in out[1][1].items())


def test_resume_refuses_incompatible_checkpoints(tmp_path):
    from dataclasses import asdict

    from xlstm_pretrain.config import to_dict
    from xlstm_pretrain.train.checkpoint import STATE_FILE, Progress

    cfg = tiny_run_config(tmp_path)
    rt = SimpleNamespace(is_main=True, rank=0, world_size=2)
    ck = Checkpointer(cfg, None, None, rt, SimpleNamespace(tp=2, cp=1, dp=1), "a" * 64)
    saved = {"progress": asdict(Progress(step=5)), "layout": ck.layout(), "tokenizer_sha256": "a" * 64,
             "model": to_dict(cfg.model), "data": {"seq_len": cfg.data.seq_len, "seed": cfg.data.seed,
                                                   "global_batch_size": cfg.train.global_batch_size}}
    path = tmp_path / "step_00000005"
    path.mkdir()

    def check(**changes):
        (path / STATE_FILE).write_text(json.dumps({**saved, **changes}))
        return ck.check_compatible(path)

    assert check()["progress"]["step"] == 5
    with pytest.raises(ConfigError, match="tokenizer sha256 bbbbbbbbbbbb... != current aaaaaaaaaaaa"):
        check(tokenizer_sha256="b" * 64)
    with pytest.raises(ConfigError, match="layout .* train.init_from"):
        check(layout={**saved["layout"], "tensor_parallel": 1, "data_parallel": 2})
    with pytest.raises(ConfigError, match=r"model config differs in \['num_blocks'\]"):
        check(model={**saved["model"], "num_blocks": 4})
    with pytest.raises(ConfigError, match="data order settings"):
        check(data={**saved["data"], "seq_len": 4096})
    # a batch ramp-up fixes the data position of every step: adding or changing one is refused too
    from xlstm_pretrain.train.config import BatchRampStage

    cfg.train.batch_size_rampup = [BatchRampStage(global_batch_size=64, steps=10)]
    with pytest.raises(ConfigError, match=r"data order settings .* != current .*'batch_size_rampup': \[\[64, 10\]\]"):
        check()
    assert check(data=ck.data_order())["progress"]["step"] == 5


def test_extra_deepspeed_keys_merge_into_the_generated_config():
    cfg = setup.load_run_config([], ["train.zero_stage=2", "train.deepspeed={zero_optimization: {overlap_comm: true}}"])
    ds = setup.deepspeed_config_for(cfg, dp_size=2, grad_accum=4)
    assert ds["zero_optimization"] == {"stage": 2, "overlap_comm": True}
    bad = setup.load_run_config([], ["train.deepspeed={zero_optimization: {stage: 3}}"])
    with pytest.raises(ConfigError, match="use train.zero_stage"):
        setup.deepspeed_config_for(bad, dp_size=1, grad_accum=1)


def test_hooks_from_the_environment(tmp_path):
    """XLSTM_TRAIN_HOOKS names installers (module:function or file.py:function) that add callbacks."""
    from xlstm_pretrain.train.hooks import HOOKS_ENV, hooks_from_env

    (tmp_path / "my_hooks.py").write_text(
        "def install(hooks):\n    hooks.micro_batch_loss.append(lambda step, loss: loss * step)\n"
        "import pathlib\n"
        "SEEN = pathlib.Path(__file__).parent / 'seen'\n"
        "def install_more(hooks):\n"
        "    hooks.after_step.append(lambda step, loss: SEEN.write_text(f'{step} {loss}'))\n")
    assert hooks_from_env({}).micro_batch_loss == []
    hooks = hooks_from_env({HOOKS_ENV: f"{tmp_path / 'my_hooks.py'}:install, {tmp_path / 'my_hooks.py'}:install_more"})
    assert hooks.transform_loss(3, torch.tensor(2.0)).item() == 6.0
    hooks.on_step_done(4, 1.5)
    assert (tmp_path / "seen").read_text() == "4 1.5"
    hooks = hooks_from_env({HOOKS_ENV: "fault_hooks:install"})  # a module on sys.path (tests/)
    assert hooks.micro_batch_loss == [] and hooks.after_step == []  # no XLSTM_TEST_FAULTS: nothing to inject
    for bad, match in [("no_colon", "expected module:function"), (f"{tmp_path / 'my_hooks.py'}:nope", "no function"),
                       (f"{tmp_path / 'missing.py'}:install", "is not a Python file")]:
        with pytest.raises(ConfigError, match=match):
            hooks_from_env({HOOKS_ENV: bad})
