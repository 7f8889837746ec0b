"""Every markdown file the repository mentions is in the repository, and every ``§N`` cited after one
names a section that exists there (docs that live outside the repository cannot be read by its users)."""

import os
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# not the project's text: environments, build outputs, run outputs, VCS and tool metadata
SKIP_DIRS = {".venv", "venv", "__pycache__", "build", "dist", "runs", "outputs", "wandb", "node_modules"}
MAX_TEXT_BYTES = 2_000_000
# a path-like token ending in .md, optionally followed (within a few characters, e.g. after a closing
# backtick) by a section sign and a section number such as 4 or 4.2
# (not after "$" or "}": "$OUT/report.md" is a file a script writes, not a document it points to)
MD_REFERENCE = re.compile(r"(?<![\w./:${}-])([\w./-]*\w\.md)\b(?:[`'\")\]]?,?\s{0,2}§\s?(\d+(?:\.\d+)*))?")
HEADING_NUMBER = re.compile(r"^#+\s+(\d+(?:\.\d+)*)[.\s]", re.MULTILINE)
# markdown files that scripts write at run time under a name given without a variable
WRITTEN_BY_SCRIPTS = {"./gpu_check.md"}  # tools/gpu_check.sh's report when $OUT is not set
THIS_FILE = Path(__file__).resolve().relative_to(ROOT)  # its scanner self-test names missing files on purpose


def is_project_dir(name):
    return not (name.startswith(".") or name in SKIP_DIRS or name.endswith(".egg-info"))


def project_text_files():
    """The repository's text files (hidden folders, environments and outputs left out)."""
    for folder, subdirs, files in os.walk(ROOT):
        subdirs[:] = sorted(d for d in subdirs if is_project_dir(d))  # prune: never walk into .venv
        for name in sorted(files):
            path = Path(folder, name)
            rel = path.relative_to(ROOT)
            if rel == THIS_FILE or path.stat().st_size > MAX_TEXT_BYTES:
                continue
            data = path.read_bytes()
            if b"\0" in data:
                continue
            try:
                yield rel, data.decode("utf-8")
            except UnicodeDecodeError:
                continue


def md_references(text):
    """(referenced .md path, cited section number or None, line number) for each reference in text."""
    for match in MD_REFERENCE.finditer(text):
        line = text.count("\n", 0, match.start()) + 1
        yield match.group(1), match.group(2), line


def resolve(reference, referencing_file):
    """A reference is relative to the repository root or to the referencing file's folder."""
    for base in (ROOT, ROOT / referencing_file.parent):
        candidate = (base / reference).resolve()
        if candidate.is_file() and ROOT in candidate.parents:
            return candidate
    return None


def section_numbers(markdown_file):
    return set(HEADING_NUMBER.findall(markdown_file.read_text(encoding="utf-8")))


def test_reference_scanner_finds_paths_and_sections():
    """The scanner itself: a broken reference it could not see would make the repository test vacuous."""
    text = ("see design.md §3, `xlstm_pretrain/REFERENCE.md` §4.2 and (launch/README.md)\n"
            "https://example.com/page.md, $OUT/report.md, ${DIR}/x.md and notes.md§1.5")
    assert list(md_references(text)) == [("design.md", "3", 1), ("xlstm_pretrain/REFERENCE.md", "4.2", 1),
                                         ("launch/README.md", None, 1), ("notes.md", "1.5", 2)]
    assert resolve("design.md", Path("kernels/mlstm/chunkwise.py")) is None
    assert resolve("README_sweeps.md", Path("tools/sweep.py")) == ROOT / "tools" / "README_sweeps.md"
    assert {"1", "4", "4.2", "6"} <= section_numbers(ROOT / "xlstm_pretrain" / "REFERENCE.md")


def test_markdown_references_resolve_inside_the_repository():
    broken = []
    scanned = 0
    for rel, text in project_text_files():
        scanned += 1
        for reference, section, line in md_references(text):
            if reference in WRITTEN_BY_SCRIPTS:
                continue
            target = resolve(reference, rel)
            if target is None:
                broken.append(f"{rel}:{line}: {reference} is not in the repository")
            elif section is not None and section not in section_numbers(target):
                broken.append(f"{rel}:{line}: {reference} has no section {section}")
    assert scanned > 50  # the walk did reach the sources
    assert not broken, "\n".join(broken)
