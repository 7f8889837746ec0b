"""Autoregressive generation with carried recurrent state: constant memory in the generated length."""

from __future__ import annotations

import torch


@torch.no_grad()
def generate(model, prompt_ids: torch.Tensor, max_new_tokens: int, temperature: float = 0.0,
             top_k: int | None = None, eos_token_id: int | None = None, generator: torch.Generator | None = None):
    """Prefill the prompt in one pass (chunkwise), then decode token by token with the recurrent step.

    temperature 0 = greedy. Returns (B, prompt_len + new) token ids; stops early when every row has
    produced ``eos_token_id``.
    """
    logits, state = model(prompt_ids, return_state=True)
    out = [prompt_ids]
    done = torch.zeros(prompt_ids.shape[0], dtype=torch.bool, device=prompt_ids.device)
    for _ in range(max_new_tokens):
        next_ids = _sample(logits[:, -1].float(), temperature, top_k, generator)
        if eos_token_id is not None:
            next_ids = torch.where(done, torch.full_like(next_ids, eos_token_id), next_ids)
            done |= next_ids == eos_token_id
        out.append(next_ids[:, None])
        if eos_token_id is not None and bool(done.all()):
            break
        logits, state = model(next_ids[:, None], state=state, return_state=True)
    return torch.cat(out, dim=1)


def _sample(logits, temperature, top_k, generator):
    if temperature <= 0:
        return logits.argmax(-1)
    logits = logits / temperature
    if top_k is not None:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    return torch.multinomial(torch.softmax(logits, -1), 1, generator=generator)[:, 0]
