"""Paper-family training step: our model vs the official ``xlstm`` package's ``xLSTMLMModel``, CPU, one process.

Both sides hold the same weights (ours is imported from the official model with our importer, so the
architecture and parameter count are the official ones) and train on the same random batches in fp32:
forward, cross entropy, backward, gradient clipping at 1.0, torch AdamW. The official model runs what it
runs on CPU: the mLSTM layer's parallel stabilised cell (quadratic in S) and the ``vanilla`` sLSTM; ours
runs the torch backend (chunkwise mLSTM, chunk 64; recurrent sLSTM). Steps of the two sides are
interleaved so that background load hits both alike; median per S.

    OMP_NUM_THREADS=1 python tools/bench/paper_train_step.py [--S 512 1024 2048] [--steps 4] [--d 256]

Prints ms/step of each side, the ratio official / ours (> 1: we are faster) and the max logit difference
on the first batch (same weights: a sanity check that both compute the same function).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

STACKS = {"xLSTM[7:1]": lambda n: [n // 2 - 1] if n >= 2 else [], "xLSTM[1:0]": lambda n: []}


def official_model(d, num_blocks, slstm_at, heads, ctx, vocab):
    from xlstm import (FeedForwardConfig, mLSTMBlockConfig, mLSTMLayerConfig, sLSTMBlockConfig, sLSTMLayerConfig,
                       xLSTMLMModel, xLSTMLMModelConfig)

    cfg = xLSTMLMModelConfig(
        mlstm_block=mLSTMBlockConfig(mlstm=mLSTMLayerConfig(conv1d_kernel_size=4, qkv_proj_blocksize=4,
                                                            num_heads=heads)),
        slstm_block=sLSTMBlockConfig(
            slstm=sLSTMLayerConfig(backend="vanilla", num_heads=heads, conv1d_kernel_size=4, dtype="float32"),
            feedforward=FeedForwardConfig(proj_factor=1.3, act_fn="gelu")),
        context_length=ctx, num_blocks=num_blocks, embedding_dim=d, slstm_at=slstm_at, vocab_size=vocab)
    torch.manual_seed(0)
    model = xLSTMLMModel(cfg)
    model.reset_parameters()
    return model


def train_step(model, opt):
    def step(ids, labels):
        logits = model(ids)
        loss = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), labels.flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    return step


def adamw(model):
    return torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), eps=1e-5, weight_decay=0.1,
                             foreach=False)


def compare(stack, S, a):
    from xlstm_pretrain.model.importers import from_official_paper_model

    official = official_model(a.d, a.blocks, STACKS[stack](a.blocks), a.heads, S, a.vocab)
    ours = from_official_paper_model(official, chunk_size=a.chunk)
    n_off = sum(p.numel() for p in official.parameters())
    n_ours = sum(p.numel() for p in ours.parameters())
    g = torch.Generator().manual_seed(1)
    data = [torch.randint(0, a.vocab, (a.B, S + 1), generator=g) for _ in range(a.steps + 1)]
    with torch.no_grad():
        diff = (ours(data[0][:, :-1]) - official(data[0][:, :-1])).abs().max().item()
    sides = {"ours": train_step(ours, adamw(ours)), "official": train_step(official, adamw(official))}
    times = {name: [] for name in sides}
    for j, ids in enumerate(data):
        for name, step in sides.items():
            t0 = time.perf_counter()
            step(ids[:, :-1], ids[:, 1:])
            if j:  # the first step of each side is a warm-up
                times[name].append(time.perf_counter() - t0)
    t = {name: statistics.median(v) for name, v in times.items()}
    return t, n_ours, n_off, diff


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--S", type=int, nargs="+", default=[512, 1024, 2048])
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--d", type=int, default=256)
    ap.add_argument("--blocks", type=int, default=4)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--B", type=int, default=1)
    ap.add_argument("--vocab", type=int, default=2048)
    ap.add_argument("--chunk", type=int, default=64)
    ap.add_argument("--stacks", nargs="+", default=list(STACKS), choices=list(STACKS))
    a = ap.parse_args()
    print(f"paper family, d={a.d}, {a.blocks} blocks, {a.heads} heads, vocab {a.vocab}, batch {a.B}, fp32, "
          f"threads={torch.get_num_threads()}; median of {a.steps} interleaved steps after a warm-up")
    print("| stack | params | S | ours ms/step | official ms/step | official / ours | max logit diff |")
    print("|---|---|---|---|---|---|---|")
    for stack in a.stacks:
        for S in a.S:
            t, n_ours, n_off, diff = compare(stack, S, a)
            if n_ours != n_off:
                raise SystemExit(f"{stack}: ours has {n_ours:,} parameters, the official model {n_off:,}")
            print(f"| {stack} | {n_ours / 1e6:.2f}M | {S} | {t['ours'] * 1e3:.0f} | {t['official'] * 1e3:.0f} | "
                  f"{t['official'] / t['ours']:.2f} | {diff:.1e} |")


if __name__ == "__main__":
    main()
