"""constraints.txt (the versions tools/setup_venv.sh installs) stays usable with pyproject.toml."""

import importlib.util
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[1]


def load_freeze_constraints():
    """tools/freeze_constraints.py as a module (tools/ is not a package; putting it on sys.path could shadow)."""
    spec = importlib.util.spec_from_file_location("freeze_constraints", REPO / "tools" / "freeze_constraints.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def pins() -> dict[str, str]:
    out = {}
    for line in (REPO / "constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, version = line.split("==")
            out[canonicalize_name(name)] = version.strip()
    return out


def test_pins_satisfy_the_project_requirements():
    """A pin outside a bound of pyproject.toml would make every install fail (pip: ResolutionImpossible)."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    requirements = project["dependencies"] + [r for extra in project["optional-dependencies"].values() for r in extra]
    pinned = pins()
    for req in map(Requirement, requirements):
        name = canonicalize_name(req.name)
        assert name in pinned, f"{req.name} is a requirement but constraints.txt does not pin it"
        assert req.specifier.contains(pinned[name], prereleases=True), f"{name}=={pinned[name]} violates {req}"


def test_pins_are_exact_and_torch_is_pinned_without_a_build_tag():
    pinned = pins()
    assert "xlstm-pretrain" not in pinned
    assert "+" not in pinned["torch"]  # torch==X accepts the CPU and the CUDA builds of X
    assert all(v and v[0].isdigit() for v in pinned.values())


def test_every_installed_dependency_is_pinned():
    """The dev closure installed here (names only: versions differ in .venv-latest) is all in constraints.txt,
    but for what torch brings: a CUDA build pins its own triton and NVIDIA libraries (tools/setup_venv.sh)."""
    closure = load_freeze_constraints().dependency_closure
    installed = set(closure("xlstm-pretrain", {"dev"})) - set(closure("torch", set()))
    missing = sorted(installed - set(pins()))
    assert not missing, f"not in constraints.txt (rerun tools/freeze_constraints.py): {missing}"
