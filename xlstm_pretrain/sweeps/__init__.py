"""Scaling-law sweeps: from a sweep YAML to fitted laws and figures (CLI: ``tools/sweep.py``).

- ``spec``: the sweep YAML (base run config, shape rule, LR rule, schedule, grids);
- ``shapes``: width or parameter target -> blocks, heads, sLSTM positions along the paper's size table;
- ``lr_rules``: peak LR per size (the paper's Table 7, a power rule or a constant);
- ``grid``: IsoFLOP and token-multiple grids -> points -> one resolved run config each + ``manifest.json``;
- ``launch``: run the configs locally (in sequence or a few at once) or as a SLURM job array;
- ``collect``: every run's ``metrics.jsonl`` validation rows -> one table (CSV and JSON);
- ``isoflop``, ``parametric``, ``fit``: IsoFLOP parabolas and power laws; L(N, D) = E + A/N^a + B/D^b
  by Huber on log loss with L-BFGS; bootstrap intervals; predictions;
- ``plot``: loss vs FLOPs, IsoFLOP curves, compute-optimal frontier (PNG).
"""
