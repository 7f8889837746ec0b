#!/usr/bin/env bash
# The project's test command (README, CI): creates or reuses .venv, installs .[dev], runs pytest.
#   bash tools/run_tests.sh            default tier (everything not marked slow)
#   bash tools/run_tests.sh --slow     the slow tier only
#   bash tools/run_tests.sh -- ARGS    extra pytest arguments
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup_venv.sh dev
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
marker=(-m "not slow")
if [ "${1:-}" = "--slow" ]; then marker=(-m slow); shift; fi
[ "${1:-}" = "--" ] && shift
exec .venv/bin/python -m pytest -q "${marker[@]}" -p no:cacheprovider "$@"
