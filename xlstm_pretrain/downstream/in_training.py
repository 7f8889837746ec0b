"""Downstream tasks inside training (``eval.tasks``): checked before the first step, run with validation.

    downstream = DownstreamEvaluator.from_config(cfg)     # in the trainer's checks: ConfigError on a bad task
    if downstream and downstream.due(reason, milestone):
        row.update(downstream.run(engine.module, device, autocast))   # {"downstream/<task>/<metric>": value}

Every rank runs every request (lm-eval sees one process): the TP ranks compute each forward together,
and ZeRO-3 sees every rank in every forward. The model is the training model (TP-sharded, any precision
the run uses), evaluated under the run's autocast; training mode and the RNG states are restored.
"""

from __future__ import annotations

import math
import time

from xlstm_pretrain.config import ConfigError

from .tasks import check_tasks, flat_metrics, parse_task_list, run_tasks, summarize


class DownstreamEvaluator:
    def __init__(self, cfg, manager):
        self.cfg, self.manager = cfg, manager
        self.tasks = parse_task_list(cfg.eval.tasks)
        self.tokenizer = None  # loaded at the first run

    @classmethod
    def from_config(cls, cfg) -> "DownstreamEvaluator | None":
        """None without ``eval.tasks``; otherwise every task is loaded now (ConfigError if one fails)."""
        e = cfg.eval
        if not e.tasks:
            return None
        if not cfg.train.tokenizer:
            raise ConfigError("eval.tasks needs train.tokenizer (the tokenizer.json the data was made with): "
                              "downstream tasks are text")
        if not cfg.data.validation:
            raise ConfigError("eval.tasks run together with the validation, which needs data.validation shards")
        p = cfg.parallel
        if p.context_parallel > 1 or p.sequence_parallel:
            # scoring runs whole contexts on every rank: under CP a rank's input would be taken as a later
            # slice of one sequence, and SP needs lengths divisible by TP (python -m xlstm_pretrain.evaluate
            # loads any checkpoint without them)
            raise ConfigError("eval.tasks needs parallel.context_parallel=1 and parallel.sequence_parallel=false "
                              f"(got context_parallel={p.context_parallel}, sequence_parallel={p.sequence_parallel}); "
                              "evaluate the checkpoints with python -m xlstm_pretrain.evaluate --tasks instead")
        if not (e.flop_milestones_per_decade or e.at_end):
            raise ConfigError("eval.tasks run at FLOP milestones and at the end: set eval.flop_milestones_per_decade "
                              "> 0 or eval.at_end=true")
        return cls(cfg, check_tasks(e.tasks, e.task_paths or None))

    def due(self, reason: str, milestone: float | None, at_end: bool = False) -> bool:
        """At the end (``at_end``: the run's last step with eval.at_end, whatever else it crossed), and at every
        ``eval.tasks_every``-th FLOP milestone 10^(k/per_decade) (k % every == 0): a function of the FLOP grid,
        so resumed and uninterrupted runs evaluate at the same points."""
        if at_end or reason == "end":
            return True
        if reason != "milestone" or milestone is None:
            return False
        k = round(self.cfg.eval.flop_milestones_per_decade * math.log10(milestone))
        return k % self.cfg.eval.tasks_every == 0

    def run(self, model, device, autocast) -> dict[str, float]:
        """{"downstream/<task>/<metric>": value, "downstream/seconds": wall time} for the val row."""
        from .lm_eval_adapter import XLSTMEvalLM, load_tokenizer

        e = self.cfg.eval
        if self.tokenizer is None:
            self.tokenizer = load_tokenizer(self.cfg.train.tokenizer)
        start = time.perf_counter()
        lm = XLSTMEvalLM(model, self.tokenizer, batch_size=e.tasks_batch_size, device=device,
                         autocast=lambda: autocast)
        results = run_tasks(lm, self.tasks, manager=self.manager, limit=e.tasks_limit,
                            num_fewshot=e.tasks_num_fewshot)
        out = flat_metrics(summarize(results))
        out["downstream/seconds"] = time.perf_counter() - start
        return out

    @staticmethod
    def describe(metrics: dict[str, float]) -> str:
        """One stdout line: task metric values (acc, acc_norm where present)."""
        parts = [f"{k.removeprefix('downstream/')} {v:.4f}" for k, v in metrics.items()
                 if k.rsplit("/", 1)[-1] in ("acc", "acc_norm")]
        return "downstream: " + ", ".join(parts) + f" ({metrics.get('downstream/seconds', 0.0):.1f} s)"
