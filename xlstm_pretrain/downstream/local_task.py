"""Write a small local lm-eval task (a YAML file + a jsonl) from held-out text: no hub download needed.

The task is a HellaSwag-like cloze: a passage's first words are the context, the choices are how the
passage really goes on and how other passages go on (``acc``: the right continuation is the most
likely; ``acc_norm``: per byte). A model that learnt the corpus beats chance (1 / choices); the numbers
also let two evaluation paths (ours, lm-eval's hf model) be compared on the same requests.

    python -m xlstm_pretrain.downstream.local_task --texts corpus/validation --out runs/x/tasks
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path
from typing import Iterable

TASK_TEMPLATE = """\
task: {name}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data_file}
output_type: multiple_choice
test_split: test
doc_to_text: "{{{{context}}}}"
doc_to_target: "{{{{label}}}}"
doc_to_choice: "{{{{choices}}}}"
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: acc_norm
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
"""


def cloze_docs(texts: Iterable[str], num_docs: int, num_choices: int = 4, context_words: int = 24,
               continuation_words: int = 6, seed: int = 0) -> list[dict]:
    """Documents {context, choices, label}: from ``num_docs`` passages of at least context + continuation
    words; distractors are the same-position continuations of other passages (distinct strings). Choices
    have no leading space: lm-eval puts its target delimiter (" ") between context and choice."""
    rng = random.Random(seed)
    need = context_words + continuation_words
    passages = []
    for text in texts:
        words = text.split()
        for start in range(0, len(words) - need + 1, need):
            passages.append((" ".join(words[start:start + context_words]),
                             " ".join(words[start + context_words:start + need])))
    if len(passages) < max(num_docs, num_choices):
        raise ValueError(f"the texts give {len(passages)} passages of {need} words; need {max(num_docs, num_choices)}")
    rng.shuffle(passages)
    docs = []
    for context, truth in passages[:num_docs]:
        others = [c for _, c in passages if c != truth]
        distractors = list(dict.fromkeys(rng.sample(others, min(len(others), 4 * num_choices))))[:num_choices - 1]
        choices = distractors + [truth]
        rng.shuffle(choices)
        docs.append({"context": context, "choices": choices, "label": choices.index(truth)})
    return docs


def write_task(out_dir: str | Path, docs: list[dict], name: str = "local_cloze") -> Path:
    """``out_dir/<name>.yaml`` + ``out_dir/<name>.jsonl``; returns out_dir (an lm-eval include_path)."""
    out_dir = Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    data = out_dir / f"{name}.jsonl"
    data.write_text("".join(json.dumps(d) + "\n" for d in docs))
    (out_dir / f"{name}.yaml").write_text(TASK_TEMPLATE.format(name=name, data_file=json.dumps(str(data))))
    return out_dir


def read_texts(path: str | Path, max_texts: int = 2000) -> list[str]:
    """Texts of a jsonl / jsonl.zst file or a folder of them (SlimPajama layout: {"text": ...} rows)."""
    path = Path(path)
    files = sorted(p for p in path.rglob("*") if p.name.endswith((".jsonl", ".jsonl.zst"))) if path.is_dir() else [path]
    texts: list[str] = []
    for f in files:
        if f.name.endswith(".zst"):
            import io

            import zstandard

            with open(f, "rb") as raw:
                lines = io.TextIOWrapper(zstandard.ZstdDecompressor().stream_reader(raw), encoding="utf-8").read()
        else:
            lines = f.read_text()
        texts += [json.loads(line)["text"] for line in lines.splitlines() if line.strip()]
        if len(texts) >= max_texts:
            break
    return texts[:max_texts]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m xlstm_pretrain.downstream.local_task", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--texts", required=True, help="a jsonl[.zst] file or folder of them ({'text': ...} rows)")
    ap.add_argument("--out", required=True, help="folder for the task YAML and jsonl (an lm-eval include_path)")
    ap.add_argument("--name", default="local_cloze")
    ap.add_argument("--docs", type=int, default=100)
    ap.add_argument("--choices", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    docs = cloze_docs(read_texts(args.texts), args.docs, args.choices, seed=args.seed)
    out = write_task(args.out, docs, args.name)
    print(f"wrote task {args.name!r} ({len(docs)} documents) to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
