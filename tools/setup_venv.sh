#!/usr/bin/env bash
# Create (or reuse) a venv and install the project with the given extras (default: dev).
#   bash tools/setup_venv.sh [EXTRAS]            .venv, every package at its version in constraints.txt
#   bash tools/setup_venv.sh [EXTRAS] --latest   .venv-latest, the newest release of every package but torch
# torch is installed first, at the version constraints.txt pins (PyPI's Linux wheel is the CUDA build; pip
# prefers a CPU wheel of that release where the machine offers one, e.g. through find-links); set TORCH_SPEC
# (e.g. "torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu") to choose another build. The
# installed torch then wins over constraints.txt for itself and for what it pins (CUDA builds pin triton).
set -euo pipefail
cd "$(dirname "$0")/.."
EXTRAS="${1:-dev}"
LATEST=0
if [ "${2:-}" = "--latest" ]; then LATEST=1; fi
VENV=.venv
if [ "$LATEST" = 1 ]; then VENV=.venv-latest; fi
PY="${PYTHON:-python3}"
TORCH_PIN="$(grep -E '^torch==' constraints.txt)"

if [ ! -x "$VENV/bin/python" ]; then
    "$PY" -m venv "$VENV"
    "$VENV/bin/python" -m pip install -q --upgrade pip
fi
installed_torch="$("$VENV/bin/python" -c "from importlib.metadata import version; print(version('torch').split('+')[0])" \
    2>/dev/null || true)"
if [ -z "$installed_torch" ] || { [ -z "${TORCH_SPEC:-}" ] && [ "torch==$installed_torch" != "$TORCH_PIN" ]; }; then
    "$VENV/bin/python" -m pip install -q ${TORCH_SPEC:-$TORCH_PIN}
fi

# The constraints pip gets: constraints.txt (or nothing but torch, with --latest) less torch and the
# packages the installed torch pins, which keeps the torch that is there.
effective_constraints() {
    "$VENV/bin/python" - "$LATEST" <<'PY'
import re, sys
from importlib import metadata

def name_of(requirement):  # canonical project name (packaging may not be installed yet)
    return re.sub(r"[-_.]+", "-", re.match(r"\s*([A-Za-z0-9._-]*)", requirement).group(1)).lower()

latest = sys.argv[1] == "1"
torch_pins = {name_of(r) for r in metadata.requires("torch") or [] if "==" in r.split(";")[0]}
print(f"torch=={metadata.version('torch')}")
if not latest:
    for line in open("constraints.txt"):
        line = line.strip()
        if line and not line.startswith("#") and name_of(line) not in torch_pins | {"torch"}:
            print(line)
PY
}
constraints_file="$VENV/.constraints.txt"
effective_constraints > "$constraints_file"

if [ "$LATEST" = 1 ]; then
    # Every run: the point is to see what users installing today get.
    "$VENV/bin/python" -m pip install -q -U --upgrade-strategy eager -e ".[$EXTRAS]" -c "$constraints_file"
    exit 0
fi
# Reinstall only when the dependency list, the pinned versions or the torch build changed.
stamp="$VENV/.installed-$EXTRAS-$(cat pyproject.toml "$constraints_file" | sha1sum | cut -c1-12)"
if [ ! -f "$stamp" ]; then
    "$VENV/bin/python" -m pip install -q -e ".[$EXTRAS]" -c "$constraints_file"
    touch "$stamp"
fi
