"""The training loop, top to bottom.

    torchrun --nproc_per_node N -m xlstm_pretrain.train --config configs/runs/RUN.yaml [key=value ...]
    deepspeed --num_gpus N --module xlstm_pretrain.train --config ...     (passes --local_rank)

1. config, processes, data and tokenizer checks (every problem fails here, before anything is written)
2. the model (seeded, TP-sharded), AdamW with the weight-decay groups, the DeepSpeed ZeRO engine
3. resume from the latest complete checkpoint (--resume auto), or start fresh
4. per step: lr from the schedule; the step's global batch (train.batch_size_rampup, then
   train.global_batch_size); micro-batches forward/backward (DeepSpeed accumulates, reduces, clips
   and steps at the boundary); a non-finite loss or gradient norm makes DeepSpeed skip the update;
   log, evaluate at FLOP milestones and intervals, checkpoint
Exit codes: 0 done, 2 config/data error (before training), 3 stopped after too many non-finite steps.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist

import xlstm_kernels
from xlstm_pretrain.config import ConfigError, dump_yaml

from . import setup
from .batch_schedule import BatchSchedule
from .checkpoint import Checkpointer, Progress, maybe_kill
from .config import check_run
from .evaluate import crossed_milestone, evaluate, validation_slice
from .metrics import GateTelemetry, MetricsLogger, Window, device_mfu, memory_gib, plot_metrics, training_flops_per_token
from .optim import LRSchedule, set_lr


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


def train(cfg, resume: str = "auto", local_rank: int | None = None) -> dict:
    from xlstm_pretrain.data import GlobalBatchSampler, build_dataloader
    from xlstm_pretrain.model import count_params
    from xlstm_pretrain.parallel import init_parallel_state

    # ---- 1. checks before anything is built or written -------------------------------------------
    rt = setup.init_distributed(cfg.train.device, local_rank)
    grad_accum = check_run(cfg, rt.world_size)  # of train.global_batch_size (the engine is built with it)
    batch_schedule = BatchSchedule.from_config(cfg.train)
    data = setup.build_data(cfg)
    state = init_parallel_state(cfg.parallel, rt.device.type)
    t, run_dir = cfg.train, Path(cfg.train.run_dir)
    checkpointer = Checkpointer(cfg, None, None, rt, state, data.tokenizer_sha256)
    resume_from = checkpointer.find(resume)
    if resume_from is not None:
        checkpointer.check_compatible(resume_from)
    eval_mb = cfg.eval.micro_batch_size or t.micro_batch_size
    val_indices = (validation_slice(len(data.validation), cfg.eval.samples, eval_mb, state.dp, state.dp_rank)
                   if data.validation is not None else None)

    # ---- 2. model, optimizer, engine -------------------------------------------------------------
    model = setup.build_parallel_model(cfg, state, rt.device)
    engine, optimizer = setup.build_engine(cfg, model, state, grad_accum)
    checkpointer.engine, checkpointer.model = engine, model
    autocast = setup.autocast(cfg, rt.device)
    schedule = LRSchedule(cfg.optim, t.steps)
    seq = cfg.data.seq_len
    flops_per_token = training_flops_per_token(cfg.model, seq)
    tokens_per_step = t.global_batch_size * seq  # after the ramp-up; each step counts its own batch below
    flops_per_step = flops_per_token * tokens_per_step

    # ---- 3. resume or start ----------------------------------------------------------------------
    if resume_from is not None:
        progress = checkpointer.load(resume_from)
    else:
        progress = Progress()
    checkpointer.clean_stale(progress.step)
    logger = MetricsLogger(cfg, rt, progress, resumed=resume_from is not None)
    if rt.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        dump_yaml(cfg, run_dir / "config.yaml")
        ds_config = setup.deepspeed_config_for(cfg, state.dp, grad_accum)
        (run_dir / "deepspeed_config.json").write_text(json.dumps(ds_config, indent=2) + "\n")
    logger.print(
        f"xLSTM {cfg.model.family} model: {count_params(cfg.model):,} parameters, blocks "
        f"{''.join('s' if b == 'slstm' else 'm' for b in cfg.model.block_types)} | world {rt.world_size} = "
        f"DP {state.dp} x CP {state.cp} x TP {state.tp}, ZeRO-{t.zero_stage}, {t.precision} | batch "
        f"{t.global_batch_size} x {seq} tokens = {grad_accum} micro-steps x {t.micro_batch_size} x DP {state.dp} | "
        f"{flops_per_step:.3e} FLOPs/step | device {rt.device_name or rt.device.type}")
    if batch_schedule.ramped:
        logger.print(f"batch ramp-up: {batch_schedule.describe()} sequences per step; "
                     f"{batch_schedule.consumed_samples(t.steps) * seq:,} tokens in {t.steps} steps")
    kernel_backend, kernel_reason = xlstm_kernels.resolve_backend(cfg.model.backend, rt.device, cfg.model.mlstm_form,
                                                                  cfg.model.chunk_size)
    slstm_backend = xlstm_kernels.resolve_backend(cfg.model.backend, rt.device, chunk_size=cfg.model.chunk_size)[0]
    logger.print(f"cell kernels: mLSTM backend {kernel_backend!r}, sLSTM backend {slstm_backend!r} "
                 f"(model.backend={cfg.model.backend!r}; {kernel_reason})")
    logger.print(f"resumed from {resume_from} at step {progress.step}" if resume_from
                 else f"starting at step 0 (run dir {run_dir})")
    if checkpointer.resharded_from:
        logger.print(f"layout changed on resume: saved as {checkpointer.resharded_from}, now "
                     f"{checkpointer.layout()} (weights and optimizer state from its universal/ part)")

    sampler = GlobalBatchSampler(batch_schedule.batch_size if batch_schedule.ramped else t.global_batch_size,
                                 t.micro_batch_size, state.dp_rank, state.dp,
                                 consumed_samples=progress.consumed_samples, num_steps=t.steps - progress.step,
                                 first_step=progress.step)
    batches = iter(build_dataloader(data.train, sampler, cfg.data.num_workers,
                                    pin_memory=cfg.data.pin_memory and rt.device.type == "cuda"))
    telemetry = GateTelemetry(model) if cfg.logging.gate_telemetry else None
    window = Window()
    last = {"val_step": None, "ckpt_step": progress.step if resume_from else None, "val_loss": None,
            "train_loss": None}
    first_step = progress.step

    # ---- 4. the loop -----------------------------------------------------------------------------
    while progress.step < t.steps:
        step = progress.step + 1  # the step being taken, 1-based (as logged)
        log_step = step % cfg.logging.interval == 0 or step == t.steps or step == first_step + 1
        lr = schedule(step - 1)
        set_lr(optimizer, lr)
        batch_size = batch_schedule.batch_size(step - 1)
        micro_steps = batch_schedule.grad_accum(step - 1, t.micro_batch_size, state.dp)
        if batch_size != engine.train_batch_size():  # ramp-up: DeepSpeed's accumulation = batch / (micro x DP)
            engine.set_train_batch_size(batch_size)
        tokens_this_step = batch_size * seq
        flops_this_step = flops_per_token * tokens_this_step
        if telemetry is not None and log_step:
            telemetry.start()
        t0 = time.perf_counter()
        loss_sum = torch.zeros((), device=rt.device)
        for micro_step in range(micro_steps):
            if batch_schedule.ramped:
                # DeepSpeed places the boundary by its running micro-step count modulo the accumulation
                # steps, which a change of accumulation (or a resume) misaligns: name it explicitly
                engine.set_gradient_accumulation_boundary(micro_step == micro_steps - 1)
            loss = micro_batch_loss(engine, next(batches), rt.device, autocast, state)
            if step in t.fault.nonfinite_at_steps:
                loss = loss * float("nan")
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
        gates = telemetry.collect() if telemetry is not None and log_step else None

        progress.step = step
        progress.consumed_samples += batch_size
        progress.tokens += tokens_this_step
        flops_before = progress.flops
        progress.flops += flops_this_step
        window.add(step_loss, tokens_this_step, seconds)

        if not applied:
            progress.skipped_steps += 1
            progress.consecutive_skipped += 1
            logger.row({"kind": "skipped", "step": step, "loss": step_loss, "grad_norm": grad_norm,
                        "consecutive": progress.consecutive_skipped})
            logger.print(f"step {step:>7d} | non-finite loss {step_loss} or grad norm {grad_norm}: update skipped "
                         f"({progress.consecutive_skipped} in a row, {progress.skipped_steps} in total)")
            if progress.consecutive_skipped >= t.max_consecutive_nonfinite:
                logger.close()
                raise NonFiniteStop(f"{progress.consecutive_skipped} non-finite steps in a row (at step {step}); "
                                    f"stopping with the last checkpoint intact")
        else:
            progress.consecutive_skipped = 0

        if log_step and applied:
            row = {"kind": "train", "step": step, "tokens": progress.tokens, "flops": progress.flops,
                   "loss": step_loss, "loss_avg": window.mean_loss(), "lr": engine.get_lr()[0], "grad_norm": grad_norm,
                   "tokens_per_s": window.tokens / max(window.seconds, 1e-9), "step_time_s": seconds,
                   "mem_gib": memory_gib(rt.device), "skipped_steps": progress.skipped_steps}
            mfu = device_mfu(flops_this_step / seconds / rt.world_size, rt.device_name)
            if mfu is not None:
                row["mfu"] = mfu
            if gates:
                row["gates"] = gates
            logger.row(row)
            logger.train_line(row)
            window.reset()

        milestone = crossed_milestone(flops_before, progress.flops, cfg.eval.flop_milestones_per_decade,
                                      cfg.eval.min_flops)
        reason = ("milestone" if milestone is not None else
                  "interval" if cfg.eval.interval and step % cfg.eval.interval == 0 else
                  "end" if cfg.eval.at_end and step == t.steps else None)
        if reason and val_indices is not None:
            val_loss, val_tokens = evaluate(engine.module, data.validation, val_indices, eval_mb, rt.device,
                                            autocast, state)
            row = {"kind": "val", "step": step, "tokens": progress.tokens, "flops": progress.flops,
                   "train_loss": window.train_loss_since_eval(), "val_loss": val_loss,
                   "val_ppl": math.exp(min(val_loss, 700.0)), "val_tokens": val_tokens, "reason": reason}
            if milestone is not None:
                row["milestone_flops"] = milestone
            logger.row(row)
            logger.print(f"step {step:>7d} | validation loss {val_loss:.4f} ppl {row['val_ppl']:.2f} "
                         f"({val_tokens:,} tokens, {reason}) | {progress.flops:.3e} FLOPs")
            last.update(val_step=step, val_loss=val_loss)

        if (cfg.checkpoint.interval and step % cfg.checkpoint.interval == 0) or (
                step == t.steps and cfg.checkpoint.save_final):
            path = checkpointer.save(progress, schedule.state_dict(step))
            last["ckpt_step"] = step
            logger.print(f"step {step:>7d} | checkpoint {path}")
        maybe_kill(t.fault, step, "step", rt.rank)
        last["train_loss"] = step_loss

    # ---- done ------------------------------------------------------------------------------------
    summary = {"step": progress.step, "train_loss": last["train_loss"], "val_loss": last["val_loss"],
               "skipped_steps": progress.skipped_steps, "run_dir": str(run_dir),
               "metrics": str(run_dir / "metrics.jsonl"), "checkpoint": None,
               "kernel_backend": kernel_backend, "kernel_backend_reason": kernel_reason,
               "slstm_kernel_backend": slstm_backend}
    if last["ckpt_step"] is not None:
        summary["checkpoint"] = str(checkpointer.root / f"step_{last['ckpt_step']:08d}")
    if rt.is_main and (run_dir / "metrics.jsonl").is_file():
        summary["plot"] = str(plot_metrics(run_dir / "metrics.jsonl", run_dir / "loss.png"))
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    logger.close()
    logger.print(f"done: {json.dumps(summary)}")
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
        train(cfg, resume=args.resume, local_rank=args.local_rank)
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
