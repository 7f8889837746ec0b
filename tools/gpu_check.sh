#!/usr/bin/env bash
# One command for a lent H100/H200 (the `device` tool; <= 8 minutes): CUDA correctness of the kernels,
# the kernel benchmark against the peers, and the real trainer's tokens/s, MFU and peak memory for the
# 125M models. Prints a markdown section for tools/bench/RESULTS.md and writes it to $OUT (or ./gpu_check.md).
#
# Here, first: bash tools/gpu_wheels.sh   (packages the GPU image lacks, into the ignored .whl/)
# Then, with the device tool:  run(command="bash tools/gpu_check.sh", carry=[".whl"], timeout_s=540)
#
# Each stage has its own time limit so that a hang in one still leaves the others' results.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-.}"
REPORT="$OUT/gpu_check.md"
export PYTHONUNBUFFERED=1 TRITON_INTERPRET=0 XLSTM_KERNEL_SELFCHECK=raise
PY="${PYTHON:-python3}"
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        || { echo "wheel install failed"; exit 1; }
    export PYTHONPATH="/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
else
    export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
# The package installs kernels/ as xlstm_kernels; without an install, a link does the same.
[ -e /tmp/site/xlstm_kernels ] || { mkdir -p /tmp/site; ln -sfn "$PWD/kernels" /tmp/site/xlstm_kernels; }
export PYTHONPATH="/tmp/site:$PYTHONPATH"

device="$("$PY" -c 'import torch; print(torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no CUDA device")')"
versions="$("$PY" -c 'import torch, triton; print(f"torch {torch.__version__}, triton {triton.__version__}")')"
stage() {  # stage NAME SECONDS CMD...: run, tee its output, record pass/fail
    local name="$1" secs="$2"; shift 2
    echo "=== $name: $*"
    timeout "$secs" "$@" 2>&1 | tee "$OUT/$name.log"
    local rc=${PIPESTATUS[0]}
    echo "| $name | \`$*\` | $([ "$rc" -eq 0 ] && echo pass || echo "FAIL (exit $rc)") |" >> "$OUT/stages.md"
    return 0
}
: > "$OUT/stages.md"
# The sm_90 compile / spill check needs no GPU (it runs in the CPU test suite) and takes minutes: not here.
# default tiles (XLSTM_TRITON_AUTOTUNE=0): the autotuner would compile every config of both tile forms (TMA and
# pointers) for each test shape; the tuned configs are checked by the kernels stage and the trainer's self-check
stage correctness 180 env XLSTM_TRITON_AUTOTUNE=0 "$PY" -m pytest -q -p no:cacheprovider tests/test_kernels_triton.py tests/test_kernels_fla.py \
    --deselect tests/test_kernels_triton.py::test_kernels_compile_for_sm90_without_gpu \
    tests/test_fused_ops_fla.py tests/test_backend_auto.py
stage kernels 150 "$PY" tools/bench/kernels.py --seqlens 2048 8192 --reps 5
stage train 150 "$PY" tools/bench/train_gpu.py --backend auto --steps 10 --skip 4 \
    --runs xlstm_1_0_125m_15b xlstm_7_1_125m_15b

{
    echo "## GPU check: \`bash tools/gpu_check.sh\` — $(date -u +%Y-%m-%d), $device, $versions"
    echo
    echo "| stage | command | result |"
    echo "|---|---|---|"
    cat "$OUT/stages.md"
    for name in kernels train; do
        echo
        echo "### $name"
        echo
        echo '```'
        tail -n 60 "$OUT/$name.log" 2>/dev/null
        echo '```'
    done
    echo
    echo "### correctness (tail)"
    echo
    echo '```'
    tail -n 15 "$OUT/correctness.log" 2>/dev/null
    echo '```'
} > "$REPORT"
cat "$REPORT"
