"""Model smoke demo: a tiny xLSTM learns to continue a toy corpus on CPU, then generates.

    python -m xlstm_pretrain.demo --config configs/model/tiny_paper.yaml [model.key=value ...]
"""

from __future__ import annotations

import argparse
import time

import torch

from .config import load
from .model import build_model, count_params, generate

CORPUS = "the quick brown fox jumps over the lazy dog. " * 4 + "xlstm keeps a matrix memory and resets at documents. "


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="configs/model/tiny_paper.yaml")
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--seq-len", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("overrides", nargs="*", help="dotted overrides, e.g. model.num_blocks=2")
    args = ap.parse_args(argv)

    torch.manual_seed(0)
    cfg = load(args.config, args.overrides).model
    data = torch.tensor(list(CORPUS.encode()), dtype=torch.long)  # bytes as tokens
    if cfg.vocab_size < 256:
        raise SystemExit(f"{args.config}: the demo tokenises bytes and needs model.vocab_size >= 256")
    model = build_model(cfg)
    print(f"model: {cfg.family} family, {count_params(model):,} parameters, blocks {cfg.block_types}")
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, betas=(0.9, 0.95), weight_decay=0.1)
    t0 = time.time()
    for step in range(1, args.steps + 1):
        starts = torch.randint(0, len(data) - args.seq_len - 1, (args.batch_size,))
        batch = torch.stack([data[s : s + args.seq_len + 1] for s in starts.tolist()])
        logits = model(batch[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), batch[:, 1:].flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step == 1 or step % 25 == 0:
            print(f"step {step:4d}  loss {loss.item():.3f}  ({time.time() - t0:.1f}s)")
    model.eval()
    prompt = torch.tensor([list(b"the quick")])
    out = generate(model, prompt, max_new_tokens=60)
    print("generated:", bytes(out[0].tolist()).decode(errors="replace"))


if __name__ == "__main__":
    main()
