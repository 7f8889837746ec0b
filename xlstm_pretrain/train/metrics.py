"""What a run reports: FLOPs and MFU, a stdout line per interval, ``metrics.jsonl``, wandb, gate telemetry.

``metrics.jsonl`` (rank 0, one JSON object per line; the sweep tools read the ``val`` rows):
    {"kind": "train", "step", "tokens", "flops", "loss", "loss_avg", "lr", "grad_norm", "tokens_per_s",
     "step_time_s", "mem_gib", "skipped_steps", ["mfu"], ["gates"]}
    {"kind": "val", "step", "tokens", "flops", "train_loss", "val_loss", "val_ppl", "val_tokens",
     "reason" ("milestone" | "interval" | "end"), ["milestone_flops"]}
    {"kind": "skipped", "step", "loss", "grad_norm", "consecutive"}
On resume, rows after the resumed step are dropped, so the file always matches the checkpoint's history.
"""

from __future__ import annotations

import json
import math
import os
import resource
import secrets
import time
from pathlib import Path

import torch
import torch.distributed as dist

METRICS_FILE = "metrics.jsonl"


# ---- FLOPs and MFU (thin adapter over xlstm_pretrain.flops) ---------------------------------------


def training_flops_per_token(model_cfg, seq_len: int) -> float:
    """Model training FLOPs (forward + backward) per token at ``seq_len``."""
    from xlstm_pretrain import flops

    per_token = flops.forward_flops_per_token(model_cfg, seq_len)
    per_token = float(getattr(per_token, "total", per_token))  # a float or a breakdown object
    return getattr(flops, "TRAINING_FLOPS_FACTOR", 3) * per_token


def device_mfu(flops_per_second_per_device: float, device_name: str | None) -> float | None:
    """MFU against the device's peak; None for an unknown device (CPUs included): never guessed."""
    if not device_name:
        return None
    from xlstm_pretrain import flops

    return flops.mfu(flops_per_second_per_device, device_name)


def memory_gib(device: torch.device) -> float:
    """Peak memory of this process: CUDA allocator peak on GPUs, max RSS on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


# ---- gate telemetry -----------------------------------------------------------------------------


class GateTelemetry:
    """min/mean/max of the input and forget gate pre-activations of every block, from forward hooks on
    the cells (so it sees exactly what the kernel gets: after soft-capping in the large family). For
    sLSTM blocks the input-driven part ``W x + b`` is reported (the recurrent term lives in the kernel).
    Recording is off except on logging steps; values are reduced over all ranks (TP heads, DP data)."""

    def __init__(self, model):
        from xlstm_pretrain.model.cells import MLSTMCell, SLSTMCell

        self.enabled = False
        self.stats: dict[int, dict[str, torch.Tensor]] = {}
        self.names: list[str] = []
        for idx, block in enumerate(model.blocks):
            for module in block.modules():
                if isinstance(module, (MLSTMCell, SLSTMCell)):
                    module.register_forward_pre_hook(self._hook(idx, isinstance(module, SLSTMCell)))
                    self.names.append(f"{idx}.{'slstm' if isinstance(module, SLSTMCell) else 'mlstm'}")
                    break

    def _hook(self, idx: int, is_slstm: bool):
        def hook(module, args):
            if not self.enabled:
                return
            with torch.no_grad():
                if is_slstm:
                    wx, _, b = args[0], args[1], args[2]
                    i, f = wx[:, :, 0].float() + b[0].float(), wx[:, :, 1].float() + b[1].float()
                else:
                    i, f = args[3].float(), args[4].float()
                self.stats[idx] = {"i": torch.stack([i.min(), i.mean(), i.max()]),
                                   "f": torch.stack([f.min(), f.mean(), f.max()])}
        return hook

    def start(self) -> None:
        self.enabled, self.stats = True, {}

    def collect(self) -> dict[str, dict[str, list[float]]]:
        """Stop recording; reduce over all ranks (a collective); {block: {"i": [min, mean, max], "f": ...}}."""
        self.enabled = False
        if not self.stats:
            return {}
        keys = sorted(self.stats)
        t = torch.stack([torch.stack([self.stats[k]["i"], self.stats[k]["f"]]) for k in keys]).detach().cpu().double()
        lo, mean, hi = t[..., 0].clone(), t[..., 1].clone(), t[..., 2].clone()
        if dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(lo, op=dist.ReduceOp.MIN)
            dist.all_reduce(hi, op=dist.ReduceOp.MAX)
            dist.all_reduce(mean)
            mean /= dist.get_world_size()
        self.stats = {}
        return {self.names[k]: {g: [round(lo[j, n].item(), 4), round(mean[j, n].item(), 4), round(hi[j, n].item(), 4)]
                                for n, g in enumerate(("i", "f"))} for j, k in enumerate(keys)}


# ---- the log ------------------------------------------------------------------------------------


def truncate_metrics(path: Path, last_step: int) -> None:
    """Keep only rows up to ``last_step`` (rank 0, on resume; atomic replace)."""
    if not path.is_file():
        return
    keep = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= last_step]
    tmp = path.with_suffix(".jsonl.tmp")
    tmp.write_text("".join(line + "\n" for line in keep))
    os.replace(tmp, path)


def wandb_mode(setting: str) -> str:
    if setting != "auto":
        return setting
    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_MODE") == "online":
        return "online"
    return "offline"


class MetricsLogger:
    """Rank 0 writes; other ranks call the same methods and nothing happens."""

    def __init__(self, cfg, runtime, progress, resumed: bool):
        self.cfg, self.rt = cfg, runtime
        self.run_dir = Path(cfg.train.run_dir)
        self.path = self.run_dir / METRICS_FILE
        self.wandb = None
        if not runtime.is_main:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if resumed:
            truncate_metrics(self.path, progress.step)
        elif self.path.exists():
            self.path.unlink()
        mode = wandb_mode(cfg.logging.wandb)
        if mode != "disabled":
            self.wandb = self._start_wandb(mode, progress)

    def _start_wandb(self, mode: str, progress):
        import wandb

        from xlstm_pretrain.config import to_dict

        if progress.wandb_id is None:
            progress.wandb_id = secrets.token_hex(4)
        (self.run_dir / "wandb").mkdir(parents=True, exist_ok=True)
        return wandb.init(project=self.cfg.logging.wandb_project, entity=self.cfg.logging.wandb_entity,
                          name=self.cfg.logging.wandb_run_name or self.run_dir.resolve().name, id=progress.wandb_id,
                          resume="allow", mode=mode, dir=str(self.run_dir), config=to_dict(self.cfg))

    def print(self, text: str) -> None:
        if self.rt.is_main:
            print(text, flush=True)

    def row(self, row: dict) -> None:
        if not self.rt.is_main:
            return
        with open(self.path, "a") as f:  # strict JSON: non-finite numbers are written as null
            f.write(json.dumps({k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                                for k, v in row.items()}) + "\n")
        if self.wandb is not None:
            flat = {f"{row['kind']}/{k}": v for k, v in row.items()
                    if isinstance(v, (int, float)) and k != "step" and math.isfinite(v)}
            for block, gates in row.get("gates", {}).items():
                for g, (lo, mean, hi) in gates.items():
                    flat.update({f"gates/{block}.{g}_min": lo, f"gates/{block}.{g}_mean": mean,
                                 f"gates/{block}.{g}_max": hi})
            self.wandb.log(flat, step=row["step"])

    def train_line(self, row: dict) -> None:
        mfu = f" mfu {row['mfu']:.1%}" if "mfu" in row else ""
        self.print(f"step {row['step']:>7d} | loss {row['loss']:.4f} (avg {row['loss_avg']:.4f}) | lr {row['lr']:.3e} | "
                   f"grad norm {row['grad_norm']:.3f} | {row['tokens_per_s']:,.0f} tok/s{mfu} | "
                   f"mem {row['mem_gib']:.2f} GiB | skipped {row['skipped_steps']} | "
                   f"{row['tokens']:,} tokens {row['flops']:.3e} FLOPs")

    def close(self) -> None:
        if self.wandb is not None:
            self.wandb.finish()
            self.wandb = None


class Window:
    """Train-loss and throughput aggregation between log lines (and between validation rows)."""

    def __init__(self):
        self.reset()
        self.val_losses: list[float] = []

    def reset(self) -> None:
        self.losses, self.tokens, self.seconds, self.t0 = [], 0, 0.0, time.perf_counter()

    def add(self, loss: float, tokens: int, seconds: float) -> None:
        if math.isfinite(loss):
            self.losses.append(loss)
            self.val_losses.append(loss)
        self.tokens += tokens
        self.seconds += seconds

    def mean_loss(self) -> float:
        return sum(self.losses) / len(self.losses) if self.losses else float("nan")

    def train_loss_since_eval(self) -> float:
        out = sum(self.val_losses) / len(self.val_losses) if self.val_losses else float("nan")
        self.val_losses = []
        return out


# ---- plots --------------------------------------------------------------------------------------


def read_metrics(metrics_file: str | Path) -> list[dict]:
    return [json.loads(line) for line in Path(metrics_file).read_text().splitlines() if line.strip()]


def _finite_points(rows: list[dict], kind: str, key: str) -> tuple[list[int], list[float]]:
    """(tokens, value) of the ``kind`` rows whose ``key`` is a finite number (non-finite values are logged as null)."""
    points = [(r["tokens"], r[key]) for r in rows
              if r["kind"] == kind and isinstance(r.get(key), (int, float)) and math.isfinite(r[key])]
    return [x for x, _ in points], [y for _, y in points]


def _flops_per_token(rows: list[dict]) -> float | None:
    """Training FLOPs per token of the run (constant: it depends only on the model and seq_len), if logged."""
    for r in reversed(rows):
        if r.get("flops") and r.get("tokens"):
            return r["flops"] / r["tokens"]
    return None


def loss_figure(rows: list[dict], title: str = ""):
    """Train loss (line) and validation loss (marked points) against training tokens, with the matching
    training FLOPs on a second x axis. A matplotlib ``Figure`` on the Agg canvas (no display, no pyplot
    state); the train line is labelled "train loss", the validation one "validation loss"."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import EngFormatter

    fig = Figure(figsize=(8, 5), dpi=120, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    train_x, train_y = _finite_points(rows, "train", "loss")
    val_x, val_y = _finite_points(rows, "val", "val_loss")
    ax.plot(train_x, train_y, color="tab:blue", lw=1.0, alpha=0.8, label="train loss")
    ax.plot(val_x, val_y, color="tab:red", lw=1.2, marker="o", ms=5, label="validation loss")
    ax.set_xlabel("training tokens")
    ax.set_ylabel("loss (nats per token)")
    ax.xaxis.set_major_formatter(EngFormatter(sep=""))  # 500k, 2M, 15G tokens
    ax.grid(alpha=0.3)
    ax.legend()
    per_token = _flops_per_token(rows)
    if per_token:  # the milestone grid is in FLOPs: show where the points lie on it
        top = ax.secondary_xaxis("top", functions=(lambda t: t * per_token, lambda f: f / per_token))
        top.set_xlabel("training FLOPs")
        top.xaxis.set_major_formatter(EngFormatter(sep=""))
    if title:
        ax.set_title(title)
    return fig


def plot_metrics(metrics_file: str | Path, out: str | Path) -> Path:
    """Write ``loss_figure`` of a run's ``metrics.jsonl`` to ``out`` (PNG), titled with the run dir's name."""
    metrics_file, out = Path(metrics_file), Path(out)
    loss_figure(read_metrics(metrics_file), title=metrics_file.resolve().parent.name).savefig(out, format="png")
    return out
