"""Training-step throughput: our trainer's step vs `transformers` xLSTMForCausalLM, CPU, one process.

Both train the same large-family (xLSTM-7B architecture) model, shrunk to CPU size, on the same random
batches, in fp32: forward, cross entropy, backward, gradient clipping at 1.0, AdamW.

- ours: the trainer's own path (``xlstm_pretrain.train``): the DeepSpeed ZeRO-1 engine over one gloo
  process, ``micro_batch_loss``, ``engine.backward``/``engine.step``, AdamW with the weight-decay groups;
  also the bare model with a torch AdamW (no DeepSpeed), to show the engine's overhead;
- transformers: ``xLSTMForCausalLM`` with its native PyTorch kernels (``chunkwise--native_autograd``,
  ``native_sequence__native``, ``native``), ``mode="train"``, ``use_cache=False``, ``return_last_states=True``,
  the same cross entropy on its (soft-capped) logits, torch AdamW, ``clip_grad_norm_``.

Prints tokens/s of each and the ratio ours / transformers (> 1: we are faster).

    OMP_NUM_THREADS=2 python tools/bench/train_step.py [--steps 6] [--seq-len 512] [--batch 1] [model.key=value ...]
"""

from __future__ import annotations

import argparse
import importlib
import statistics
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
DEFAULT_SHRINK = ["model.embedding_dim=512", "model.num_blocks=4"]  # the 7B's architecture, CPU-sized


def hf_xlstm_native():
    """transformers' xLSTM with its pure-PyTorch kernels (it only defines them when the `xlstm` package,
    whose kernels need CUDA, is absent: hide it)."""
    import transformers.utils as tu

    tu.is_xlstm_available = lambda: False
    import transformers.models.xlstm.modeling_xlstm as mx

    return importlib.reload(mx)


def hf_model(cfg):
    from transformers import xLSTMConfig

    mx = hf_xlstm_native()
    hf_cfg = xLSTMConfig(
        vocab_size=cfg.vocab_size, hidden_size=cfg.embedding_dim, num_hidden_layers=cfg.num_blocks,
        num_heads=cfg.num_heads, qk_dim_factor=cfg.qk_dim_factor, v_dim_factor=cfg.v_dim_factor,
        gate_soft_cap=cfg.gate_soft_cap, output_logit_soft_cap=cfg.logit_soft_cap, ffn_proj_factor=cfg.ffn_proj_factor,
        ffn_round_up_to_multiple_of=cfg.ffn_round_up_to, chunk_size=cfg.chunk_size, norm_eps=cfg.norm_eps, eps=cfg.eps,
        use_bias=False, tie_word_embeddings=False, weight_mode="single",
        chunkwise_kernel="chunkwise--native_autograd", sequence_kernel="native_sequence__native", step_kernel="native",
        mode="train", return_last_states=True, use_cache=False)
    return mx.xLSTMForCausalLM(hf_cfg)


def batches(cfg, n, batch, seq, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        ids = torch.randint(0, cfg.vocab_size, (batch, seq + 1), generator=g)
        out.append({"input_ids": ids[:, :-1], "labels": ids[:, 1:],
                    "doc_boundaries": torch.zeros(batch, seq, dtype=torch.bool)})
    return out


def time_steps(step, data, warmup):
    times = []
    for j, b in enumerate(data):
        t0 = time.perf_counter()
        step(b)
        if j >= warmup:
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def ours_engine(cfg, batch, seq):
    from xlstm_pretrain.parallel import ParallelConfig, init_parallel_state
    from xlstm_pretrain.train import setup
    from xlstm_pretrain.train.trainer import micro_batch_loss

    run = setup.load_run_config([], [f"data.seq_len={seq}", "train.precision=fp32", "train.zero_stage=1",
                                     f"train.global_batch_size={batch}", f"train.micro_batch_size={batch}"])
    run.model = cfg
    rt = setup.init_distributed("cpu")
    state = init_parallel_state(ParallelConfig(), "cpu")
    model = setup.build_parallel_model(run, state, rt.device)
    engine, _ = setup.build_engine(run, model, state, grad_accum=1)
    autocast = setup.autocast(run, rt.device)

    def step(b):
        loss = micro_batch_loss(engine, b, rt.device, autocast, state)
        engine.backward(loss)
        engine.step()

    return step


def ours_bare(cfg):
    from xlstm_pretrain.model import build_model
    from xlstm_pretrain.parallel import lm_loss
    from xlstm_pretrain.train.config import OptimConfig
    from xlstm_pretrain.train.optim import build_optimizer

    model = build_model(cfg)
    opt = build_optimizer(model, OptimConfig())

    def step(b):
        loss = lm_loss(model, model(b["input_ids"], doc_boundaries=b["doc_boundaries"]), b["labels"]).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()

    return step


def theirs(cfg):
    from xlstm_pretrain.model import count_params

    model = hf_model(cfg)
    model.train()
    n_hf = sum(p.numel() for p in model.parameters())
    if n_hf != count_params(cfg):
        raise SystemExit(f"transformers builds {n_hf:,} parameters, ours {count_params(cfg):,}: not the same model")
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95), eps=1e-5, weight_decay=0.1, foreach=False)

    def step(b):
        logits = model(input_ids=b["input_ids"], use_cache=False).logits  # soft-capped, as ours
        loss = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), b["labels"].flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()

    return step


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=str(REPO / "configs/model/xlstm_large_7b.yaml"))
    ap.add_argument("--steps", type=int, default=6, help="timed steps per side (after --warmup)")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=2, help="interleaved rounds (ours, transformers, ...)")
    ap.add_argument("overrides", nargs="*", help=f"model overrides (default: {' '.join(DEFAULT_SHRINK)})")
    args = ap.parse_args(argv)

    from xlstm_pretrain.config import load
    from xlstm_pretrain.model import count_params

    cfg = load(args.config, args.overrides or DEFAULT_SHRINK).model
    if cfg.family != "large":
        raise SystemExit("transformers' xLSTMForCausalLM is the large family: give a large-family config")
    tokens = args.batch * args.seq_len
    print(f"model: {args.config} {' '.join(args.overrides or DEFAULT_SHRINK)}: {count_params(cfg):,} parameters, "
          f"batch {args.batch} x {args.seq_len}, fp32, threads {torch.get_num_threads()}")
    torch.manual_seed(0)
    sides = {"ours (DeepSpeed engine, trainer path)": ours_engine(cfg, args.batch, args.seq_len),
             "ours (bare model + AdamW)": ours_bare(cfg), "transformers xLSTMForCausalLM": theirs(cfg)}
    results = {name: [] for name in sides}
    data = batches(cfg, args.warmup + args.steps, args.batch, args.seq_len)
    for _ in range(args.rounds):
        for name, step in sides.items():
            results[name].append(time_steps(step, data, args.warmup))
    best = {name: min(ts) for name, ts in results.items()}
    for name, t in best.items():
        print(f"{name:<40} {t * 1e3:9.1f} ms/step {tokens / t:10,.0f} tokens/s")
    hf = best["transformers xLSTMForCausalLM"]
    print(f"ratio ours (engine) / transformers tokens/s: {hf / best['ours (DeepSpeed engine, trainer path)']:.2f}")
    print(f"ratio ours (bare)   / transformers tokens/s: {hf / best['ours (bare model + AdamW)']:.2f}")


if __name__ == "__main__":
    main()
