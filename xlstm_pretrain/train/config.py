"""Config sections of a training run (root ``Config`` fields ``train``, ``optim``, ``checkpoint``, ``logging``,
``eval``), and the cross-section checks that need the world size.

    train:      {run_dir, steps, global_batch_size, batch_size_rampup, micro_batch_size, zero_stage, ...}
    optim:      {lr, betas, eps, weight_decay, grad_clip, schedule, warmup_steps, decay_steps, ...}
    checkpoint: {interval, keep_last, consolidated, consolidated_dtype}
    logging:    {interval, wandb, wandb_project, wandb_run_name, gate_telemetry}
    eval:       {interval, flop_milestones_per_decade, samples, ..., tasks, task_paths, tasks_every, ...}

Each section validates itself when loaded (``config_loader.build_dataclass``); ``check_run`` adds the
checks that involve several sections and the number of processes. Every problem is a ``ConfigError``.
"""

from __future__ import annotations

import math
import os
import sys
from dataclasses import dataclass, field
from typing import Any, Literal

from xlstm_pretrain.config_loader import ConfigError


def _need(cond: bool, msg: str) -> None:
    if not cond:
        raise ConfigError(msg)


@dataclass
class BatchRampStage:
    """One stage of ``train.batch_size_rampup``: ``steps`` optimizer steps of ``global_batch_size`` sequences."""

    global_batch_size: int = 0
    steps: int = 0


@dataclass
class TrainConfig:
    run_dir: str = "runs/default"  # checkpoints/, metrics.jsonl, config.yaml, deepspeed_config.json, wandb/
    steps: int = 1000  # optimizer steps of the whole run
    global_batch_size: int = 256  # sequences per optimizer step (all data-parallel ranks, all micro-batches)
    # Megatron-style batch ramp-up: these stages in order from step 0, then global_batch_size for the rest
    # (e.g. [{global_batch_size: 128, steps: 2000}, {global_batch_size: 256, steps: 2000}]; [] = none).
    # The data order is the same global sample order (each step takes the next B(step) samples); tokens,
    # FLOPs and the data position count each step's own batch; the LR schedule stays in steps.
    batch_size_rampup: list[BatchRampStage] = field(default_factory=list)
    micro_batch_size: int = 1  # sequences per rank per forward/backward; accumulation = global / (micro x DP)
    zero_stage: int = 1  # DeepSpeed ZeRO stage: 1 optimizer states, 2 + gradients, 3 + parameters
    # fp32: everything fp32. bf16: torch.autocast(bf16) compute, fp32 parameters = master weights, fp32
    # gradient reduction (the paper's setting). bf16-params: DeepSpeed bf16 (bf16 parameters and
    # activations, fp32 master weights inside ZeRO): less memory and communication.
    precision: Literal["fp32", "bf16", "bf16-params"] = "bf16"
    activation_checkpointing: bool = False  # recompute each block in backward
    seed: int = 1234  # model initialisation (the data order has its own data.seed)
    device: Literal["auto", "cpu", "cuda"] = "auto"  # auto: cuda (NCCL) if available, else cpu (gloo)
    tokenizer: str | None = None  # tokenizer.json; its sha256 must match the data manifests
    init_from: str | None = None  # plain/consolidated checkpoint dir (model.safetensors) to start from
    max_consecutive_nonfinite: int = 5  # stop the run after this many skipped steps in a row
    deepspeed: dict[str, Any] = field(default_factory=dict)  # extra keys merged into the generated config

    def validate(self) -> None:
        _need(bool(self.run_dir), "run_dir must not be empty")
        for name in ("steps", "global_batch_size", "micro_batch_size", "max_consecutive_nonfinite"):
            _need(getattr(self, name) > 0, f"{name} must be positive, got {getattr(self, name)}")
        _need(self.zero_stage in (1, 2, 3), f"zero_stage must be 1, 2 or 3, got {self.zero_stage} "
                                            "(DeepSpeed ZeRO is the one engine)")
        _need(self.global_batch_size % self.micro_batch_size == 0,
              f"global_batch_size={self.global_batch_size} is not a multiple of micro_batch_size={self.micro_batch_size}")
        for j, stage in enumerate(self.batch_size_rampup):
            for name in ("global_batch_size", "steps"):
                value = getattr(stage, name)
                _need(value > 0, f"batch_size_rampup[{j}].{name}={value} must be positive")
            _need(stage.global_batch_size % self.micro_batch_size == 0,
                  f"batch_size_rampup[{j}].global_batch_size={stage.global_batch_size} is not a multiple of "
                  f"micro_batch_size={self.micro_batch_size}")
        ramp_steps = sum(stage.steps for stage in self.batch_size_rampup)
        _need(ramp_steps < self.steps, f"batch_size_rampup stages take {ramp_steps} steps in all; they must end "
                                       f"before steps={self.steps}")
        managed = {"train_micro_batch_size_per_gpu", "gradient_accumulation_steps", "train_batch_size",
                   "gradient_clipping", "bf16", "fp16", "optimizer", "scheduler"}
        clash = sorted(managed & set(self.deepspeed))
        _need(not clash, f"deepspeed: {clash} are generated from train/optim settings; set those instead")


@dataclass
class OptimConfig:
    """AdamW with the official weight-decay groups, and the learning-rate schedule.

    lr(step), step = 0, 1, ... (the optimizer step being taken):
      warm-up   step < warmup_steps: lr * (step + 1) / warmup_steps
      main      s = step - warmup_steps
        cosine:      lr_min + (lr - lr_min) (1 + cos(pi min(s / decay_steps, 1))) / 2,  lr_min = min_lr_ratio lr
        exponential: lr * min_lr_ratio ** (s / decay_steps)  (reaches lr_min after decay_steps, keeps decaying)
        wsd, constant: lr
      cool-down the last cooldown_steps of the run: from the main-phase lr at its start down to
                cooldown_min_ratio lr, linearly or as 1 - sqrt (wsd needs cooldown_steps > 0).
    decay_steps None = up to the cool-down (or the end of the run).
    """

    lr: float = 1e-3  # peak learning rate
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    eps: float = 1e-5
    weight_decay: float = 0.1
    weight_decay_on_embedding: bool = False
    grad_clip: float = 1.0  # global gradient-norm clipping (0 = off)
    schedule: Literal["cosine", "exponential", "wsd", "constant"] = "cosine"
    warmup_steps: int = 750
    decay_steps: int | None = None
    min_lr_ratio: float = 0.1
    cooldown_steps: int = 0
    cooldown_shape: Literal["linear", "sqrt"] = "linear"
    cooldown_min_ratio: float = 0.0
    # a run shorter than warmup_steps + cooldown_steps: false = a config error; true = both shortened to fit
    # into half of the run (keeping their ratio), with a note (the quickstart's `train.steps=20`)
    fit_short_runs: bool = False

    def validate(self) -> None:
        _need(self.lr > 0 and math.isfinite(self.lr), f"lr must be positive, got {self.lr}")
        _need(len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas),
              f"betas must be two values in [0, 1), got {self.betas}")
        _need(self.eps > 0, f"eps must be positive, got {self.eps}")
        _need(self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay}")
        _need(self.grad_clip >= 0, f"grad_clip must be >= 0 (0 = off), got {self.grad_clip}")
        _need(self.warmup_steps >= 0 and self.cooldown_steps >= 0, "warmup_steps and cooldown_steps must be >= 0")
        _need(self.decay_steps is None or self.decay_steps > 0, f"decay_steps must be positive, got {self.decay_steps}")
        _need(0 <= self.min_lr_ratio <= 1 and 0 <= self.cooldown_min_ratio <= 1,
              "min_lr_ratio and cooldown_min_ratio must be in [0, 1]")
        _need(self.schedule != "exponential" or self.min_lr_ratio > 0, "schedule=exponential needs min_lr_ratio > 0")
        _need(self.schedule != "wsd" or self.cooldown_steps > 0,
              "schedule=wsd (warm-up, stable, decay) needs cooldown_steps > 0 (the decay phase)")


@dataclass
class CheckpointConfig:
    interval: int = 1000  # steps between checkpoints (0: only at the end)
    keep_last: int = 3  # older checkpoints are deleted once a newer one is complete
    save_final: bool = True
    # consolidated/ inside each checkpoint: config.yaml + model.safetensors (the full, TP-independent
    # state dict) + tokenizer.json: a plain checkpoint for evaluation, export and train.init_from
    consolidated: bool = True
    consolidated_dtype: Literal["fp32", "bf16"] = "fp32"
    # universal/ inside each checkpoint: full fp32 master weights and AdamW moments per parameter, so that
    # a run resumes on another layout (TP / CP / DP size, ZeRO stage, precision); about 3x the model in fp32
    universal: bool = True

    def validate(self) -> None:
        _need(self.interval >= 0, f"interval must be >= 0, got {self.interval}")
        _need(self.keep_last >= 1, f"keep_last must be >= 1, got {self.keep_last}")


@dataclass
class LoggingConfig:
    interval: int = 10  # steps between stdout lines / metrics.jsonl train rows
    # wandb: auto = online with an API key (WANDB_API_KEY or a wandb login), offline without one
    wandb: Literal["auto", "online", "offline", "disabled"] = "auto"
    wandb_project: str = "xlstm-pretrain"
    wandb_entity: str | None = None
    wandb_run_name: str | None = None  # default: the run_dir's name
    gate_telemetry: bool = True  # min/mean/max of input/forget gate pre-activations per block, on log steps

    def validate(self) -> None:
        _need(self.interval > 0, f"interval must be positive, got {self.interval}")


@dataclass
class EvalConfig:
    """In-training validation (and the defaults of ``python -m xlstm_pretrain.evaluate``).

    ``samples``: validation windows (of ``data.seq_len`` tokens) per evaluation, all ranks together; 0 or
    more than the split has: the whole split. A subset is one window from each of ``samples`` equal strata
    of the split, drawn with a fixed seed (``train.validation.validation_windows``): spread over every source
    and document of the split, so the loss estimates the whole split's loss, and the same windows at every
    evaluation and for every layout (DP/TP/CP sizes, micro-batch), resumed or not.
    """

    interval: int = 1000  # also evaluate every this many steps (0: off)
    # evaluate when the cumulative training FLOPs cross 10^(k / per_decade) (a grid shared by all runs,
    # so that runs of different sizes are compared at the same compute); 0: off
    flop_milestones_per_decade: int = 4
    min_flops: float = 0.0  # no milestone evaluations below this many FLOPs
    samples: int = 512  # validation windows per evaluation, spread over the split (0: the whole split)
    micro_batch_size: int | None = None  # default: train.micro_batch_size
    at_end: bool = True
    # Downstream tasks (lm-evaluation-harness, the optional extra `eval`; xlstm_pretrain/downstream/):
    # lm-eval task names (e.g. [lambada_openai, hellaswag, piqa, arc_easy, arc_challenge, winogrande]) or
    # tasks of the local YAML folders in task_paths. They run with the validation at every tasks_every-th
    # FLOP milestone (10^(k/per_decade) with k divisible by tasks_every) and at the end; results go into the
    # val rows of metrics.jsonl and wandb as downstream/<task>/<metric>. Every task is loaded (its data too)
    # before training starts: a misspelt or unreachable task is a config error, not a failure at step 10,000.
    tasks: list[str] = field(default_factory=list)
    task_paths: list[str] = field(default_factory=list)  # folders of lm-eval task YAML files
    tasks_every: int = 1
    tasks_limit: int | None = None  # documents per task (None: all)
    tasks_num_fewshot: int | None = None  # None: zero-shot (the paper's setting)
    tasks_batch_size: int = 16  # contexts (and continuations) per forward

    def validate(self) -> None:
        _need(self.interval >= 0 and self.flop_milestones_per_decade >= 0,
              "interval and flop_milestones_per_decade must be >= 0")
        _need(self.samples >= 0, f"samples must be >= 0, got {self.samples}")
        _need(self.micro_batch_size is None or self.micro_batch_size > 0, "micro_batch_size must be positive")
        _need(len(set(self.tasks)) == len(self.tasks) and all(t.strip() for t in self.tasks),
              f"tasks must be distinct, non-empty names, got {self.tasks}")
        _need(self.tasks_every >= 1, f"tasks_every must be >= 1, got {self.tasks_every}")
        _need(self.tasks_limit is None or self.tasks_limit > 0, f"tasks_limit must be positive, got {self.tasks_limit}")
        _need(self.tasks_num_fewshot is None or self.tasks_num_fewshot >= 0, "tasks_num_fewshot must be >= 0")
        _need(self.tasks_batch_size > 0, f"tasks_batch_size must be positive, got {self.tasks_batch_size}")


# ---- checks across sections ---------------------------------------------------------------------


def check_run(cfg, world_size: int) -> int:
    """Checks that need several sections and the world size; returns the gradient-accumulation steps."""
    from xlstm_pretrain.parallel import check_layout

    dp = check_layout(cfg.model, cfg.parallel, world_size, cfg.data.seq_len)
    t = cfg.train
    per_step = t.micro_batch_size * dp
    if t.global_batch_size % per_step:
        raise ConfigError(f"train.global_batch_size={t.global_batch_size} must be a multiple of "
                          f"train.micro_batch_size x data-parallel size = {t.micro_batch_size} x {dp}")
    for j, stage in enumerate(t.batch_size_rampup):
        if stage.global_batch_size % per_step:
            raise ConfigError(f"train.batch_size_rampup[{j}].global_batch_size={stage.global_batch_size} must be a "
                              f"multiple of train.micro_batch_size x data-parallel size = {t.micro_batch_size} x {dp}")
    if not cfg.data.train:
        raise ConfigError("data.train is empty: list at least one {path, weight} (a data_prep output folder)")
    note = fit_schedule_to_run(cfg.optim, t.steps)
    if note and os.environ.get("RANK", "0") == "0":
        print(f"note: {note}", file=sys.stderr, flush=True)
    return t.global_batch_size // per_step


def fit_schedule_to_run(optim: OptimConfig, steps: int) -> str | None:
    """Warm-up and cool-down longer than the run: a ConfigError, or with ``optim.fit_short_runs`` both
    shortened in place to half of the run (keeping their ratio; a cool-down stays >= 1 step, which wsd needs).
    Returns the note to log, None when they fit."""
    warmup, cooldown = optim.warmup_steps, optim.cooldown_steps
    if warmup + cooldown <= steps:
        return None
    too_long = f"optim.warmup_steps + optim.cooldown_steps = {warmup} + {cooldown} exceed train.steps={steps}"
    if not optim.fit_short_runs:
        raise ConfigError(f"{too_long} (shorten them, or set optim.fit_short_runs=true to have them fitted)")
    half = steps // 2
    optim.warmup_steps = warmup * half // (warmup + cooldown)
    optim.cooldown_steps = max(cooldown * half // (warmup + cooldown), 1) if cooldown else 0
    return f"{too_long}: shortened to {optim.warmup_steps} + {optim.cooldown_steps} (optim.fit_short_runs)"
