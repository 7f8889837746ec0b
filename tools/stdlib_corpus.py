"""A small SlimPajama-format corpus from text every Python installation has: the standard library.

    python tools/stdlib_corpus.py --output data/stdlib_corpus --max-mb 4

Documents (one JSON line each, ``{"text", "meta": {"redpajama_set_name"}}``, zstd-compressed like
SlimPajama's chunks):
- ``StdlibCode``: the source of a standard-library module (``.py`` files, tests and site-packages excluded);
- ``StdlibDocs``: the docstrings of that module (module, classes, functions), as prose.
Files are read in sorted order until ``--max-mb`` of text; every ``1/--validation-fraction``-th file
(default: every 20th) goes to ``validation/``. The corpus depends only on the Python version: no network needed.

Layout (as SlimPajama-627B): OUTPUT/train/chunk1/example_train_K.jsonl.zst, OUTPUT/validation/chunk1/...
"""

from __future__ import annotations

import argparse
import ast
import json
import sysconfig
from pathlib import Path

import zstandard

SKIP_DIRS = {"test", "tests", "site-packages", "dist-packages", "__pycache__", "idle_test", "lib2to3"}


def module_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*.py")
                  if not SKIP_DIRS & set(p.relative_to(root).parts[:-1]) and p.stat().st_size < 200_000)


def docstrings(source: str, name: str) -> str:
    """Module, class and function docstrings as readable prose (empty if there are none)."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return ""
    parts = []
    doc = ast.get_docstring(tree)
    if doc:
        parts.append(f"Module {name}.\n\n{doc}")
    for node in ast.walk(tree):
        if isinstance(node, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node)
            if doc:
                kind = "Class" if isinstance(node, ast.ClassDef) else "Function"
                parts.append(f"{kind} {node.name}: {doc}")
    return "\n\n".join(parts)


def build(output: Path, max_mb: float, validation_fraction: float = 0.05, docs_per_file: int = 2000) -> dict:
    root = Path(sysconfig.get_paths()["stdlib"])
    splits = {"train": [], "validation": []}
    total = 0
    every = max(round(1 / validation_fraction), 2) if validation_fraction > 0 else 0
    for k, path in enumerate(module_files(root)):
        rel = str(path.relative_to(root))
        try:
            source = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        name = rel[:-3].replace("/", ".").removesuffix(".__init__")
        split = "validation" if every and k % every == every - 1 else "train"
        for set_name, text in (("StdlibCode", source), ("StdlibDocs", docstrings(source, name))):
            if text.strip():
                splits[split].append({"text": text, "meta": {"redpajama_set_name": set_name, "source": rel}})
                total += len(text.encode())
        if total >= max_mb * 1e6:
            break
    counts = {}
    for split, docs in splits.items():
        folder = output / split / "chunk1"
        folder.mkdir(parents=True, exist_ok=True)
        prefix = "example_train" if split == "train" else "example_holdout"
        for k in range(0, max(len(docs), 1), docs_per_file):
            lines = "".join(json.dumps(d) + "\n" for d in docs[k : k + docs_per_file]).encode()
            (folder / f"{prefix}_{k // docs_per_file}.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(lines))
        counts[split] = len(docs)
    return {"documents": counts, "bytes": total, "python_stdlib": str(root)}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--output", required=True, type=Path)
    ap.add_argument("--max-mb", type=float, default=4.0, help="stop after this many MB of text (default 4)")
    ap.add_argument("--validation-fraction", type=float, default=0.05)
    args = ap.parse_args(argv)
    info = build(args.output, args.max_mb, args.validation_fraction)
    print(f"stdlib corpus: {info['documents']['train']} train / {info['documents']['validation']} validation "
          f"documents, {info['bytes'] / 1e6:.1f} MB of text from {info['python_stdlib']} -> {args.output}")


if __name__ == "__main__":
    main()
