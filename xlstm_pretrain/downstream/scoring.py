"""Log-likelihood scoring and greedy generation on our model, without lm-evaluation-harness.

The recurrent advantage: a context is run once; its final state is where every continuation of that
context starts. Multiple-choice tasks (HellaSwag: 4 endings, PIQA: 2, ARC: 4-5) share one context per
question, so the context tokens (most of the tokens) are processed once instead of once per choice.

A request is (context tokens, continuation tokens). Truncation follows lm-evaluation-harness's rule for
causal models, so that the numbers equal ``lm_eval --model hf`` on the exported folder: the model sees
the last ``max_length`` tokens of context + continuation without the last token (``max_length=None``:
everything; a recurrent model has no position limit). After truncation the request splits into

    prefix   window[:-m]          run once per distinct prefix (batched, left-padded, see below)
    rest     window[-m:-1]        run from the prefix's final state (batched, right-padded)

with m the continuation length: the prefix's last logits score the first continuation token, the
rest's logits the others.

Padding: the prefixes of a batch have different lengths, and their *final* states are needed, so they
are padded on the left and the first real token of each row is marked as a document start
(``doc_boundaries``): every block resets its recurrent and conv state there, which is exactly the zero
state a lone prefix starts from. Continuations are padded on the right: a position never depends on
later ones, and their final states are not used.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.utils._pytree import tree_map

import xlstm_kernels

PAD_ID = 0  # any id: padded positions are reset away (prefixes) or never read (continuations)


def model_logits(model, hidden: torch.Tensor) -> torch.Tensor:
    """Full-vocabulary logits from output-normed hidden states (``model(..., return_hidden=True)``):
    the LM head (vocab-parallel under TP: gathered), and the large family's logit soft cap, as
    ``xLSTMLM.forward`` applies them. Lets a caller compute logits only where it reads them."""
    logits = model.logits_from_hidden(hidden)
    state = getattr(model, "parallel_state", None)
    if state is None or state.tp == 1:
        return logits
    from xlstm_pretrain.parallel import gather_logits

    return gather_logits(model, logits)


class FullLogits(torch.nn.Module):
    """``model`` with full-vocabulary logits (gathered under TP), for ``model.generate``: the same call
    signature as ``xLSTMLM.forward`` for what generation uses."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, state=None, doc_boundaries=None, return_state=False):
        out = self.model(input_ids, state=state, doc_boundaries=doc_boundaries, return_state=return_state,
                         return_hidden=True)
        hidden, new_state = out if return_state else (out, None)
        logits = model_logits(self.model, hidden)
        return (logits, new_state) if return_state else logits


@dataclass
class _Request:
    index: int
    prefix: tuple[int, ...]
    rest: list[int]  # continuation inputs after the first (window[-m:-1])
    targets: list[int]  # the continuation tokens (window[-m:])


def split_request(context: list[int], continuation: list[int], max_length: int | None) -> tuple[list[int], list[int]]:
    """(prefix, continuation) after lm-evaluation-harness's left truncation to ``max_length`` inputs."""
    if not continuation:
        raise ValueError("empty continuation: nothing to score")
    if not context:
        raise ValueError("empty context: lm-evaluation-harness gives the prefix token (bos/eos) as context")
    window = context + continuation
    if max_length is not None:
        if len(continuation) > max_length:
            raise ValueError(f"continuation of {len(continuation)} tokens is longer than max_length={max_length}")
        window = window[-(max_length + 1):]
    m = len(continuation)
    return window[:-m], window[-m:]


def _select(state, rows: list[int]):
    """The rows ``rows`` (batch dim 0) of a nested model state (lists/dicts/tuples of tensors)."""
    index = None

    def pick(t):
        nonlocal index
        if index is None or index.device != t.device:
            index = torch.tensor(rows, device=t.device)
        return t.index_select(0, index)

    return tree_map(lambda t: pick(t) if isinstance(t, torch.Tensor) else t, state)


def _forward(model, ids: torch.Tensor, *, state=None, bounds=None, return_state=False):
    if bounds is not None:
        xlstm_kernels.register_document_boundaries(bounds, bounds.cpu())
    return model(ids, state=state, doc_boundaries=bounds, return_state=return_state, return_hidden=True)


@torch.no_grad()
def score_requests(model, requests: list[tuple[list[int], list[int]]], *, batch_size: int = 16,
                   max_length: int | None = None, device=None, autocast=None) -> list[tuple[float, bool]]:
    """(log p(continuation | context), whether greedy decoding gives the continuation) per request,
    with every distinct (truncated) context run once (see the module docstring). ``model``: an
    ``xLSTMLM``, tensor-parallel or not (every TP rank must call this with the same requests)."""
    device = device or next(model.parameters()).device
    autocast = autocast or contextlib.nullcontext
    reqs = []
    for i, (ctx, cont) in enumerate(requests):
        prefix, targets = split_request(list(ctx), list(cont), max_length)
        reqs.append(_Request(i, tuple(prefix), targets[:-1], targets))
    groups: dict[tuple[int, ...], list[_Request]] = {}
    for r in reqs:
        groups.setdefault(r.prefix, []).append(r)
    # longest first: similar lengths share a batch (little padding), and memory problems show at once
    prefixes = sorted(groups, key=len, reverse=True)
    out: list[tuple[float, bool] | None] = [None] * len(reqs)
    was_training = model.training
    model.eval()
    for start in range(0, len(prefixes), batch_size):
        batch = prefixes[start:start + batch_size]
        width = len(batch[0])
        ids = torch.full((len(batch), width), PAD_ID, dtype=torch.long)
        bounds = torch.zeros((len(batch), width), dtype=torch.bool)
        for row, prefix in enumerate(batch):
            ids[row, width - len(prefix):] = torch.tensor(prefix)
            bounds[row, width - len(prefix)] = True
        padded = any(len(p) < width for p in batch)
        with autocast():
            hidden, state = _forward(model, ids.to(device), bounds=bounds.to(device) if padded else None,
                                     return_state=True)
            first = F.log_softmax(model_logits(model, hidden[:, -1]).double(), dim=-1)  # (B, V)
        members = [(row, r) for row, prefix in enumerate(batch) for r in groups[prefix]]
        for row, r in members:
            lp = first[row, r.targets[0]].item()
            out[r.index] = (lp, bool(first[row].argmax().item() == r.targets[0]))
        _score_rests(model, state, [(row, r) for row, r in members if r.rest], out, batch_size, device, autocast)
    model.train(was_training)
    return out  # type: ignore[return-value]


def _score_rests(model, state, members, out, batch_size, device, autocast) -> None:
    """Add the log-probabilities of continuation tokens 2..m, each row starting from its prefix's state."""
    members = sorted(members, key=lambda m: len(m[1].rest), reverse=True)
    for start in range(0, len(members), batch_size):
        chunk = members[start:start + batch_size]
        width = len(chunk[0][1].rest)
        ids = torch.full((len(chunk), width), PAD_ID, dtype=torch.long)
        for j, (_, r) in enumerate(chunk):
            ids[j, :len(r.rest)] = torch.tensor(r.rest)
        with autocast():
            hidden, _ = _forward(model, ids.to(device), state=_select(state, [row for row, _ in chunk]),
                                 return_state=True)
            logp = F.log_softmax(model_logits(model, hidden).double(), dim=-1)  # (B, W, V)
        for j, (_, r) in enumerate(chunk):
            n = len(r.rest)
            targets = torch.tensor(r.targets[1:], device=logp.device)
            lp = logp[j, :n].gather(-1, targets[:, None]).sum().item()
            greedy = bool((logp[j, :n].argmax(-1) == targets).all().item())
            prev_lp, prev_greedy = out[r.index]
            out[r.index] = (prev_lp + lp, prev_greedy and greedy)


@torch.no_grad()
def score_from_scratch(model, context: list[int], continuation: list[int], max_length: int | None = None,
                       device=None) -> tuple[float, bool]:
    """The reference for ``score_requests``: one request, context + continuation in one forward from
    the zero state, no state reuse, no padding."""
    device = device or next(model.parameters()).device
    prefix, targets = split_request(list(context), list(continuation), max_length)
    window = torch.tensor([prefix + targets[:-1]], device=device)
    logp = F.log_softmax(model_logits(model, _forward(model, window)).double(), dim=-1)[0, -len(targets):]
    t = torch.tensor(targets, device=device)
    return logp.gather(-1, t[:, None]).sum().item(), bool((logp.argmax(-1) == t).all().item())
