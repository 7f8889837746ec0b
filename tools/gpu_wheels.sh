#!/usr/bin/env bash
# Prepare .whl/ here (a machine with PyPI) for tools/gpu_check.sh on the GPU machine, whose image has
# torch, triton, transformers, numpy, pyyaml, tokenizers, safetensors, matplotlib, scipy but cannot
# download: the packages our trainer and benchmarks need beyond that (xlstm: the official sLSTM peer of
# tools/bench/kernels.py), as Python 3.12 x86-64 wheels.
# DeepSpeed ships only a source distribution: it is built here into a pure-Python wheel (its CUDA ops
# are compiled just in time, and ZeRO with the torch optimiser needs none).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
mkdir -p .whl
plat=(--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)
pin() { grep -i -E "^${1//[-_]/[-_]}==" constraints.txt 2>/dev/null | head -1 || true; }  # - and _ alike
for name in hjson pydantic pydantic-core annotated-types typing-inspection zstandard flash-linear-attention fla-core \
            mlstm_kernels xlstm ninja; do
    spec="$(pin "$name")"
    "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp "${plat[@]}" \
        -d .whl "${spec:-$name}"
done
spec="$(pin deepspeed)"
"$PY" -m pip wheel -q --no-deps --no-build-isolation -w .whl "${spec:-deepspeed}"
du -sh .whl
ls .whl
