r"""Will it fit? Predicted memory per GPU of a training run, by part, and (--search) the fastest predicted
layout that fits.

    python tools/plan.py --config configs/runs/xlstm_1_0_1_3b_300b.yaml [--config configs/layout/tp2_zero1.yaml] \
        [key=value ...] --gpus 8 --gpu h100-80gb [--search] [--top 5]

The memory model is xlstm_pretrain/memory/ (activations validated against saved-tensor counts on CPU:
tools/bench/activation_memory.py); the step-time ranking uses xlstm_pretrain/flops.py and the
communication volumes of tools/bench/comm_volume.py under the assumptions named in
xlstm_pretrain/memory/search.py (MFU, bandwidths, no overlap).
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

from xlstm_pretrain.config_loader import ConfigError
from xlstm_pretrain.memory import GPUS, Layout, estimate, search_layouts
from xlstm_pretrain.memory.hardware import GIB
from xlstm_pretrain.memory.search import ASSUMED_MFU
from xlstm_pretrain.train.setup import load_run_config

COMM_VOLUME = Path(__file__).resolve().parent / "bench" / "comm_volume.py"


def comm_volume_model():
    """``analytic(cfg, B, S, tp, cp, sp)`` of tools/bench/comm_volume.py (loaded by path: tools/ is no package)."""
    sys.path.insert(0, str(COMM_VOLUME.parents[2] / "tests"))  # it imports tests/dist_utils for its measurement
    spec = importlib.util.spec_from_file_location("comm_volume", COMM_VOLUME)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.analytic


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", action="append", required=True, metavar="YAML",
                   help="run config; repeat to merge (later files win), e.g. a run and a layout")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.micro_batch_size=2")
    p.add_argument("--gpus", type=int, default=8, help="GPUs in all (world size)")
    p.add_argument("--gpu", default="h100-80gb", choices=sorted(GPUS))
    p.add_argument("--backend", choices=["torch", "triton", "fla"], default=None,
                   help="the cell kernels to plan for (default: what model.backend resolves to on CUDA)")
    p.add_argument("--search", action="store_true", help="also list the fastest predicted layouts that fit")
    p.add_argument("--top", type=int, default=5)
    args = p.parse_args(argv)
    try:
        cfg = load_run_config(args.config, args.overrides)
        gpu = GPUS[args.gpu]
        layout = Layout.from_config(cfg, args.gpus)
        from xlstm_pretrain.parallel import check_layout

        check_layout(cfg.model, cfg.parallel, args.gpus, cfg.data.seq_len)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    m = cfg.model
    print(f"{' + '.join(args.config)}: {m.family} family, {m.num_blocks} blocks, d={m.embedding_dim}, "
          f"backend={m.backend}, precision={cfg.train.precision}, seq_len={cfg.data.seq_len}, "
          f"global batch {cfg.train.global_batch_size} = micro {layout.micro_batch} x DP {layout.dp} x accumulation "
          f"{cfg.train.global_batch_size / (layout.micro_batch * layout.dp):g}")
    print("predicted bytes per GPU:")
    print(estimate(cfg, layout, gpu, backend=args.backend).format())
    if args.search:
        found = search_layouts(cfg, args.gpus, gpu, comm_volume_model(), top=args.top, backend=args.backend)
        print(f"\nfastest predicted layouts that fit {gpu.name} with >= 10 % headroom "
              f"(assumed MFU {ASSUMED_MFU:.0%}, no compute/communication overlap):")
        if not found:
            print("  none")
        for rank, c in enumerate(found, 1):
            print(f"  {rank}. {c.layout.describe():52s} step {c.step_seconds:8.2f} s (compute {c.compute_seconds:.2f}, "
                  f"comm {c.comm_seconds:.2f})  memory {c.memory.total / GIB:6.1f} GiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
