"""Atomic, exactly resumable training checkpoints.

    RUN_DIR/checkpoints/
      latest                      text: the tag of the newest complete checkpoint (replaced last, atomically)
      step_00001000/
        mp_rank_*_model_states.pt, *zero_pp_rank_*_optim_states.pt    DeepSpeed: model, optimizer (ZeRO shards)
        rng/rank_00000.pt ...     per-rank RNG states (torch, cuda, numpy, python)
        trainer_state.json        step, consumed samples (the data position), tokens, FLOPs, skipped steps,
                                  lr schedule, layout, tokenizer sha256, wandb run id
        config.yaml               the resolved run config
        consolidated/             config.yaml + model.safetensors (full fp32/bf16 state dict, any TP degree)
                                  + tokenizer.json: a plain checkpoint (evaluate, export, train.init_from)
        universal/                full fp32 master weights + AdamW moments per parameter: resume on another
                                  layout (TP / CP / DP, ZeRO stage, precision); see universal.py

Writing: every rank writes into ``.tmp-step_N``; after a barrier rank 0 fsyncs, renames it to
``step_N``, then replaces ``latest``, then deletes checkpoints beyond ``keep_last``. A crash at any
point leaves ``latest`` naming a complete checkpoint. The learning-rate schedule is a function of the
step, so restoring the step restores it. Resuming on the saving layout loads DeepSpeed's files (bit-exact);
on another layout, ``universal/`` (exact up to the new layout's reduction order; RNG states of ranks that
did not exist are left as seeded). Every ``torch.load`` uses ``weights_only=True``; DeepSpeed's
loads go through ``SafeTorchCheckpointEngine`` (three DeepSpeed classes allow-listed).
"""

from __future__ import annotations

import json
import os
import random
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from xlstm_pretrain.config import ConfigError, dump_yaml, to_dict

from .hooks import TrainerHooks
from .universal import UNIVERSAL, has_universal, load_universal, save_universal

CHECKPOINTS = "checkpoints"
LATEST = "latest"
TMP_PREFIX = ".tmp-"
STATE_FILE = "trainer_state.json"


def step_tag(step: int) -> str:
    return f"step_{step:08d}"


def tag_step(tag: str) -> int:
    return int(tag.split("_")[-1])


@dataclass
class Progress:
    """What the loop carries from step to step beyond the DeepSpeed engine (saved in trainer_state.json)."""

    step: int = 0  # optimizer steps done (applied or skipped); the next step's index
    consumed_samples: int = 0  # global samples trained on: the data position
    tokens: int = 0
    flops: float = 0.0  # cumulative model training FLOPs
    skipped_steps: int = 0
    consecutive_skipped: int = 0
    wandb_id: str | None = None


# ---- DeepSpeed loads with weights_only=True -----------------------------------------------------


def _deepspeed_safe_globals() -> list:
    from deepspeed.runtime.fp16.loss_scaler import LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [LossScaler, ZeroStageEnum, fragment_address]


def install_safe_checkpoint_engine(engine) -> None:
    """Make DeepSpeed load its checkpoint files with ``torch.load(..., weights_only=True)``."""
    from deepspeed.runtime.checkpoint_engine.torch_checkpoint_engine import TorchCheckpointEngine

    class SafeTorchCheckpointEngine(type(engine.checkpoint_engine)):
        def load(self, path, map_location=None):
            with torch.serialization.safe_globals(_deepspeed_safe_globals()):
                return torch.load(path, map_location=map_location, weights_only=True)

    if not isinstance(engine.checkpoint_engine, TorchCheckpointEngine):
        raise RuntimeError(f"unexpected DeepSpeed checkpoint engine {type(engine.checkpoint_engine).__name__}")
    engine.checkpoint_engine.__class__ = SafeTorchCheckpointEngine


# ---- RNG ----------------------------------------------------------------------------------------


def rng_state() -> dict:
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached],
        "python": random.getstate(),
    }


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state(("MT19937", keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


# ---- consolidation ------------------------------------------------------------------------------


def consolidated_state_dict(model, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """The full (TP=1) state dict with the fp32 master weights, on every rank. A collective: all ranks call it."""
    from deepspeed.utils import safe_get_full_fp32_param

    from xlstm_pretrain.parallel import gather_full_state_dict

    tensors = {}
    for name, p in model.named_parameters():
        full = safe_get_full_fp32_param(p)  # ZeRO: the fp32 master (gathered over DP under ZeRO-3)
        tensors[name] = (p.detach() if full is None else full).float()
    for name, b in model.named_buffers():
        tensors[name] = b.detach()
    full = gather_full_state_dict(model, tensors)  # TP shards -> full tensors
    if model.cfg.tie_embeddings:
        full.pop("lm_head.weight", None)  # a plain checkpoint stores the tied weight once
    return {k: v.to(dtype).cpu().contiguous() for k, v in full.items()}


def write_consolidated(directory: Path, cfg, state_dict: dict[str, torch.Tensor], tokenizer: str | None) -> None:
    """A plain checkpoint (the format of xlstm_pretrain.export.plain): config.yaml, model.safetensors, tokenizer.json."""
    from safetensors.torch import save_file

    directory.mkdir(parents=True, exist_ok=True)
    dump_yaml(cfg, directory / "config.yaml")
    save_file(state_dict, str(directory / "model.safetensors"), metadata={"format": "pt"})
    if tokenizer:
        shutil.copyfile(tokenizer, directory / "tokenizer.json")


# ---- saving -------------------------------------------------------------------------------------


def _fsync_tree(path: Path) -> None:
    for root, _, files in os.walk(path):
        for name in files:
            fd = os.open(os.path.join(root, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(Path(root))


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove(path: Path) -> None:
    """Delete a checkpoint dir so that a half-deleted one never looks complete (rename first)."""
    if not path.exists():
        return
    doomed = path.with_name(f"{TMP_PREFIX}delete-{path.name}")
    if doomed.exists():
        shutil.rmtree(doomed)
    os.rename(path, doomed)
    shutil.rmtree(doomed)


class Checkpointer:
    def __init__(self, cfg, engine, model, runtime, state, tokenizer_sha256: str | None,
                 hooks: TrainerHooks | None = None):
        self.cfg, self.engine, self.model, self.rt, self.state = cfg, engine, model, runtime, state
        self.hooks = hooks or TrainerHooks()
        self.tokenizer_sha256 = tokenizer_sha256
        self.root = Path(cfg.train.run_dir) / CHECKPOINTS
        self.resharded_from: dict | None = None  # the saving layout, after a resume on another one

    def layout(self) -> dict:
        t = self.cfg.train
        return {"world_size": self.rt.world_size, "tensor_parallel": self.state.tp, "context_parallel": self.state.cp,
                "data_parallel": self.state.dp, "zero_stage": t.zero_stage, "precision": t.precision}

    def data_order(self) -> dict:
        """The settings that fix which samples each step trains on (a resume must not change them)."""
        c = self.cfg
        order = {"seq_len": c.data.seq_len, "seed": c.data.seed, "global_batch_size": c.train.global_batch_size}
        if c.train.batch_size_rampup:  # (absent without one: older checkpoints stay resumable)
            order["batch_size_rampup"] = [[s.global_batch_size, s.steps] for s in c.train.batch_size_rampup]
        return order

    def save(self, progress: Progress, schedule_state: dict) -> Path:
        tag = step_tag(progress.step)
        tmp, final = self.root / f"{TMP_PREFIX}{tag}", self.root / tag
        if self.rt.is_main:
            self.root.mkdir(parents=True, exist_ok=True)
            if tmp.exists():
                shutil.rmtree(tmp)
        dist.barrier()
        self.engine.save_checkpoint(str(self.root), tag=tmp.name, client_state={}, save_latest=False)
        (tmp / "rng").mkdir(parents=True, exist_ok=True)
        torch.save(rng_state(), tmp / "rng" / f"rank_{self.rt.rank:05d}.pt")
        if self.cfg.checkpoint.universal:
            save_universal(self.engine, self.model, tmp / UNIVERSAL, self.rt.rank, self.rt.world_size)
        if self.cfg.checkpoint.consolidated:
            dtype = torch.bfloat16 if self.cfg.checkpoint.consolidated_dtype == "bf16" else torch.float32
            full = consolidated_state_dict(self.model, dtype)
            if self.rt.is_main:
                write_consolidated(tmp / "consolidated", self.cfg, full, self.cfg.train.tokenizer)
            del full
        self.hooks.on_checkpoint_written(progress.step)
        if self.rt.is_main:
            state = {"progress": asdict(progress), "schedule": schedule_state, "layout": self.layout(),
                     "tokenizer_sha256": self.tokenizer_sha256, "model": to_dict(self.cfg.model),
                     "data": self.data_order()}
            (tmp / STATE_FILE).write_text(json.dumps(state, indent=2) + "\n")
            dump_yaml(self.cfg, tmp / "config.yaml")
        dist.barrier()  # every rank's files are written
        if self.rt.is_main:
            _fsync_tree(tmp)
            if final.exists():  # left by an attempt that died before updating `latest`
                _remove(final)
            os.rename(tmp, final)
            _fsync_dir(self.root)
            pointer = self.root / f"{TMP_PREFIX}{LATEST}"
            with open(pointer, "w") as f:
                f.write(tag + "\n")
                f.flush()
                os.fsync(f.fileno())
            os.replace(pointer, self.root / LATEST)
            _fsync_dir(self.root)
            self._prune(progress.step)
        dist.barrier()
        return final

    def _prune(self, current: int) -> None:
        tags = sorted((p for p in self.root.glob("step_*") if p.is_dir() and tag_step(p.name) <= current),
                      key=lambda p: tag_step(p.name))
        for old in tags[: -self.cfg.checkpoint.keep_last]:
            _remove(old)

    # ---- resuming -------------------------------------------------------------------------------

    def find(self, resume: str) -> Path | None:
        """The checkpoint dir to resume from (``resume``: auto | none | a checkpoint dir), or None."""
        latest = self.root / LATEST
        if resume == "none":
            if latest.is_file():
                raise ConfigError(f"{self.root} already has checkpoints (latest: {latest.read_text().strip()}); "
                                  "use --resume auto to continue, or another train.run_dir")
            return None
        if resume == "auto":
            if not latest.is_file():
                return None
            path = self.root / latest.read_text().strip()
        else:
            path = Path(resume)
        if not (path / STATE_FILE).is_file():
            raise ConfigError(f"--resume {resume}: {path} is not a complete checkpoint (no {STATE_FILE})")
        return path

    def clean_stale(self, resumed_step: int) -> None:
        """Rank 0: remove unfinished writes and checkpoints newer than the one resumed (an attempt's leftovers)."""
        if not self.rt.is_main or not self.root.is_dir():
            return
        for p in self.root.glob(f"{TMP_PREFIX}*"):
            shutil.rmtree(p) if p.is_dir() else p.unlink()
        for p in self.root.glob("step_*"):
            if p.is_dir() and tag_step(p.name) > resumed_step:
                _remove(p)

    def check_compatible(self, path: Path) -> dict:
        saved = json.loads((path / STATE_FILE).read_text())
        problems = []
        if saved["layout"] != self.layout() and not has_universal(path):
            problems.append(f"layout {saved['layout']} != current {self.layout()}, and the checkpoint has no "
                            f"{UNIVERSAL}/ part (written with checkpoint.universal=true) to change layouts with; "
                            f"resume on the saving layout, or start a new run from {path / 'consolidated'} "
                            f"with train.init_from (weights only)")
        if saved["tokenizer_sha256"] and self.tokenizer_sha256 and saved["tokenizer_sha256"] != self.tokenizer_sha256:
            problems.append(f"tokenizer sha256 {saved['tokenizer_sha256'][:12]}... != current "
                            f"{self.tokenizer_sha256[:12]}...")
        if saved["model"] != to_dict(self.cfg.model):
            diff = sorted(k for k, v in to_dict(self.cfg.model).items() if saved["model"].get(k) != v)
            problems.append(f"model config differs in {diff}")
        data_now = self.data_order()
        if saved["data"] != data_now:
            problems.append(f"data order settings {saved['data']} != current {data_now}")
        if problems:
            raise ConfigError(f"cannot resume from {path}: " + "; ".join(problems))
        return saved

    def load(self, path: Path) -> Progress:
        saved = self.check_compatible(path)
        if saved["layout"] != self.layout():
            load_universal(self.engine, self.model, path / UNIVERSAL)
            self.resharded_from = saved["layout"]
            rng_file = path / "rng" / f"rank_{self.rt.rank:05d}.pt"
            if rng_file.is_file():
                set_rng_state(torch.load(rng_file, weights_only=True))
            return Progress(**saved["progress"])
        load_path, _ = self.engine.load_checkpoint(str(path.parent), tag=path.name, load_optimizer_states=True,
                                                   load_lr_scheduler_states=False, load_module_strict=True)
        if load_path is None:
            raise RuntimeError(f"DeepSpeed could not load the checkpoint at {path}")
        rng_file = path / "rng" / f"rank_{self.rt.rank:05d}.pt"
        set_rng_state(torch.load(rng_file, weights_only=True))
        return Progress(**saved["progress"])


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    latest = Path(run_dir) / CHECKPOINTS / LATEST
    return latest.parent / latest.read_text().strip() if latest.is_file() else None
