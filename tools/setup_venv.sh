#!/usr/bin/env bash
# Create (or reuse) .venv and install the project with the given extras (default: dev).
# torch is installed first and pinned so that CPU machines do not pull a multi-GB CUDA build;
# set TORCH_SPEC (e.g. "torch==2.13.0 --index-url ...") to choose another build.
set -euo pipefail
cd "$(dirname "$0")/.."
EXTRAS="${1:-dev}"
PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
    .venv/bin/python -m pip install -q --upgrade pip
fi
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
    .venv/bin/python -m pip install -q ${TORCH_SPEC:-torch==2.13.0}
fi
# Reinstall only when the dependency list changed.
stamp=".venv/.installed-$EXTRAS-$(sha1sum pyproject.toml | cut -c1-12)"
if [ ! -f "$stamp" ]; then
    .venv/bin/python -m pip install -q -e ".[$EXTRAS]"
    touch "$stamp"
fi
