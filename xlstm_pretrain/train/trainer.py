"""The training loop, top to bottom.

    torchrun --nproc_per_node N -m xlstm_pretrain.train --config configs/runs/RUN.yaml [key=value ...]
    deepspeed --num_gpus N --module xlstm_pretrain.train --config ...     (passes --local_rank)

``train()`` reads as the run does; each part is one ``Trainer`` method:

    Trainer(...)       setup: config, processes, data and tokenizer checks (every problem fails here, before
                       anything is written); the model (seeded, TP-sharded), AdamW with the weight-decay
                       groups, the DeepSpeed ZeRO engine; resume from the latest complete checkpoint
                       (--resume auto) or start fresh
    start()            config.yaml, deepspeed_config.json, what runs where; the data stream from the resume point
    train_step()       lr from the schedule; the step's global batch (train.batch_size_rampup, then
                       train.global_batch_size) as micro-batches forward/backward (DeepSpeed accumulates,
                       reduces, clips and steps at the boundary; a non-finite loss or gradient norm makes it
                       skip the update)
    record_step()      progress counters, the train row (metrics.jsonl, stdout, wandb) or the skipped step
    validate_if_due()  validation at FLOP milestones, intervals and the end; eval.tasks (downstream tasks through
                       lm-evaluation-harness: downstream/in_training.py) at milestones and the end
    checkpoint_if_due()
    hooks.on_step_done()  test/debug callbacks (hooks.py; XLSTM_TRAIN_HOOKS for the command line)
    finish()           summary.json, loss.png
Exit codes: 0 done, 2 config/data error (before training), 3 stopped after too many non-finite steps.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

import xlstm_kernels
from xlstm_pretrain.config import ConfigError, dump_yaml
from xlstm_pretrain.downstream.in_training import DownstreamEvaluator

from . import setup
from .batch_schedule import BatchSchedule
from .checkpoint import Checkpointer, Progress
from .config import check_run
from .hooks import TrainerHooks, hooks_from_env
from .metrics import GateTelemetry, MetricsLogger, Window, device_mfu, memory_gib, plot_metrics, training_flops_per_token
from .optim import LRSchedule, set_lr
from .validation import crossed_milestone, evaluate, validation_slice


class NonFiniteStop(RuntimeError):
    """Too many non-finite steps in a row; the last checkpoint is left as it was."""


def micro_batch_loss(engine, batch: dict, device, autocast, state) -> torch.Tensor:
    """This rank's share of the micro-batch's mean token loss (TP: vocab-parallel cross entropy, the same on
    all TP ranks). With context parallelism each rank takes its contiguous slice of every sequence and
    divides its token-loss sum by the token count of the whole sequences (DeepSpeed sums gradients over CP).
    With ``model.fused_ops="fla"`` (TP == 1) the model returns its normed hidden states and the LM head and
    cross entropy run fused, without materialising the logits (``lm_loss_from_hidden``)."""
    from xlstm_pretrain.parallel import fused_loss_applies, lm_loss, lm_loss_from_hidden, shard_sequence, token_count

    batch = shard_sequence(batch, state)
    labels = batch["labels"].to(device, non_blocking=True)
    inputs = (batch["input_ids"].to(device, non_blocking=True),)
    bounds = batch["doc_boundaries"].to(device, non_blocking=True)
    xlstm_kernels.register_document_boundaries(bounds, batch["doc_boundaries"])  # no per-layer host syncs
    if fused_loss_applies(engine.module):
        with autocast:
            hidden = engine(*inputs, doc_boundaries=bounds, return_hidden=True)
            loss_sum = lm_loss_from_hidden(engine.module, hidden, labels)
        return loss_sum / token_count(labels, state)
    with autocast:
        logits = engine(*inputs, doc_boundaries=bounds)
    return lm_loss(engine.module, logits, labels).sum() / token_count(labels, state)


def train(cfg, resume: str = "auto", local_rank: int | None = None, hooks: TrainerHooks | None = None) -> dict:
    """Train ``cfg`` to ``train.steps``; returns the run summary (also written to RUN_DIR/summary.json)."""
    trainer = Trainer(cfg, resume, local_rank, hooks or TrainerHooks())
    trainer.start()
    while trainer.progress.step < cfg.train.steps:
        result = trainer.train_step()
        trainer.record_step(result)
        trainer.validate_if_due(result)
        trainer.checkpoint_if_due(result)
        trainer.hooks.on_step_done(result.step, result.loss)
    return trainer.finish()


@dataclass
class StepResult:
    """One optimizer step as taken: what the log, validation and checkpoint decisions need."""

    step: int  # 1-based, as logged
    loss: float  # the global mean token loss (NaN for a skipped step)
    grad_norm: float
    applied: bool  # False: DeepSpeed skipped the update (non-finite loss or gradient norm)
    seconds: float
    batch_size: int  # sequences (train.batch_size_rampup, then train.global_batch_size)
    tokens: int
    flops: float
    flops_before: float  # the run's FLOPs before this step (a validation milestone is crossed in between)
    log: bool  # a logging step (logging.interval, the first and the last step)
    gates: dict | None  # gate telemetry, on logging steps


class Trainer:
    """Everything a run builds before its first step, and the steps of the loop as methods.

    ``__init__`` is the setup, in the order that makes every config, data-path and tokenizer problem fail
    before the model is built and before anything is written: checks, data, model and engine, resume.
    """

    def __init__(self, cfg, resume: str, local_rank: int | None, hooks: TrainerHooks):
        from xlstm_pretrain.parallel import init_parallel_state

        self.cfg, self.hooks = cfg, hooks
        t = cfg.train
        # ---- checks before anything is built or written
        self.rt = setup.init_distributed(t.device, local_rank)
        self.grad_accum = check_run(cfg, self.rt.world_size)  # of train.global_batch_size (the engine is built with it)
        self.batch_schedule = BatchSchedule.from_config(t)
        self.data = setup.build_data(cfg)
        self.downstream = DownstreamEvaluator.from_config(cfg)  # eval.tasks: each loads now, or a ConfigError
        self.state = init_parallel_state(cfg.parallel, self.rt.device.type)
        self.run_dir = Path(t.run_dir)
        self.checkpointer = Checkpointer(cfg, None, None, self.rt, self.state, self.data.tokenizer_sha256, hooks)
        self.resume_from = self.checkpointer.find(resume)
        if self.resume_from is not None:
            self.checkpointer.check_compatible(self.resume_from)
        self.eval_mb = cfg.eval.micro_batch_size or t.micro_batch_size
        self.val_indices = (validation_slice(len(self.data.validation), cfg.eval.samples, self.eval_mb, self.state.dp,
                                             self.state.dp_rank) if self.data.validation is not None else None)
        # ---- model, optimizer, engine
        self.model = setup.build_parallel_model(cfg, self.state, self.rt.device)
        self.engine, self.optimizer = setup.build_engine(cfg, self.model, self.state, self.grad_accum)
        self.checkpointer.engine, self.checkpointer.model = self.engine, self.model
        self.autocast = setup.autocast(cfg, self.rt.device)
        self.schedule = LRSchedule(cfg.optim, t.steps)
        self.flops_per_token = training_flops_per_token(cfg.model, cfg.data.seq_len)
        # ---- resume or start
        self.progress = self.checkpointer.load(self.resume_from) if self.resume_from is not None else Progress()
        self.checkpointer.clean_stale(self.progress.step)
        self.logger = MetricsLogger(cfg, self.rt, self.progress, resumed=self.resume_from is not None)
        self.first_step = self.progress.step
        self.last_val_loss = self.last_train_loss = None
        self.last_ckpt_step = self.progress.step if self.resume_from else None
        self.kernel_backend, self.kernel_reason = xlstm_kernels.resolve_backend(
            cfg.model.backend, self.rt.device, cfg.model.mlstm_form, cfg.model.chunk_size)
        self.slstm_backend = xlstm_kernels.resolve_backend(cfg.model.backend, self.rt.device,
                                                           chunk_size=cfg.model.chunk_size)[0]
        self.telemetry = GateTelemetry(self.model) if cfg.logging.gate_telemetry else None
        self.window = Window()  # train rows average over the steps since the last one
        self.batches = None  # the data stream, opened by start() at the resume point

    # ---- before the first step -------------------------------------------------------------------

    def start(self) -> None:
        """Write config.yaml and deepspeed_config.json, print what runs where, and open the data stream."""
        from xlstm_pretrain.data import GlobalBatchSampler, build_dataloader
        from xlstm_pretrain.model import count_params

        cfg, t, rt, state, progress = self.cfg, self.cfg.train, self.rt, self.state, self.progress
        seq, logger = cfg.data.seq_len, self.logger
        if rt.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            dump_yaml(cfg, self.run_dir / "config.yaml")
            ds_config = setup.deepspeed_config_for(cfg, state.dp, self.grad_accum)
            (self.run_dir / "deepspeed_config.json").write_text(json.dumps(ds_config, indent=2) + "\n")
        flops_per_step = self.flops_per_token * t.global_batch_size * seq  # after the ramp-up
        logger.print(
            f"xLSTM {cfg.model.family} model: {count_params(cfg.model):,} parameters, blocks "
            f"{''.join('s' if b == 'slstm' else 'm' for b in cfg.model.block_types)} | world {rt.world_size} = "
            f"DP {state.dp} x CP {state.cp} x TP {state.tp}, ZeRO-{t.zero_stage}, {t.precision} | batch "
            f"{t.global_batch_size} x {seq} tokens = {self.grad_accum} micro-steps x {t.micro_batch_size} x DP "
            f"{state.dp} | {flops_per_step:.3e} FLOPs/step | device {rt.device_name or rt.device.type}")
        if self.batch_schedule.ramped:
            logger.print(f"batch ramp-up: {self.batch_schedule.describe()} sequences per step; "
                         f"{self.batch_schedule.consumed_samples(t.steps) * seq:,} tokens in {t.steps} steps")
        logger.print(f"cell kernels: mLSTM backend {self.kernel_backend!r}, sLSTM backend {self.slstm_backend!r} "
                     f"(model.backend={cfg.model.backend!r}; {self.kernel_reason})")
        logger.print(f"resumed from {self.resume_from} at step {progress.step}" if self.resume_from
                     else f"starting at step 0 (run dir {self.run_dir})")
        if self.checkpointer.resharded_from:
            logger.print(f"layout changed on resume: saved as {self.checkpointer.resharded_from}, now "
                         f"{self.checkpointer.layout()} (weights and optimizer state from its universal/ part)")
        batch_size = self.batch_schedule.batch_size if self.batch_schedule.ramped else t.global_batch_size
        sampler = GlobalBatchSampler(batch_size, t.micro_batch_size, state.dp_rank, state.dp,
                                     consumed_samples=progress.consumed_samples, num_steps=t.steps - progress.step,
                                     first_step=progress.step)
        self.batches = iter(build_dataloader(self.data.train, sampler, cfg.data.num_workers,
                                             pin_memory=cfg.data.pin_memory and rt.device.type == "cuda"))

    # ---- one step --------------------------------------------------------------------------------

    def train_step(self) -> StepResult:
        """lr from the schedule, the step's global batch as micro-batches forward/backward (DeepSpeed
        accumulates, reduces, clips and steps at the boundary), the loss averaged over all ranks."""
        t, state, engine, schedule = self.cfg.train, self.state, self.engine, self.batch_schedule
        step = self.progress.step + 1  # the step being taken, 1-based (as logged)
        log = step % self.cfg.logging.interval == 0 or step == t.steps or step == self.first_step + 1
        set_lr(self.optimizer, self.schedule(step - 1))
        batch_size = schedule.batch_size(step - 1)
        micro_steps = schedule.grad_accum(step - 1, t.micro_batch_size, state.dp)
        if batch_size != engine.train_batch_size():  # ramp-up: DeepSpeed's accumulation = batch / (micro x DP)
            engine.set_train_batch_size(batch_size)
        tokens = batch_size * self.cfg.data.seq_len
        if self.telemetry is not None and log:
            self.telemetry.start()
        t0 = time.perf_counter()
        loss_sum = torch.zeros((), device=self.rt.device)
        for micro_step in range(micro_steps):
            if schedule.ramped:
                # DeepSpeed places the boundary by its running micro-step count modulo the accumulation
                # steps, which a change of accumulation (or a resume) misaligns: name it explicitly
                engine.set_gradient_accumulation_boundary(micro_step == micro_steps - 1)
            loss = micro_batch_loss(engine, next(self.batches), self.rt.device, self.autocast, state)
            loss = self.hooks.transform_loss(step, loss)
            # a non-finite loss poisons every gradient (x NaN), so DeepSpeed's norm check skips the update
            guard = torch.where(torch.isfinite(loss.detach()), 1.0, float("nan"))
            engine.backward(loss * guard)
            engine.step()
            loss_sum += loss.detach()
        applied = engine.was_step_applied()
        grad_norm = engine.get_global_grad_norm()
        grad_norm = float(grad_norm) if grad_norm is not None else float("nan")
        step_loss = loss_sum / micro_steps
        if state.dp * state.cp > 1:  # CP ranks hold parts of one loss (sum), DP ranks replicas (mean)
            dist.all_reduce(step_loss, group=state.dp_cp_group)
            step_loss /= state.dp
        step_loss = step_loss.item()
        seconds = time.perf_counter() - t0
        gates = self.telemetry.collect() if self.telemetry is not None and log else None
        return StepResult(step, step_loss, grad_norm, applied, seconds, batch_size, tokens,
                          self.flops_per_token * tokens, self.progress.flops, log, gates)

    # ---- after a step: progress and logging ------------------------------------------------------

    def record_step(self, r: StepResult) -> None:
        """Advance the progress counters; log the train row, or the skipped step (too many in a row stop
        the run with ``NonFiniteStop``, the last checkpoint left as it was)."""
        progress, logger = self.progress, self.logger
        progress.step = r.step
        progress.consumed_samples += r.batch_size
        progress.tokens += r.tokens
        progress.flops += r.flops
        self.last_train_loss = r.loss
        self.window.add(r.loss, r.tokens, r.seconds)
        if not r.applied:
            progress.skipped_steps += 1
            progress.consecutive_skipped += 1
            logger.row({"kind": "skipped", "step": r.step, "loss": r.loss, "grad_norm": r.grad_norm,
                        "consecutive": progress.consecutive_skipped})
            logger.print(f"step {r.step:>7d} | non-finite loss {r.loss} or grad norm {r.grad_norm}: update skipped "
                         f"({progress.consecutive_skipped} in a row, {progress.skipped_steps} in total)")
            if progress.consecutive_skipped >= self.cfg.train.max_consecutive_nonfinite:
                logger.close()
                raise NonFiniteStop(f"{progress.consecutive_skipped} non-finite steps in a row (at step {r.step}); "
                                    f"stopping with the last checkpoint intact")
            return
        progress.consecutive_skipped = 0
        if r.log:
            window = self.window
            row = {"kind": "train", "step": r.step, "tokens": progress.tokens, "flops": progress.flops,
                   "loss": r.loss, "loss_avg": window.mean_loss(), "lr": self.engine.get_lr()[0],
                   "grad_norm": r.grad_norm, "tokens_per_s": window.tokens / max(window.seconds, 1e-9),
                   "step_time_s": r.seconds, "mem_gib": memory_gib(self.rt.device),
                   "skipped_steps": progress.skipped_steps}
            mfu = device_mfu(r.flops / r.seconds / self.rt.world_size, self.rt.device_name)
            if mfu is not None:
                row["mfu"] = mfu
            if r.gates:
                row["gates"] = r.gates
            logger.row(row)
            logger.train_line(row)
            window.reset()

    # ---- validation at FLOP milestones, intervals and the end ------------------------------------

    def validate_if_due(self, r: StepResult) -> None:
        cfg, progress = self.cfg, self.progress
        milestone = crossed_milestone(r.flops_before, progress.flops, cfg.eval.flop_milestones_per_decade,
                                      cfg.eval.min_flops)
        reason = ("milestone" if milestone is not None else
                  "interval" if cfg.eval.interval and r.step % cfg.eval.interval == 0 else
                  "end" if cfg.eval.at_end and r.step == cfg.train.steps else None)
        if reason is None or self.val_indices is None:
            return
        val_loss, val_tokens = evaluate(self.engine.module, self.data.validation, self.val_indices, self.eval_mb,
                                        self.rt.device, self.autocast, self.state)
        row = {"kind": "val", "step": r.step, "tokens": progress.tokens, "flops": progress.flops,
               "train_loss": self.window.train_loss_since_eval(), "val_loss": val_loss,
               "val_ppl": math.exp(min(val_loss, 700.0)), "val_tokens": val_tokens, "reason": reason}
        if milestone is not None:
            row["milestone_flops"] = milestone
        at_end = cfg.eval.at_end and r.step == cfg.train.steps  # the last step may also cross a milestone
        if self.downstream is not None and self.downstream.due(reason, milestone, at_end):
            row.update(self.downstream.run(self.engine.module, self.rt.device, self.autocast))
            self.logger.print(f"step {r.step:>7d} | {self.downstream.describe(row)}")
        self.logger.row(row)
        self.logger.print(f"step {r.step:>7d} | validation loss {val_loss:.4f} ppl {row['val_ppl']:.2f} "
                          f"({val_tokens:,} tokens, {reason}) | {progress.flops:.3e} FLOPs")
        self.last_val_loss = val_loss

    # ---- checkpoint at intervals and the end -----------------------------------------------------

    def checkpoint_if_due(self, r: StepResult) -> None:
        c = self.cfg.checkpoint
        if (c.interval and r.step % c.interval == 0) or (r.step == self.cfg.train.steps and c.save_final):
            path = self.checkpointer.save(self.progress, self.schedule.state_dict(r.step))
            self.last_ckpt_step = r.step
            self.logger.print(f"step {r.step:>7d} | checkpoint {path}")

    # ---- the end ---------------------------------------------------------------------------------

    def finish(self) -> dict:
        """summary.json and loss.png (rank 0), the logger closed; returns the summary."""
        run_dir, progress = self.run_dir, self.progress
        summary = {"step": progress.step, "train_loss": self.last_train_loss, "val_loss": self.last_val_loss,
                   "skipped_steps": progress.skipped_steps, "run_dir": str(run_dir),
                   "metrics": str(run_dir / "metrics.jsonl"), "checkpoint": None,
                   "kernel_backend": self.kernel_backend, "kernel_backend_reason": self.kernel_reason,
                   "slstm_kernel_backend": self.slstm_backend}
        if self.last_ckpt_step is not None:
            summary["checkpoint"] = str(self.checkpointer.root / f"step_{self.last_ckpt_step:08d}")
        if self.rt.is_main and (run_dir / "metrics.jsonl").is_file():
            summary["plot"] = str(plot_metrics(run_dir / "metrics.jsonl", run_dir / "loss.png"))
            (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        self.logger.close()
        self.logger.print(f"done: {json.dumps(summary)}")
        return summary


def main(argv=None) -> int:
    args = setup.parse_args(argv)
    try:
        cfg = setup.load_run_config(args.config, args.overrides)
        if args.print_config:
            import yaml

            from xlstm_pretrain.config import to_dict

            print(yaml.safe_dump(to_dict(cfg), sort_keys=False), end="")
            return 0
        if args.print_deepspeed_config:
            world = args.world_size or int(os.environ.get("WORLD_SIZE", 1))
            grad_accum = check_run(cfg, world)
            dp = world // (cfg.parallel.tensor_parallel * cfg.parallel.context_parallel)
            print(json.dumps(setup.deepspeed_config_for(cfg, dp, grad_accum), indent=2))
            return 0
        train(cfg, resume=args.resume, local_rank=args.local_rank, hooks=hooks_from_env())
        return 0
    except ConfigError as e:
        if (dist.get_rank() if dist.is_initialized() else int(os.environ.get("RANK", 0))) == 0:
            print(f"config error: {e}", file=sys.stderr, flush=True)
        return 2
    except NonFiniteStop as e:
        if dist.get_rank() == 0:
            print(f"stopped: {e}", file=sys.stderr, flush=True)
        return 3
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
