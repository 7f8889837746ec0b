#!/usr/bin/env bash
# One node, all its GPUs (or N CPU processes), restarted from the last checkpoint if a rank dies.
#   bash launch/single_node.sh configs/runs/xlstm_7_1_125m_15b.yaml [--config configs/layout/tp2_zero1.yaml] [key=value ...]
#   NPROC=2 bash launch/single_node.sh configs/quickstart.yaml          # CPU: gloo, 2 processes
# Environment: NPROC (default: the GPU count, else 2), MAX_RESTARTS (default 3).
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 1 ] || { sed -n 2,5p "$0"; exit 2; }
config=$1; shift
if [ -z "${NPROC:-}" ]; then
    NPROC=$(.venv/bin/python -c "import torch; print(torch.cuda.device_count() or 2)")
fi
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
exec .venv/bin/torchrun --standalone --nproc_per_node "$NPROC" --max-restarts "${MAX_RESTARTS:-3}" \
    -m xlstm_pretrain.train --config "$config" --resume auto "$@"
