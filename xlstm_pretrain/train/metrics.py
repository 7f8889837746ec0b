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


def plot_metrics(metrics_file: str | Path, out: str | Path) -> Path:
    """Train and validation loss against tokens, as a small dependency-free SVG."""
    rows = [json.loads(line) for line in Path(metrics_file).read_text().splitlines() if line.strip()]
    series = {"train loss": [(r["tokens"], r["loss"]) for r in rows if r["kind"] == "train"],
              "val loss": [(r["tokens"], r["val_loss"]) for r in rows if r["kind"] == "val"]}
    points = [p for s in series.values() for p in s if math.isfinite(p[1])]
    W, H, pad = 640, 400, 50
    if not points:
        points = [(0, 0.0), (1, 1.0)]
    x0, x1 = min(p[0] for p in points), max(p[0] for p in points) or 1
    y0, y1 = min(p[1] for p in points), max(p[1] for p in points)
    x1, y1 = (x1 if x1 > x0 else x0 + 1), (y1 if y1 > y0 else y0 + 1)

    def xy(p):
        return pad + (p[0] - x0) / (x1 - x0) * (W - 2 * pad), H - pad - (p[1] - y0) / (y1 - y0) * (H - 2 * pad)

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="12">',
             f'<rect width="{W}" height="{H}" fill="white"/>',
             f'<line x1="{pad}" y1="{H - pad}" x2="{W - pad}" y2="{H - pad}" stroke="black"/>',
             f'<line x1="{pad}" y1="{pad}" x2="{pad}" y2="{H - pad}" stroke="black"/>',
             f'<text x="{W / 2}" y="{H - 12}" text-anchor="middle">tokens ({x0:,} to {x1:,})</text>',
             f'<text x="14" y="{H / 2}" transform="rotate(-90 14 {H / 2})" text-anchor="middle">loss (nats)</text>',
             f'<text x="{pad - 4}" y="{H - pad}" text-anchor="end">{y0:.2f}</text>',
             f'<text x="{pad - 4}" y="{pad + 4}" text-anchor="end">{y1:.2f}</text>']
    for (name, pts), color, y_legend in zip(series.items(), ("#1f77b4", "#d62728"), (pad, pad + 16)):
        pts = [p for p in pts if math.isfinite(p[1])]
        if pts:
            path = " ".join(f"{x:.1f},{y:.1f}" for x, y in map(xy, pts))
            parts.append(f'<polyline fill="none" stroke="{color}" stroke-width="1.5" points="{path}"/>')
            if name == "val loss":
                parts += [f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3" fill="{color}"/>' for x, y in map(xy, pts)]
        parts.append(f'<text x="{W - pad - 90}" y="{y_legend + 12}" fill="{color}">{name}</text>')
    parts.append("</svg>")
    out = Path(out)
    out.write_text("\n".join(parts) + "\n")
    return out
