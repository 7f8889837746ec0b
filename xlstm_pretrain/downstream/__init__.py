"""Downstream (zero-shot task) evaluation through lm-evaluation-harness.

    scoring.py         log-likelihoods with the context's recurrent state reused, greedy generation (no lm-eval)
    lm_eval_adapter.py XLSTMEvalLM: our model as an lm-eval LM (needs the optional extra ``eval``)
    tasks.py           check (fail fast), run and summarise lm-eval tasks, local task folders included
    local_task.py      write a small local multiple-choice task from held-out text
    checkpoint.py      load a checkpoint for evaluation at any TP degree
    in_training.py     eval.tasks: checked before training, run with validation at FLOP milestones
    table.py           a run's milestones as a table, and accuracy vs FLOPs plots

lm-eval is imported only by lm_eval_adapter.py and tasks.py (lazily), so the rest works without it.
"""
