"""FLOP accounting: analytic counts vs torch's FlopCounterMode, vs the reference's verified examples, MFU, CLI."""

import dataclasses
import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode, conv_flop_count

from xlstm_pretrain.config import load
from xlstm_pretrain.flops import (
    TRAINING_FLOPS_FACTOR, flop_breakdown, forward_flops_per_token, mfu, mlstm_cell_chunkwise, paper_mlstm_block,
    peak_flops, training_flops,
)
from xlstm_pretrain.model import ModelConfig, build_model

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs" / "model"


# ---- analytic matmul FLOPs == FlopCounterMode on a real forward and backward --------------------


def grouped_conv_backward_flop(grad_out_shape, x_shape, w_shape, _bias, _stride, _padding, _dilation, transposed,
                               _output_padding, _groups, output_mask, out_shape=None, **kwargs):
    """convolution_backward that honours groups: each requested gradient costs the forward conv's MACs.

    torch's own formula (flop_counter.conv_backward_flop, torch 2.13) ignores ``groups`` for the weight
    gradient, which counts a depthwise conv's weight gradient C times over (pytorch/pytorch PR #183405
    addresses it). ``w_shape[1]`` is already C_in / groups, so the forward count is right.
    """
    forward = conv_flop_count(x_shape, w_shape, grad_out_shape, transposed)
    return forward * (int(output_mask[0]) + int(output_mask[1]))


# Real sizes scaled down so that matmuls dominate as they do at scale; one sLSTM block in the paper model.
SMALL = {
    "paper": dict(family="paper", vocab_size=2048, embedding_dim=256, num_blocks=4, num_heads=4, slstm_at=[1]),
    "large": dict(family="large", vocab_size=2048, embedding_dim=256, num_blocks=4, num_heads=4),
}


@pytest.mark.parametrize("family", ["paper", "large"])
def test_matmul_flops_match_flop_counter(family):
    """FlopCounterMode counts only matmuls and convolutions, so it is compared with the matmul part of the
    breakdown: forward exactly, forward + backward against the analytic 3 x forward."""
    S = 512
    cfg = ModelConfig(**SMALL[family], chunk_size=64, context_length=S, mlstm_form="chunkwise")
    model = build_model(cfg)
    ids = torch.randint(0, cfg.vocab_size, (1, S))
    mapping = {torch.ops.aten.convolution_backward: grouped_conv_backward_flop}
    with FlopCounterMode(display=False, custom_mapping=mapping) as fwd:
        logits = model(ids)
    with FlopCounterMode(display=False, custom_mapping=mapping) as bwd:
        logits.float().square().mean().backward()
    measured_fwd, measured_bwd = fwd.get_total_flops(), bwd.get_total_flops()

    analytic = flop_breakdown(cfg, S)
    analytic_fwd = analytic.matmul * S
    msg = (f"{family}: measured fwd {measured_fwd:.4e} / analytic {analytic_fwd:.4e}; measured fwd+bwd "
           f"{measured_fwd + measured_bwd:.4e} / analytic {TRAINING_FLOPS_FACTOR * analytic_fwd:.4e}")
    assert measured_fwd == pytest.approx(analytic_fwd, rel=0.01), msg
    assert measured_fwd + measured_bwd == pytest.approx(TRAINING_FLOPS_FACTOR * analytic_fwd, rel=0.05), msg
    assert analytic.pointwise < 0.02 * analytic.total  # the part FlopCounterMode cannot see is small


# ---- the reference's verified examples (xlstm_pretrain/REFERENCE.md §6, factors F_exp = F_max = F_mask = 1) ---


def test_125m_paper_mlstm_block_matches_reference():
    cfg = load(CONFIGS / "xlstm_1_0_125m.yaml").model  # d=768, pf=2, Nh=4, dh=384, L=64
    assert (cfg.mlstm_inner_dim, cfg.qk_head_dim, cfg.chunk_size) == (1536, 384, 64)
    block = paper_mlstm_block(cfg, seq_len=2048)
    assert block.mlstm_cell.total == pytest.approx(2.78e6, rel=0.01)
    assert block.total == pytest.approx(9.92e6, rel=0.01)
    # the official block counter leaves out the i/f gate projections (2 x Linear(3D -> Nh)); without them
    # the two counts differ only in the small terms
    gates = 2 * 2 * 3 * cfg.mlstm_inner_dim * cfg.num_heads
    assert block.total - gates == pytest.approx(9.92e6, rel=0.003)


def test_7b_mlstm_cell_per_sequence_matches_reference():
    cfg = load(CONFIGS / "xlstm_large_7b.yaml").model
    assert (cfg.num_heads, cfg.qk_head_dim, cfg.v_head_dim, cfg.chunk_size) == (8, 256, 512, 64)
    S = 8192
    per_token = mlstm_cell_chunkwise(cfg.num_heads, cfg.qk_head_dim, cfg.v_head_dim, cfg.chunk_size, S)
    assert per_token.total * S == pytest.approx(4.12e10, rel=0.01)
    assert flop_breakdown(cfg, S).mlstm_cell.total * S == pytest.approx(4.12e10 * cfg.num_blocks, rel=0.01)


def test_mlstm_cell_dominant_terms_and_chunk_size():
    Nh, dqk, dv = 4, 1024, 1024
    for L in (32, 64, 128):
        dominant = Nh * (4 * dqk * dv * (1 + 1 / (2 * L)) + 2 * L * (dqk + dv))
        assert mlstm_cell_chunkwise(Nh, dqk, dv, L, 4096).total == pytest.approx(dominant, rel=0.01)
    # no chunk is longer than the (power-of-two rounded) sequence; a partial last chunk is paid in full
    assert mlstm_cell_chunkwise(Nh, dqk, dv, 64, 16).total == mlstm_cell_chunkwise(Nh, dqk, dv, 16, 16).total
    padded, full = mlstm_cell_chunkwise(Nh, dqk, dv, 64, 96), mlstm_cell_chunkwise(Nh, dqk, dv, 64, 128)
    assert padded.total * 96 == full.total * 128


def test_training_is_three_times_forward_and_linear_in_tokens():
    cfg = load(CONFIGS / "tiny_paper.yaml").model
    fwd = forward_flops_per_token(cfg, 128)
    assert flop_breakdown(cfg, 128).embedding.total == 0
    assert training_flops(cfg, 128, 1e6) == pytest.approx(3 * fwd * 1e6)
    assert training_flops(cfg, 128, 2e6) == pytest.approx(2 * training_flops(cfg, 128, 1e6))


# ---- MFU ----------------------------------------------------------------------------------------


def test_mfu_known_and_unknown_devices():
    assert mfu(494.5e12, "NVIDIA H100 80GB HBM3") == pytest.approx(0.5)  # SXM: 989 TFLOP/s
    assert mfu(378e12, "NVIDIA H100 PCIe") == pytest.approx(0.5)
    assert mfu(156e12, "NVIDIA A100-SXM4-80GB") == pytest.approx(0.5)
    assert peak_flops("NVIDIA H200") == 989e12 and peak_flops("NVIDIA B200") == 2250e12
    assert peak_flops("NVIDIA L40S") == 362e12
    unknown_devices = ("cpu", "", None, "NVIDIA L40", "NVIDIA H100 NVL", "NVIDIA GH200 480GB", "NVIDIA GB200",
                       "Tesla V100")
    for unknown in unknown_devices:
        assert mfu(1e12, unknown) is None, unknown


# ---- CLI ----------------------------------------------------------------------------------------


def run_cli(*args):
    out = subprocess.run([sys.executable, str(ROOT / "tools" / "flops.py"), *args], capture_output=True, text=True,
                         cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout


def measured_matmul_flops_per_token(cfg, seq_len):
    """Forward matmul + conv FLOPs per token of ``cfg``'s model, counted by FlopCounterMode on a real
    forward of a model with the same widths; the analytic formulas play no part. To stay fast it runs
    one mLSTM and one sLSTM block and scales each block's count to cfg's numbers of blocks.
    ``seq_len`` must be a multiple of the chunk size: then the per-token count is that of any longer
    sequence (the chunkwise cell's work grows with the number of chunks)."""
    assert seq_len % cfg.chunk_size == 0
    probe_cfg = dataclasses.replace(cfg, num_blocks=2, slstm_at=[1])
    model = build_model(probe_cfg)
    ids = torch.randint(0, cfg.vocab_size, (1, seq_len))
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(ids)
    per_module = {name: sum(ops.values()) for name, ops in counter.get_flop_counts().items()}
    root = type(model).__name__
    mlstm, slstm = per_module[f"{root}.blocks.0"], per_module[f"{root}.blocks.1"]
    outside_blocks = per_module["Global"] - mlstm - slstm  # LM head
    n_slstm = len(cfg.slstm_at)
    return ((cfg.num_blocks - n_slstm) * mlstm + n_slstm * slstm + outside_blocks) / seq_len


def test_cli_estimate_for_one_config():
    cfg = load(CONFIGS / "xlstm_7_1_125m.yaml").model
    est = json.loads(run_cli("--config", str(CONFIGS / "xlstm_7_1_125m.yaml"), "--tokens", "300e9",
                             "--mfu", "0.5", "--device", "H100", "--gpus", "64", "--json"))
    assert round(est["params"] / 1e6, 1) == 163.7
    # the CLI reports the module's count at the config's context length ...
    assert est["training_flops"] == pytest.approx(3 * forward_flops_per_token(cfg, 2048) * 300e9, rel=1e-9)
    # ... and that count is what a real forward of the 125M's widths does: its matmul part exactly what
    # FlopCounterMode counts, the rest (the norms' and gates' pointwise work) under 1 % on top
    measured = measured_matmul_flops_per_token(cfg, 128)
    assert flop_breakdown(cfg, 2048).matmul == pytest.approx(measured, rel=1e-9)
    assert 3 * measured * 300e9 < est["training_flops"] < 1.01 * 3 * measured * 300e9
    assert est["gpu_hours"] == pytest.approx(est["training_flops"] / (0.5 * 989e12) / 3600)
    assert est["wall_clock_days"] == pytest.approx(est["gpu_hours"] / 64 / 24)

    text = run_cli("--config", str(CONFIGS / "xlstm_1_0_125m.yaml"), "model.num_blocks=12", "--tokens", "1B")
    assert "mlstm_cell" in text and "GPU-hours" in text and "12 blocks" in text

    table = run_cli("--table")
    for label in ("xLSTM[1:0] 125M", "xLSTM[7:1] 1.3B", "xLSTM[1:0] 2.7B", "xLSTM 7B"):
        assert label in table


def test_cli_paper_token_budgets():
    spec = importlib.util.spec_from_file_location("flops_cli", ROOT / "tools" / "flops.py")
    cli = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = cli  # dataclasses look their module up there
    spec.loader.exec_module(cli)
    runs = {r.label: r for r in cli.PAPER_RUNS}
    assert len(runs) == 10 and all((CONFIGS / r.config).is_file() for r in runs.values())
    assert runs["xLSTM[1:0] 1.3B"].tokens == runs["xLSTM[7:1] 1.3B"].tokens == 512 * 300_000 * 2048
    assert runs["xLSTM[7:1] 350M"].tokens == 256 * 600_000 * 2048
    assert runs["xLSTM[1:0] 2.7B"].tokens == 15e9
    assert runs["xLSTM 7B"].seq_len == 8192 and math.isclose(runs["xLSTM 7B"].tokens, 2.3e12, rel_tol=0.01)
    assert cli.parse_count("2.3T") == 2.3e12 and cli.parse_count("300e9") == 300e9
