"""Every shipped run config, with every layout it is documented with, fits an 80 GB GPU with >= 10 % free
according to the memory model (xlstm_pretrain/memory/), for both kernels that backend="auto" can pick on
CUDA (FLA, or our Triton kernels where flash-linear-attention is not installed).

Documented layouts: a run's header command (torchrun --nproc_per_node 8 = 8 GPUs, "N nodes x 8 GPUs");
no layout = its own recipe's settings (DP = 8); "[--config configs/layout/...]" = any of configs/layout/*.yaml
the trainer accepts for the model (parallel.check_layout); and every README / launch/README.md command that
pairs a run with a layout. Also checks that the global batch stays the recipe's: micro x DP x accumulation.
"""

import re
from pathlib import Path

import pytest

from xlstm_pretrain.config_loader import ConfigError
from xlstm_pretrain.memory import GPUS, Layout, estimate
from xlstm_pretrain.memory.model_states import ParamCounts
from xlstm_pretrain.parallel import check_layout
from xlstm_pretrain.train.setup import load_run_config

ROOT = Path(__file__).resolve().parents[1]
RUNS = sorted((ROOT / "configs" / "runs").glob("*.yaml"))
LAYOUTS = sorted((ROOT / "configs" / "layout").glob("*.yaml"))
GPU = GPUS["h100-80gb"]
BACKENDS = ("triton", "fla")
HEADROOM = 0.10


def _gpus(line: str) -> int:
    nodes = re.search(r"--nodes\s+(\d+)|(\d+)\s+nodes", line)
    per_node = re.search(r"--nproc_per_node\s+(\d+)|x\s+(\d+)\s+GPUs", line)
    n = int(next(g for g in nodes.groups() if g)) if nodes else 1
    return n * (int(next(g for g in per_node.groups() if g)) if per_node else 8)


def documented(run: Path) -> list[tuple[str | None, int]]:
    """[(layout file or None, GPUs)] named for ``run`` in its header and in the READMEs."""
    header = [ln for ln in run.read_text().splitlines() if ln.startswith("#")]
    found = []
    gpus = next((_gpus(ln) for ln in header if "--nproc_per_node" in ln or "nodes" in ln), 8)
    named = [m for ln in header for m in re.findall(r"configs/layout/(\w+)\.yaml", ln)]
    if not named:
        found.append((None, gpus))
    for ln in header:
        if "configs/layout/..." in ln:  # any layout
            found += [(p.stem, gpus) for p in LAYOUTS]
        found += [(m, _gpus(ln)) for m in re.findall(r"configs/layout/(\w+)\.yaml", ln)]
    for doc in (ROOT / "README.md", ROOT / "launch" / "README.md"):
        lines = doc.read_text().splitlines()
        for i, ln in enumerate(lines):
            text = ln
            if ln.rstrip().endswith("\\") and i + 1 < len(lines):  # a command continued on the next line
                text += " " + lines[i + 1]
            if f"configs/runs/{run.name}" in ln:
                found += [(m, _gpus(text)) for m in re.findall(r"configs/layout/(\w+)\.yaml", text)]
    return sorted(set(found), key=str)


CASES = [(run, layout, gpus) for run in RUNS for layout, gpus in documented(run)]


_PARAMS: dict[str, ParamCounts] = {}  # building a model on meta per case is the slow part; layouts share it


def _load(run: Path, layout: str | None):
    paths = [run] + ([ROOT / "configs" / "layout" / f"{layout}.yaml"] if layout else [])
    return load_run_config(paths)


def test_every_run_has_a_documented_layout():
    assert {run for run, _, _ in CASES} == set(RUNS)
    large = [(layout, gpus) for run, layout, gpus in CASES if run.stem == "xlstm_large_7b"]
    assert ("tp8_sp_zero3", 128) in large  # its header: 16 nodes x 8 GPUs


@pytest.mark.parametrize("run,layout,gpus", CASES, ids=[f"{r.stem}-{lay or 'recipe'}-{g}" for r, lay, g in CASES])
def test_shipped_run_fits_80gb_with_headroom(run, layout, gpus):
    cfg = _load(run, layout)
    try:
        dp = check_layout(cfg.model, cfg.parallel, gpus, cfg.data.seq_len)
    except ConfigError:
        pytest.skip(f"{layout} is not a valid layout for {run.stem} (the trainer refuses it)")
    t = cfg.train
    assert t.global_batch_size % (t.micro_batch_size * dp) == 0, "the global batch must be micro x DP x accumulation"
    for stage in t.batch_size_rampup:
        assert stage.global_batch_size % (t.micro_batch_size * dp) == 0
    params = _PARAMS.setdefault(run.stem, ParamCounts.of(cfg.model))
    lay = Layout.from_config(cfg, gpus)
    for backend in BACKENDS:
        est = estimate(cfg, lay, GPU, params, backend=backend)
        assert est.fits(HEADROOM), f"{run.name} + {layout or 'its recipe'} on {gpus} GPUs:\n{est.format()}"


@pytest.mark.parametrize("run", RUNS, ids=[r.stem for r in RUNS])
def test_global_batch_is_the_papers(run):
    """Memory-driven changes touch micro-batch and checkpointing only, never the global batch."""
    cfg = _load(run, None)
    want = {"xlstm_large_7b": 512, "xlstm_1_0_1_3b_300b": 512, "xlstm_7_1_1_3b_300b": 512}.get(run.stem, 256)
    assert cfg.train.global_batch_size == want
