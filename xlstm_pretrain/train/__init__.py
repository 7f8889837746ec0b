"""Training: ``python -m xlstm_pretrain.train --config RUN.yaml [key=value ...]`` (under torchrun or deepspeed).

    trainer.py     the training loop, top to bottom (main, train; one Trainer method per part of a step)
    hooks.py       TrainerHooks: test/debug callbacks in the loop (XLSTM_TRAIN_HOOKS for the command line)
    config.py      TrainConfig, OptimConfig, CheckpointConfig, LoggingConfig, EvalConfig; cross-section checks
    setup.py       process group and device, config loading, data and tokenizer checks, the DeepSpeed engine
    optim.py       AdamW weight-decay groups and learning-rate schedules
    batch_schedule.py  the global batch per step (train.batch_size_rampup), tokens consumed before a step
    checkpoint.py  atomic checkpoints (DeepSpeed state + data position + RNG + config), resume, consolidation
    metrics.py     FLOPs/MFU, stdout lines, metrics.jsonl, wandb, gate telemetry, plots
    validation.py  validation loss/perplexity, FLOP milestones, the unigram baseline (in training and for
                   the standalone `python -m xlstm_pretrain.evaluate`)

This package imports nothing heavy: the root config imports ``train.config``.
"""
