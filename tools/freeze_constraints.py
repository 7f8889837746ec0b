"""Write constraints.txt: the exact versions, in this venv, of everything ``xlstm-pretrain[dev]`` needs.

    .venv/bin/python tools/freeze_constraints.py            # after the test suite passed in .venv

Unlike ``pip freeze`` it keeps only the project's dependency closure (not tools that happen to be
installed) and leaves out the project itself. torch is written without its local build tag (``+cpu``):
``torch==2.13.0`` accepts every build of that release, and tools/setup_venv.sh installs torch first from
this line.
"""

import sys
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

PROJECT = "xlstm-pretrain"
HEADER = """\
# Versions known to pass the test suite (bash tools/run_tests.sh), installed by tools/setup_venv.sh with
# pip's -c. Regenerate from a venv that passes: .venv/bin/python tools/freeze_constraints.py
# The newest releases are tried separately by bash tools/run_tests.sh --latest (in .venv-latest).
"""


def wanted_requirements(dist: metadata.Distribution, extras: set[str]) -> list[Requirement]:
    """The requirements of ``dist`` that apply here with ``extras`` selected."""
    out = []
    for line in dist.requires or []:
        req = Requirement(line)
        if req.marker is None or any(req.marker.evaluate({"extra": e}) for e in extras | {""}):
            out.append(req)
    return out


def dependency_closure(root: str, extras: set[str]) -> dict[str, tuple[str, str]]:
    """{canonical name: (name as the distribution spells it, as pip freeze writes it; installed version)} of
    every installed distribution ``root[extras]`` pulls in."""
    found: dict[str, tuple[str, str]] = {}
    todo = [(root, extras)]
    seen = set()
    while todo:
        name, wanted = todo.pop()
        key = (canonicalize_name(name), frozenset(wanted))
        if key in seen:
            continue
        seen.add(key)
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue  # an optional dependency for another platform or Python version
        found[canonicalize_name(name)] = (dist.metadata["Name"], dist.version)
        todo.extend((req.name, set(req.extras)) for req in wanted_requirements(dist, wanted))
    found.pop(canonicalize_name(root))
    return found


def constraint_lines(closure: dict[str, tuple[str, str]]) -> list[str]:
    return [f"{name}=={version.split('+')[0] if key == 'torch' else version}"
            for key, (name, version) in sorted(closure.items())]


def main() -> None:
    out = Path(__file__).resolve().parents[1] / "constraints.txt"
    lines = constraint_lines(dependency_closure(PROJECT, {"dev"}))
    out.write_text(HEADER + "\n".join(lines) + "\n")
    print(f"wrote {len(lines)} pins to {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
