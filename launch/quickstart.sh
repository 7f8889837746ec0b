#!/usr/bin/env bash
# Quickstart (README command 1), on a fresh CPU machine in about 5 minutes on 2 cores (plus the first
# install): create .venv and install; build a small SlimPajama-format corpus from the Python standard
# library (module sources and docstrings: text every Python installation has); train a BPE tokenizer;
# tokenize; train a small xLSTM[7:1] for 250 steps with 2 processes (tensor parallel 2) under DeepSpeed
# ZeRO-1; evaluate the saved checkpoint against the unigram baseline. Everything goes to runs/quickstart/.
#   bash launch/quickstart.sh                      # the whole thing
#   bash launch/quickstart.sh train.steps=50       # extra arguments are config overrides for the trainer
#   bash launch/quickstart.sh train.steps=20       # shorter than the 25 warm-up steps: they are shortened (a note says so)
#   bash launch/quickstart.sh --downstream         # + a local multiple-choice task written from the held-out corpus,
#                                                  # evaluated (lm-evaluation-harness) during training (eval.tasks)
#                                                  # and at the end: milestone table, accuracy vs FLOPs plot
set -euo pipefail
cd "$(dirname "$0")/.."
DOWNSTREAM=0
overrides=()
for arg in "$@"; do
    if [ "$arg" = "--downstream" ]; then DOWNSTREAM=1; else overrides+=("$arg"); fi
done
set -- ${overrides[@]+"${overrides[@]}"}
start=$(date +%s)
bash tools/setup_venv.sh dev
PY=.venv/bin/python
export OMP_NUM_THREADS=1 PYTHONUNBUFFERED=1 WANDB_SILENT=true   # wandb logs offline (no API key needed)
OUT=runs/quickstart
DATA=$OUT/data
rm -rf "$OUT"
mkdir -p "$DATA"

echo "== 1/5 corpus: Python standard library sources and docstrings, SlimPajama jsonl.zst layout"
$PY tools/stdlib_corpus.py --output "$DATA/corpus" --max-mb 4
downstream=()  # trainer overrides for --downstream (after the user's, which cannot undo them)
if [ "$DOWNSTREAM" = 1 ]; then
    export HF_DATASETS_OFFLINE=1 HF_HUB_OFFLINE=1  # a local task: nothing to download
    $PY -m xlstm_pretrain.downstream.local_task --texts "$DATA/corpus/validation" --out "$OUT/tasks" --docs 100
    downstream=("eval.tasks=[local_cloze]" "eval.task_paths=[$OUT/tasks]" eval.tasks_every=2 eval.tasks_limit=40)
fi
echo "== 2/5 tokenizer: byte-level BPE, 2048 ids"
$PY -m data_prep.train_tokenizer --input "$DATA/corpus/train" --vocab-size 2048 --output "$DATA/tokenizer.json"
echo "== 3/5 tokenize into Megatron shards (+ manifest with the tokenizer's sha256)"
$PY -m data_prep.tokenize --tokenizer "$DATA/tokenizer.json" --input "$DATA/corpus/train" \
    --validation-input "$DATA/corpus/validation" --output-dir "$DATA/tokens" --workers 2 2>&1 \
    | tr '\r' '\n' | grep -v -E "^tokenizing|^$"
echo "== 4/5 train: 2 processes, TP=2, DeepSpeed ZeRO-1 (configs/quickstart.yaml)"
# optim.fit_short_runs: a train.steps=N shorter than the warm-up gets a shorter warm-up (noted) instead of an error
.venv/bin/torchrun --standalone --nproc_per_node 2 -m xlstm_pretrain.train --config configs/quickstart.yaml \
    --resume none optim.fit_short_runs=true "$@" ${downstream[@]+"${downstream[@]}"} 2>&1 \
    | grep -v -E "^\[.*(WARNING|INFO)|FutureWarning|return func|^W[0-9]{4} |it/s\]|^Generating"
echo "== 5/5 evaluate the final checkpoint on the whole validation split"
$PY -m xlstm_pretrain.evaluate --checkpoint "$OUT/train" --unigram-baseline eval.samples=0 \
    --output "$OUT/eval.json" 2>&1 | grep -v -E "^\[.*(WARNING|INFO)"

$PY - "$OUT" "$(( $(date +%s) - start ))" "$#" <<'PY'
import json, sys
from pathlib import Path
out, seconds, overridden = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]) > 0
r = json.loads((out / "eval.json").read_text())
s = json.loads((out / "train" / "summary.json").read_text())
margin = r["unigram_loss"] - r["val_loss"]
print(f"""
quickstart finished in {seconds // 60} min {seconds % 60} s
  validation loss   {r['val_loss']:.3f} nats/token (perplexity {r['val_ppl']:.1f}) on {r['tokens']:,} held-out tokens
  unigram baseline  {r['unigram_loss']:.3f} nats/token  ->  {margin:.2f} nats below it
  metrics           {s['metrics']}
  plot              {s['plot']}
  checkpoint        {s['checkpoint']}  (consolidated weights: {s['checkpoint']}/consolidated)""")
if margin < 1.0 and overridden:  # e.g. train.steps=20: too short to be judged against the baseline
    print("  (the 1-nat margin below the unigram baseline is checked only for the run as configured)")
elif margin < 1.0:
    sys.exit("the validation loss is not well below the unigram baseline: something is wrong")
PY

if [ "$DOWNSTREAM" = 1 ]; then
    echo "== downstream: a 4-way cloze task from the held-out corpus (chance 0.25), through lm-evaluation-harness"
    echo "-- during training (40 documents, every second FLOP milestone and the end):"
    $PY -m xlstm_pretrain.downstream.table "$OUT/train" --metric all --plot "$OUT/train/downstream.png"
    echo "-- the final checkpoint, all 100 documents:"
    $PY -m xlstm_pretrain.evaluate --checkpoint "$OUT/train" --tasks local_cloze --include-path "$OUT/tasks" \
        --output "$OUT/downstream.json" 2>&1 | grep -v -E "^\[.*(WARNING|INFO)|it/s\]|^Generating"
fi
