#!/usr/bin/env bash
# The project's test command (README, CI): creates or reuses .venv, installs .[dev] at the versions in
# constraints.txt (known to pass), runs pytest.
#   bash tools/run_tests.sh            default tier (everything not marked slow)
#   bash tools/run_tests.sh --slow     the slow tier only
#   bash tools/run_tests.sh --latest   the tests against reference packages (transformers, xlstm,
#                                      flash-linear-attention, ...) in .venv-latest with their newest
#                                      releases, to see upstream drift before users do
#   bash tools/run_tests.sh -- ARGS    extra pytest arguments (after any of the above too)
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"

# Tests that compare with, load into or run on packages released by others.
REFERENCE_TESTS=(
    tests/test_export_hf.py                 # transformers loads and generates from our exports
    tests/test_parity_official.py           # xlstm, transformers' xLSTM
    tests/test_model.py::test_paper_init_matches_official
    tests/test_slstm_cell.py                # xlstm's sLSTM cell
    tests/test_kernels_fla.py               # flash-linear-attention kernels
    tests/test_fused_ops_fla.py
    tests/test_downstream_eval.py           # lm-evaluation-harness drives our model and our HF exports
)

if [ "${1:-}" = "--latest" ]; then
    shift
    [ "${1:-}" = "--" ] && shift
    bash tools/setup_venv.sh dev --latest
    echo "== newest releases in .venv-latest (torch stays at its pinned build):"
    .venv-latest/bin/python -m pip list 2>/dev/null | grep -i -E \
        "^(torch|transformers|tokenizers|huggingface[-_]hub|xlstm|mlstm[-_]kernels|flash-linear-attention|fla-core|triton) " || true
    exec .venv-latest/bin/python -m pytest -q -m "not slow" -p no:cacheprovider "${REFERENCE_TESTS[@]}" "$@"
fi

bash tools/setup_venv.sh dev
marker=(-m "not slow")
if [ "${1:-}" = "--slow" ]; then marker=(-m slow); shift; fi
[ "${1:-}" = "--" ] && shift
exec .venv/bin/python -m pytest -q "${marker[@]}" -p no:cacheprovider "$@"
