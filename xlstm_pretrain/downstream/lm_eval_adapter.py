"""Our model as an lm-evaluation-harness LM (``lm_eval.api.model.TemplateLM``).

    lm = XLSTMEvalLM(model, tokenizer)                   # a live model (e.g. inside training)
    lm = XLSTMEvalLM.from_checkpoint("runs/x/train")     # run dir / training checkpoint / plain dir
    lm_eval.simple_evaluate(model=lm, tasks=[...])

- loglikelihood: ``scoring.score_requests``: one pass per distinct context, every continuation from
  the context's recurrent state; the same truncation as ``lm_eval --model hf`` (``max_length``
  defaults to the training context, which is the exported tokenizer's ``model_max_length``), so the
  exported folder gives the same numbers.
- loglikelihood_rolling: lm-eval's rolling windows of ``max_length`` tokens, scored the same way.
- generate_until: greedy (or sampled, with ``do_sample``) ``model.generate`` on batches of equal-length
  contexts, cut at the stop strings as the hf model cuts them.

Tensor parallelism: every TP rank runs lm-eval with the same requests (lm-eval sees one process),
the forwards run in lock step and the logits are gathered over the vocabulary shards.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from lm_eval.models.utils import handle_stop_sequences, normalize_gen_kwargs, postprocess_generated_text
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window
from tqdm import tqdm

from xlstm_pretrain.model import generate

from .scoring import FullLogits, score_requests

EOD_TOKEN = "<|endoftext|>"


def load_tokenizer(path: str | Path):
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(path))


@register_model("xlstm_pretrain")
class XLSTMEvalLM(TemplateLM):
    def __init__(self, model=None, tokenizer=None, *, checkpoint: str | None = None, dtype: str = "auto",
                 batch_size: int | str = 16, max_length: int | None = None, max_gen_toks: int = 256,
                 eot_token_id: int | None = None, prefix_token_id: int | None = None, device=None, autocast=None,
                 **_ignored):
        super().__init__()
        if checkpoint is not None:  # lm_eval's model_args: checkpoint=DIR[,dtype=float64,batch_size=8]
            from .checkpoint import load_for_eval

            loaded = load_for_eval(checkpoint, dtype=dtype)
            model, tokenizer, autocast = loaded.model, loaded.tokenizer, autocast or loaded.autocast
            eot_token_id = eot_token_id if eot_token_id is not None else loaded.token_ids.get("eos_token_id")
            prefix_token_id = prefix_token_id if prefix_token_id is not None else loaded.token_ids.get("bos_token_id")
        if model is None or tokenizer is None:
            raise ValueError("XLSTMEvalLM needs a model and a tokenizer (or checkpoint=DIR)")
        self.model = model
        self.tokenizer = load_tokenizer(tokenizer) if isinstance(tokenizer, (str, Path)) else tokenizer
        self.batch_size_per_call = 16 if batch_size == "auto" else int(batch_size)
        self._max_length = int(max_length) if max_length is not None else int(model.cfg.context_length)
        self._max_gen_toks = int(max_gen_toks)
        eod = self.tokenizer.token_to_id(EOD_TOKEN)
        self._eot = int(eot_token_id) if eot_token_id is not None else eod
        if self._eot is None:
            raise ValueError(f"no end-of-text token: the tokenizer has no {EOD_TOKEN!r}; give eot_token_id")
        self._prefix = int(prefix_token_id) if prefix_token_id is not None else self._eot
        self._device = device or next(model.parameters()).device
        self.autocast = autocast or contextlib.nullcontext

    @classmethod
    def from_checkpoint(cls, checkpoint: str | Path, overrides=(), dtype: str = "auto", **kwargs) -> "XLSTMEvalLM":
        """Load ``checkpoint`` (``downstream.checkpoint.load_for_eval``: any TP degree under torchrun)."""
        from .checkpoint import load_for_eval

        loaded = load_for_eval(checkpoint, overrides, dtype=dtype)
        ids = loaded.token_ids
        kwargs.setdefault("eot_token_id", ids.get("eos_token_id"))
        kwargs.setdefault("prefix_token_id", ids.get("bos_token_id"))
        return cls(loaded.model, loaded.tokenizer, autocast=loaded.autocast, device=loaded.device, **kwargs)

    # ---- what TemplateLM asks for -----------------------------------------------------------------

    @property
    def eot_token_id(self) -> int:
        return self._eot

    @property
    def prefix_token_id(self) -> int:
        return self._prefix

    @property
    def max_length(self) -> int:
        return self._max_length

    @property
    def max_gen_toks(self) -> int:
        return self._max_gen_toks

    @property
    def tokenizer_name(self) -> str:
        return "xlstm_pretrain"

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs) -> list[int]:
        # our tokenizers add nothing (data_prep's byte-level BPE has no template post-processor)
        return self.tokenizer.encode(string, add_special_tokens=bool(add_special_tokens)).ids

    def tok_decode(self, tokens: list[int]) -> str:
        return self.tokenizer.decode(tokens, skip_special_tokens=True)

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs) -> list[tuple[float, bool]]:
        results = score_requests(self.model, [(ctx, cont) for _, ctx, cont in requests],
                                 batch_size=self.batch_size_per_call, max_length=self.max_length,
                                 device=self._device, autocast=self.autocast)
        for (request_str, _, _), result in zip(requests, results):
            if request_str is not None:
                self.cache_hook.add_partial("loglikelihood", request_str, result)
        return results

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        windows, owners = [], []
        for n, (string,) in enumerate(req.args for req in requests):
            for ctx, cont in map(make_disjoint_window, get_rolling_token_windows(
                    token_list=self.tok_encode(string), prefix_token=self.prefix_token_id,
                    max_seq_len=self.max_length, context_len=1)):
                windows.append((None, ctx, cont))
                owners.append(n)
        scores = self._loglikelihood_tokens(windows, disable_tqdm=True)
        totals = [0.0] * len(requests)
        for n, (lp, _) in zip(owners, scores):
            totals[n] += lp
        for req, total in zip(requests, totals):
            self.cache_hook.add_partial("loglikelihood_rolling", req.args, total)
        return totals

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        eos = self.tokenizer.decode([self.eot_token_id], skip_special_tokens=False)
        batches: dict[tuple, list[int]] = {}
        prepared = []
        for n, (context, gen_kwargs) in enumerate(req.args for req in requests):
            kwargs = normalize_gen_kwargs(dict(gen_kwargs), self.max_gen_toks)
            until = handle_stop_sequences(kwargs.pop("until", None), eos=eos)
            new = int(kwargs.pop("max_gen_toks"))
            if new >= self.max_length:
                raise ValueError(f"max_gen_toks={new} must be below max_length={self.max_length}")
            temperature = float(kwargs.get("temperature", 0.0)) if kwargs.get("do_sample") else 0.0
            ids = self.tok_encode(context)[-(self.max_length - new):] or [self.prefix_token_id]
            prepared.append((ids, until))
            batches.setdefault((len(ids), new, temperature), []).append(n)
        out: list[str | None] = [None] * len(requests)
        full = FullLogits(self.model)
        for (_, new, temperature), members in tqdm(batches.items(), disable=disable_tqdm, desc="generate_until"):
            for start in range(0, len(members), self.batch_size_per_call):
                rows = members[start:start + self.batch_size_per_call]
                prompt = torch.tensor([prepared[n][0] for n in rows], device=self._device)
                with self.autocast():
                    tokens = generate(full, prompt, new, temperature=temperature, eos_token_id=self.eot_token_id)
                for n, row in zip(rows, tokens[:, prompt.shape[1]:].tolist()):
                    text = postprocess_generated_text(generation=self.tok_decode(row), stop=prepared[n][1],
                                                      think_end_token=None)
                    out[n] = text
                    self.cache_hook.add_partial("generate_until", requests[n].args, text)
        return out  # type: ignore[return-value]
