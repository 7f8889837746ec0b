"""tools/plan.py: the printed breakdown is the memory model's, --search lists only layouts that fit, in
order of predicted step time, and bad configs are refused with a message."""

import re
import subprocess
import sys
from pathlib import Path

from xlstm_pretrain.memory import GPUS, Layout, estimate
from xlstm_pretrain.memory.hardware import GIB
from xlstm_pretrain.train.setup import load_run_config

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))

import plan  # noqa: E402

RUN = "configs/runs/xlstm_1_0_125m_15b.yaml"


def _run(capsys, *argv):
    rc = plan.main([str(ROOT / a) if a.startswith("configs/") else a for a in argv])
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_prints_every_part_and_the_models_total(capsys):
    rc, out, _ = _run(capsys, "--config", RUN, "--config", "configs/layout/tp2_zero1.yaml", "--gpus", "8",
                      "--gpu", "a100-40gb")
    assert rc == 0
    for part in ("weights", "gradients", "optimizer states", "communication buffers", "activations: blocks",
                 "kernel-saved", "activations: embedding, logits, loss", "backward transients",
                 "allocator overhead + CUDA context", "total"):
        assert part in out, part
    assert "TP=2 CP=1 DP=4 ZeRO-1" in out
    cfg = load_run_config([ROOT / RUN, ROOT / "configs/layout/tp2_zero1.yaml"])
    est = estimate(cfg, Layout.from_config(cfg, 8), GPUS["a100-40gb"])
    total = float(re.search(r"total\s+([\d.]+) GiB", out).group(1))
    assert abs(total - est.total / GIB) < 0.01
    assert ("DOES NOT FIT" in out) == (est.headroom < 0)


def test_overrides_change_the_prediction(capsys):
    _, small, _ = _run(capsys, "--config", RUN, "train.micro_batch_size=1")
    _, large, _ = _run(capsys, "--config", RUN, "train.micro_batch_size=32")
    act = [float(re.search(r"activations: blocks\s+([\d.]+)", o).group(1)) for o in (small, large)]
    assert act[1] > 16 * act[0]


def test_search_lists_fitting_layouts_fastest_first(capsys):
    rc, out, _ = _run(capsys, "--config", RUN, "--gpus", "16", "--gpu", "a100-40gb", "--search", "--top", "4")
    assert rc == 0
    rows = re.findall(r"^\s+\d\. (.+?)\s+step\s+([\d.]+) s .* memory\s+([\d.]+) GiB$", out, flags=re.M)
    assert len(rows) == 4
    steps = [float(s) for _, s, _ in rows]
    assert steps == sorted(steps)
    assert all(float(m) <= 0.9 * GPUS["a100-40gb"].memory_bytes / GIB for _, _, m in rows)
    assert all(re.search(r"DP=\d+ ZeRO-[123] micro=\d+ AC=(on|off)", desc) for desc, _, _ in rows)


def test_refuses_an_impossible_layout():
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "plan.py"), "--config", str(ROOT / RUN),
                           "--config", str(ROOT / "configs/layout/tp8_sp_zero3.yaml"), "--gpus", "8"],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert "num_heads=4 is not divisible by tensor_parallel=8" in proc.stderr
