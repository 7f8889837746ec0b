#!/usr/bin/env bash
# Quickstart on a fresh machine (CPU is enough): create .venv, install, run the main job end to end.
# Until the trainer lands this is the model smoke demo: a tiny xLSTM[3:1] learns a toy corpus and
# generates from it with its recurrent state.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup_venv.sh dev
OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}" .venv/bin/python -m xlstm_pretrain.demo --config configs/model/tiny_paper.yaml "$@"
