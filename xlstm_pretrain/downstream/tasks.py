"""lm-evaluation-harness tasks: check that they load (before training starts), run them, summarise.

Task names are lm-eval's (lambada_openai, hellaswag, piqa, arc_easy, arc_challenge, winogrande: the
paper's Table 3) or tasks of a local folder of lm-eval YAML files (``include_path``; e.g. one written by
``downstream.local_task``). A name found in the local folder does not need lm-eval's own task index,
which takes half a minute to build, so it is only built when a name is not local.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

from xlstm_pretrain.config import ConfigError

LM_EVAL_MISSING = ("downstream tasks need lm-evaluation-harness: pip install 'xlstm-pretrain[eval]' "
                   "(or pip install -c constraints.txt lm-eval)")
PAPER_TASKS = ("lambada_openai", "hellaswag", "piqa", "arc_easy", "arc_challenge", "winogrande")


def require_lm_eval():
    try:
        import lm_eval
    except ImportError as e:
        raise ConfigError(f"{LM_EVAL_MISSING} ({e})") from e
    return lm_eval


def parse_task_list(tasks: str | Sequence[str]) -> list[str]:
    names = [t.strip() for t in (tasks.split(",") if isinstance(tasks, str) else tasks)]
    names = [t for t in names if t]
    if len(set(names)) != len(names):
        raise ConfigError(f"tasks {names} name a task twice")
    return names


def task_manager(names: Sequence[str], include_path: str | Path | Sequence[str | Path] | None = None):
    """An lm-eval TaskManager that knows ``names``: the local folders alone when they define every name,
    with lm-eval's own tasks otherwise."""
    require_lm_eval()
    from lm_eval.tasks import TaskManager

    paths = [] if include_path is None else [include_path] if isinstance(include_path, (str, Path)) else list(include_path)
    for p in paths:
        if not Path(p).is_dir():
            raise ConfigError(f"task folder {p} does not exist")
    paths = [str(p) for p in paths]
    if paths:
        local = TaskManager(include_path=paths, include_defaults=False)
        if all(n in local.all_tasks for n in names):
            return local
    return TaskManager(include_path=paths or None)


def check_tasks(names: Sequence[str], include_path=None, manager=None):
    """Load every task (its dataset included) now, so that a misspelt name or an unreachable dataset is
    a ConfigError before any compute is spent. Returns the TaskManager (reuse it to run them)."""
    names = parse_task_list(names)
    if not names:
        raise ConfigError("no downstream tasks given")
    manager = manager or task_manager(names, include_path)
    unknown = [n for n in names if n not in manager.all_tasks]
    if unknown:
        local = "" if include_path is None else f" or in {include_path}"
        raise ConfigError(f"unknown lm-eval task(s) {unknown}: not among lm-eval's tasks{local} "
                          "(see `lm_eval ls tasks`; local tasks are YAML files with a `task:` name)")
    for name in names:
        try:
            loaded = manager.load([name])
        except Exception as e:  # noqa: BLE001 - datasets/hub/YAML errors of any kind: say which task
            raise ConfigError(f"lm-eval task {name!r} does not load: {type(e).__name__}: {e}") from e
        for task_name, task in loaded["tasks"].items():
            docs = task.eval_docs
            if docs is None or len(docs) == 0:
                raise ConfigError(f"lm-eval task {task_name!r} has no evaluation documents")
    return manager


def run_tasks(lm, names: Sequence[str], *, include_path=None, manager=None, limit: int | float | None = None,
              num_fewshot: int | None = None, log_samples: bool = False, seed: int = 1234,
              bootstrap_iters: int = 0) -> dict[str, Any]:
    """Evaluate ``lm`` (an lm-eval LM, e.g. ``XLSTMEvalLM``) on the tasks: lm-eval's result dict
    ("results", "samples" with ``log_samples``, ...).

    What ``lm_eval.simple_evaluate`` does for a ready LM (seeds, zero-shot unless ``num_fewshot``, the
    few-shot seed), without its environment report (pip freeze and friends: seconds at every training
    milestone). The global RNG states are restored afterwards, so evaluating inside training does not
    change what training draws next."""
    require_lm_eval()
    import random

    import numpy as np
    import torch
    from lm_eval.evaluator import evaluate

    names = parse_task_list(names)
    manager = manager or task_manager(names, include_path)
    saved = random.getstate(), np.random.get_state()
    # fork_rng restores the CPU generator and every CUDA generator that torch.manual_seed reseeds
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    with torch.random.fork_rng(devices=devices):
        try:
            random.seed(seed)
            np.random.seed(seed)
            torch.manual_seed(seed)
            loaded = manager.load(list(names))
            for task in loaded["tasks"].values():
                configured = task.get_config("num_fewshot")
                if num_fewshot is not None and configured != 0:
                    task.set_config(key="num_fewshot", value=num_fewshot)
                elif configured is None:
                    task.set_config(key="num_fewshot", value=0)
                task.set_fewshot_seed(seed=seed)
            return evaluate(lm=lm, task_dict=loaded, limit=limit, bootstrap_iters=bootstrap_iters,
                            log_samples=log_samples)
        finally:
            random.setstate(saved[0])
            np.random.set_state(saved[1])


def summarize(results: dict[str, Any]) -> dict[str, dict[str, float]]:
    """{task: {metric: value}} from a simple_evaluate result: lm-eval's "acc,none" keys without the filter
    name ("acc,flexible" keeps it: "acc/flexible"), no stderr entries, no aliases."""
    out: dict[str, dict[str, float]] = {}
    for task, metrics in results["results"].items():
        row = {}
        for key, value in metrics.items():
            if "," not in key or "_stderr" in key or not isinstance(value, (int, float)):
                continue
            metric, filt = key.split(",", 1)
            row[metric if filt == "none" else f"{metric}/{filt}"] = float(value)
        out[task] = row
    return out


def flat_metrics(summary: dict[str, dict[str, float]], prefix: str = "downstream") -> dict[str, float]:
    """{"downstream/<task>/<metric>": value}: the keys of metrics.jsonl rows and wandb. Non-finite
    values (lm-eval's perplexity of an empty task) are left out."""
    return {f"{prefix}/{task}/{metric}": v for task, row in summary.items() for metric, v in row.items()
            if math.isfinite(v)}
