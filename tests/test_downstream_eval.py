"""Downstream evaluation (xlstm_pretrain.downstream, ``python -m xlstm_pretrain.evaluate --tasks``).

Offline: a local lm-eval task (a YAML file + a jsonl written here) on a tiny, briefly trained model.
- state reuse (each context run once, continuations from its state) = scoring context + continuation
  from scratch, for both families, with left truncation, shared contexts and batches of mixed lengths;
- the command line equals the in-process LM on every request, and prints the task table;
- the exported Hugging Face folder through lm-eval's own ``hf`` model (trust_remote_code) gives the
  same log-likelihood on every request and the same accuracies;
- unknown tasks and tasks whose data is missing are ConfigErrors before anything runs;
- the milestone table and the accuracy vs FLOPs plot;
- (slow tier) TP=2 scores and greedy tokens equal TP=1.
Tests that need lm-evaluation-harness skip without it (CI installs it: the ``dev`` extra includes ``eval``).
"""

from __future__ import annotations

import importlib.util
import json
import os
from types import SimpleNamespace

import pytest
import torch
from test_export_hf import make_tokenizer  # a byte-level BPE with <|endoftext|>

from xlstm_pretrain.config import ConfigError
from xlstm_pretrain.downstream.local_task import cloze_docs, write_task
from xlstm_pretrain.downstream.scoring import score_from_scratch, score_requests
from xlstm_pretrain.downstream.table import accuracy_figure, format_milestone_table, read_val_rows
from xlstm_pretrain.model import ModelConfig, build_model, generate

# no hub access: local tasks read their jsonl through the datasets "json" builder
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

HAVE_LM_EVAL = importlib.util.find_spec("lm_eval") is not None
needs_lm_eval = pytest.mark.skipif(not HAVE_LM_EVAL, reason="lm-evaluation-harness is not installed "
                                                            "(pip install -c constraints.txt 'xlstm-pretrain[eval]')")
TASK = "toy_cloze"
EOD = "<|endoftext|>"
TEXTS = ["the quick brown fox jumps over the lazy dog near the river bank today",
         "xLSTM blends exponential gating with matrix memory and a recurrent state",
         "recurrent models generate in constant memory per token and never look back",
         "a small model learns the corpus it is trained on and forgets the rest of it"] * 10


def tiny_cfg(family: str, **kw) -> ModelConfig:
    base = dict(vocab_size=320, num_heads=4, chunk_size=8, context_length=48, backend="torch")
    if family == "paper":
        base.update(embedding_dim=32, num_blocks=3, slstm_at=[1])
    else:
        base.update(embedding_dim=64, num_blocks=2)
    return ModelConfig(family=family, **{**base, **kw})


def perturbed(model, scale: float = 0.05):
    """Random weights away from the initialisation's zero/constant gates, so every path matters."""
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return model.eval()


def random_requests(vocab: int, contexts: int, per_context: int, seed: int = 1):
    """(context, continuation) token lists: ``per_context`` continuations of each context (as a
    multiple-choice task has), contexts and continuations of mixed lengths."""
    g = torch.Generator().manual_seed(seed)

    def tokens(lo, hi):
        return torch.randint(0, vocab, (int(torch.randint(lo, hi, (1,), generator=g)),), generator=g).tolist()

    out = []
    for _ in range(contexts):
        ctx = tokens(1, 30)
        out += [(ctx, tokens(1, 7)) for _ in range(per_context)]
    return out


# ---- state reuse (no lm-eval needed) --------------------------------------------------------------


@pytest.mark.parametrize("family", ["paper", "large"])
@pytest.mark.parametrize("max_length, batch_size", [(None, 4), (20, 3), (64, 1)])
def test_state_reuse_equals_scoring_from_scratch(family, max_length, batch_size):
    model = perturbed(build_model(tiny_cfg(family)).double())
    requests = random_requests(model.cfg.vocab_size, contexts=5, per_context=3)
    requests.append(requests[0])  # a duplicate request
    got = score_requests(model, requests, batch_size=batch_size, max_length=max_length)
    want = [score_from_scratch(model, c, d, max_length) for c, d in requests]
    assert len(got) == len(requests)
    for (lp, greedy), (ref_lp, ref_greedy) in zip(got, want):
        assert abs(lp - ref_lp) <= 1e-9 * max(1.0, abs(ref_lp))
        assert greedy == ref_greedy
    # the scores are not all alike (the comparison means something)
    assert len({round(lp, 6) for lp, _ in got}) > len(requests) // 2


def test_greedy_flag_is_true_for_the_models_own_greedy_continuation():
    model = perturbed(build_model(tiny_cfg("paper")).double())
    prompt = [5, 17, 42, 7]
    greedy = generate(model, torch.tensor([prompt]), 4)[0, len(prompt):].tolist()
    (lp, is_greedy), (_, other) = score_requests(model, [(prompt, greedy), (prompt, greedy[:3] + [(greedy[3] + 1) % 320])])
    assert is_greedy and not other and lp < 0


def test_truncated_requests_keep_their_last_max_length_tokens():
    model = perturbed(build_model(tiny_cfg("large")).double())
    ctx, cont = list(range(10, 40)), [3, 4, 5]
    # with max_length=8 the model sees ctx[-6:] + cont[:-1]: scoring that without truncation is the same
    assert score_requests(model, [(ctx, cont)], max_length=8)[0][0] == pytest.approx(
        score_from_scratch(model, ctx[-6:], cont)[0], abs=1e-12)
    with pytest.raises(ValueError, match="longer than max_length"):
        score_requests(model, [(ctx, list(range(9)))], max_length=8)


# ---- through lm-eval -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A tokenizer, a tiny paper model trained a few steps on the texts, its plain checkpoint (with the
    tokenizer and eod ids), its HF export and a local multiple-choice task."""
    from xlstm_pretrain.export import save_plain_checkpoint
    from xlstm_pretrain.export.hf import export_to_hf

    root = tmp_path_factory.mktemp("downstream")
    tokenizer = make_tokenizer(root / "tokenizer.json")
    torch.manual_seed(0)
    cfg = tiny_cfg("paper", embedding_dim=64)
    model = build_model(cfg)
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tokenizer))
    ids = torch.tensor([t for text in TEXTS[:4] for t in tok.encode(" " + text).ids])
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(12):  # enough to prefer the true continuations
        logits = model(ids[None, :-1])
        loss = torch.nn.functional.cross_entropy(logits[0], ids[1:])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    eod = tok.token_to_id(EOD)
    save_plain_checkpoint(model, cfg, root / "ckpt", tokenizer_file=tokenizer,
                          token_ids={"bos_token_id": eod, "eos_token_id": eod})
    export_to_hf(root / "ckpt", root / "hf")
    tasks = write_task(root / "tasks", cloze_docs(TEXTS[:4], 6, num_choices=3, context_words=4,
                                                  continuation_words=2), TASK)
    return SimpleNamespace(root=root, ckpt=root / "ckpt", hf=root / "hf", tasks=tasks, model=model, tok=tok)


def request_scores(results) -> list[list[float]]:
    """Per document, the log-likelihood of every choice (lm-eval's logged samples, in document order)."""
    samples = sorted(results["samples"][TASK], key=lambda s: s["doc_id"])
    return [[resp[0] for resp in s["filtered_resps"]] for s in samples]


@pytest.fixture(scope="module")
def ours(setup):
    """The command line's result for the local task (fp64, every request logged)."""
    from xlstm_pretrain.evaluate import main

    out = setup.root / "ours.json"
    argv = ["--checkpoint", str(setup.ckpt), "--tasks", TASK, "--include-path", str(setup.tasks),
            "--dtype", "float64", "--batch-size", "3", "--output", str(out), "--log-samples"]
    assert main(argv) == 0
    return json.loads(out.read_text())


@needs_lm_eval
def test_cli_prints_the_task_table_and_scores_every_request_like_scratch(setup, ours, capsys):
    from xlstm_pretrain.downstream.lm_eval_adapter import XLSTMEvalLM

    assert set(ours["tasks"]) == {TASK} and {"acc", "acc_norm"} <= set(ours["tasks"][TASK])
    model = setup.model.double()
    lm = XLSTMEvalLM(model, setup.tok)
    scores = request_scores(ours)
    assert len(scores) == 6 and all(len(s) == 3 for s in scores)
    docs = sorted(ours["samples"][TASK], key=lambda s: s["doc_id"])
    for doc, per_choice in zip(docs, scores):
        assert [c for _, c in doc["arguments"]] == [" " + choice for choice in doc["doc"]["choices"]]
        for (context, continuation), got in zip(doc["arguments"], per_choice):
            ctx, cont = lm._encode_pair(context, continuation)
            assert got == pytest.approx(score_from_scratch(model, ctx, cont)[0], abs=1e-9)
    # accuracy = how often the labelled choice scores highest
    acc = sum(max(range(3), key=s.__getitem__) == d["doc"]["label"] for d, s in zip(docs, scores)) / len(docs)
    assert ours["tasks"][TASK]["acc"] == pytest.approx(acc)


@needs_lm_eval
def test_exported_hf_folder_through_lm_eval_hf_gives_the_same_numbers(setup, ours):
    """What users run: ``lm_eval --model hf --model_args pretrained=DIR,trust_remote_code=True``
    (the same registry entry and argument string, in-process)."""
    from lm_eval.api.registry import get_model

    from xlstm_pretrain.downstream.tasks import run_tasks, summarize

    hf = get_model("hf").create_from_arg_string(f"pretrained={setup.hf},trust_remote_code=True,dtype=float64",
                                                {"batch_size": 4, "device": "cpu"})
    results = run_tasks(hf, [TASK], include_path=setup.tasks, log_samples=True)
    # dtype=float64: the remote code then computes cells, norms and logits in fp64, as ours does
    for want, got in zip(request_scores(ours), request_scores(results)):
        assert got == pytest.approx(want, rel=0, abs=1e-9)
    assert summarize(results)[TASK] == pytest.approx(ours["tasks"][TASK])


@needs_lm_eval
def test_exported_large_family_folder_through_lm_eval_hf_gives_the_same_numbers(setup, tmp_path):
    """The large family exports to transformers' own xLSTMForCausalLM (no remote code)."""
    from lm_eval.api.registry import get_model

    from xlstm_pretrain.downstream.lm_eval_adapter import XLSTMEvalLM
    from xlstm_pretrain.downstream.tasks import run_tasks, summarize
    from xlstm_pretrain.export import save_plain_checkpoint
    from xlstm_pretrain.export.hf import export_to_hf

    cfg = tiny_cfg("large", embedding_dim=128)  # transformers' cache wants qk head dims that are multiples of 64
    eod = setup.tok.token_to_id(EOD)
    save_plain_checkpoint(perturbed(build_model(cfg)), cfg, tmp_path / "ckpt", tokenizer_file=setup.root / "tokenizer.json",
                          token_ids={"bos_token_id": eod, "eos_token_id": eod})
    export_to_hf(tmp_path / "ckpt", tmp_path / "hf")
    ours = run_tasks(XLSTMEvalLM.from_checkpoint(tmp_path / "ckpt", dtype="float64"), [TASK],
                     include_path=setup.tasks, log_samples=True)
    hf = get_model("hf").create_from_arg_string(f"pretrained={tmp_path / 'hf'}", {"batch_size": 4, "device": "cpu"})
    theirs = run_tasks(hf, [TASK], include_path=setup.tasks, log_samples=True)
    for want, got in zip(request_scores(ours), request_scores(theirs)):  # transformers computes in fp32
        assert got == pytest.approx(want, rel=1e-6, abs=1e-6)
    assert summarize(theirs)[TASK] == pytest.approx(summarize(ours)[TASK])


@needs_lm_eval
def test_loglikelihood_rolling_and_generate_until(setup):
    from xlstm_pretrain.downstream.lm_eval_adapter import XLSTMEvalLM

    model = setup.model.double()
    L = 32
    lm = XLSTMEvalLM(model, setup.tok, max_length=L, max_gen_toks=6)
    text = " " + TEXTS[0]
    ids = setup.tok.encode(text).ids
    assert L < len(ids) <= 2 * L  # two rolling windows
    (rolling,) = lm.loglikelihood_rolling([SimpleNamespace(args=(text,))])
    # lm-eval's windows: the first L tokens after the prefix token, then the rest with the L tokens before
    # it as context (the left part of that window is context only, not scored again)
    first = score_from_scratch(model, [lm.prefix_token_id], ids[:L])[0]
    rest = score_from_scratch(model, ids[len(ids) - L - 1:L], ids[L:])[0]
    assert rolling == pytest.approx(first + rest, abs=1e-9)
    full = torch.tensor([[lm.prefix_token_id] + ids])  # one pass over everything: a different number
    with torch.no_grad():
        logp = torch.log_softmax(model(full[:, :-1])[0], -1).gather(-1, full[0, 1:, None]).sum().item()
    assert abs(rolling - logp) > 1e-6

    prompt = "the quick brown"
    (text_out, stopped) = lm.generate_until([SimpleNamespace(args=(prompt, {"until": ["zzz"]})),
                                             SimpleNamespace(args=(prompt, {"until": [" "]}))])
    tokens = generate(model, torch.tensor([setup.tok.encode(prompt).ids]), 6, eos_token_id=lm.eot_token_id)
    want = setup.tok.decode(tokens[0, len(setup.tok.encode(prompt).ids):].tolist(), skip_special_tokens=True)
    assert text_out == want.split("zzz")[0]
    assert stopped == want.split(" ")[0]


@needs_lm_eval
def test_unknown_or_broken_tasks_are_config_errors_before_anything_runs(setup, tmp_path):
    from xlstm_pretrain.downstream.tasks import check_tasks
    from xlstm_pretrain.evaluate import main

    with pytest.raises(ConfigError, match=r"unknown lm-eval task\(s\) \['no_such_task'\]"):
        check_tasks([TASK, "no_such_task"], setup.tasks, manager=_local_manager(setup.tasks))
    broken = tmp_path / "broken"
    write_task(broken, [{"context": "a", "choices": [" b", " c"], "label": 0}], "broken_task")
    (broken / "broken_task.jsonl").unlink()  # the data file is gone
    with pytest.raises(ConfigError, match="lm-eval task 'broken_task' does not load"):
        check_tasks(["broken_task"], broken)
    with pytest.raises(ConfigError, match="does not exist"):
        check_tasks([TASK], tmp_path / "nowhere")
    assert main(["--checkpoint", str(setup.ckpt), "--tasks", "broken_task", "--include-path", str(broken)]) == 2


def _local_manager(path):
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=str(path), include_defaults=False)  # lm-eval's own index takes ~30 s


# ---- milestone table and plot ------------------------------------------------------------------------


def test_milestone_table_and_accuracy_plot(tmp_path):
    rows = [{"kind": "train", "step": 1, "tokens": 100, "flops": 1e9, "loss": 5.0},
            {"kind": "val", "step": 2, "tokens": 200, "flops": 2e9, "val_loss": 4.5,
             "downstream/piqa/acc": 0.55, "downstream/piqa/acc_norm": 0.56, "downstream/hellaswag/acc": 0.3},
            {"kind": "val", "step": 4, "tokens": 400, "flops": 4e9, "val_loss": 4.0,
             "downstream/piqa/acc": 0.6, "downstream/piqa/acc_norm": 0.61, "downstream/hellaswag/acc": 0.32},
            {"kind": "val", "step": 5, "tokens": 500, "flops": 5e9, "val_loss": 3.9, "reason": "end"}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    val = read_val_rows(tmp_path)
    table = format_milestone_table(val, "acc").splitlines()
    assert table[0].split() == ["step", "tokens", "FLOPs", "val_loss", "piqa/acc", "hellaswag/acc"]
    assert table[1].split() == ["2", "200", "2.000e+09", "4.5000", "0.5500", "0.3000"]
    assert table[3].split() == ["5", "500", "5.000e+09", "3.9000", "-", "-"]  # a loss-only evaluation
    fig = accuracy_figure({"run": val}, "acc")
    lines = {line.get_label(): line.get_xydata().tolist() for line in fig.axes[0].get_lines()}
    assert lines == {"piqa/acc": [[2e9, 0.55], [4e9, 0.6]], "hellaswag/acc": [[2e9, 0.3], [4e9, 0.32]]}
    fig.savefig(tmp_path / "acc.png")
    assert (tmp_path / "acc.png").stat().st_size > 1000


# ---- tensor parallelism -----------------------------------------------------------------------------


def _tp_worker(ckpt: str, requests, prompt):
    from xlstm_pretrain.downstream.checkpoint import load_for_eval
    from xlstm_pretrain.downstream.scoring import FullLogits

    loaded = load_for_eval(ckpt, ["parallel.tensor_parallel=2"], dtype="float64")
    assert loaded.parallel_state.tp == 2
    scores = score_requests(loaded.model, requests, batch_size=3)
    tokens = generate(FullLogits(loaded.model), torch.tensor([prompt]), 8)
    return scores, tokens


@pytest.mark.slow  # ~40 s on 2 cores: two spawned ranks import torch and the model again
def test_tensor_parallel_scores_and_generation_equal_one_process(setup):
    """A checkpoint evaluated at TP=2 (2 gloo ranks, vocab-sharded logits gathered) gives the TP=1 scores
    and greedy tokens: the state-reuse path (padded, reset, sharded states) under TP."""
    from dist_utils import run_distributed

    model = setup.model.double()
    requests = random_requests(model.cfg.vocab_size, contexts=4, per_context=3, seed=5)
    prompt = [5, 17, 42, 7]
    want = score_requests(model, requests, batch_size=3)
    want_tokens = generate(model, torch.tensor([prompt]), 8)
    for scores, tokens in run_distributed(_tp_worker, 2, str(setup.ckpt), requests, prompt):
        assert [g for _, g in scores] == [g for _, g in want]
        assert [lp for lp, _ in scores] == pytest.approx([lp for lp, _ in want], abs=1e-9)
        assert torch.equal(tokens, want_tokens)


# ---- eval.tasks in training ---------------------------------------------------------------------------


@needs_lm_eval
def test_eval_tasks_config_is_checked_before_training_and_runs_on_the_flop_grid(setup, tmp_path):
    from xlstm_pretrain.config import Config
    from xlstm_pretrain.downstream.in_training import DownstreamEvaluator

    def cfg(**eval_keys):
        c = Config()
        c.train.tokenizer = str(setup.root / "tokenizer.json")
        c.data.validation = [{"path": "tokens", "split": "val"}]  # (not opened here)
        for k, v in eval_keys.items():
            setattr(c.eval, k, v)
        return c

    assert DownstreamEvaluator.from_config(cfg()) is None  # no tasks: nothing is imported or loaded
    broken = tmp_path / "broken"  # (an unknown name would make lm-eval index its own tasks: ~30 s)
    write_task(broken, [{"context": "a", "choices": ["b", "c"], "label": 0}], "broken_task")
    (broken / "broken_task.jsonl").unlink()
    with pytest.raises(ConfigError, match="lm-eval task 'broken_task' does not load"):
        DownstreamEvaluator.from_config(cfg(tasks=["broken_task"], task_paths=[str(broken)]))
    no_tokenizer = cfg(tasks=[TASK], task_paths=[str(setup.tasks)])
    no_tokenizer.train.tokenizer = None
    with pytest.raises(ConfigError, match="eval.tasks needs train.tokenizer"):
        DownstreamEvaluator.from_config(no_tokenizer)
    no_validation = cfg(tasks=[TASK], task_paths=[str(setup.tasks)])
    no_validation.data.validation = []
    with pytest.raises(ConfigError, match="eval.tasks run together with the validation"):
        DownstreamEvaluator.from_config(no_validation)
    with pytest.raises(ConfigError, match="tasks_every must be >= 1"):
        cfg(tasks_every=0).eval.validate()
    for layout in ("context_parallel", "sequence_parallel"):  # scoring runs whole contexts on every rank
        sharded = cfg(tasks=[TASK], task_paths=[str(setup.tasks)])
        setattr(sharded.parallel, layout, 2 if layout == "context_parallel" else True)
        with pytest.raises(ConfigError, match="eval.tasks needs parallel.context_parallel=1"):
            DownstreamEvaluator.from_config(sharded)
    downstream = DownstreamEvaluator.from_config(cfg(tasks=[TASK], task_paths=[str(setup.tasks)],
                                                     flop_milestones_per_decade=4, tasks_every=2))
    # milestones 10^(k/4): tasks at even k (1e10, 1e10.5, ...), and always at the end; never at intervals
    assert [downstream.due("milestone", 10 ** (k / 4)) for k in (40, 41, 42, 43)] == [True, False, True, False]
    assert downstream.due("end", None) and not downstream.due("interval", None)
    # the last step can cross an off-grid milestone: the end still runs the tasks
    assert downstream.due("milestone", 10 ** (41 / 4), at_end=True) and downstream.due("interval", None, at_end=True)
    # a run's model at the end: the row keys the trainer adds (metrics.jsonl, wandb val/downstream/...)
    model = setup.model.float()
    row = downstream.run(model, torch.device("cpu"), torch.autocast("cpu", enabled=False))
    assert set(row) == {f"downstream/{TASK}/acc", f"downstream/{TASK}/acc_norm", "downstream/seconds"}
    assert model.training is False and downstream.describe(row).startswith(f"downstream: {TASK}/acc ")


@pytest.mark.slow  # the trainer data, a training run and two evaluations (~2 min on 2 busy cores)
@needs_lm_eval
def test_training_logs_task_accuracy_that_the_standalone_evaluation_reproduces(tmp_path_factory, tmp_path):
    """eval.tasks in a real run: the end row of metrics.jsonl carries the task metrics, and
    ``evaluate --tasks`` on the saved checkpoint gives the same numbers; a misspelt task stops the run
    before anything is written."""
    from train_utils import metrics, output, prepare_data, python_module, tiny_overrides

    from xlstm_pretrain.downstream.local_task import read_texts
    from xlstm_pretrain.evaluate import evaluate_tasks

    data = prepare_data(tmp_path_factory.getbasetemp() / "train_data")  # shared with the trainer tests
    corpus = tmp_path_factory.getbasetemp() / "train_data" / "corpus" / "validation"
    tasks = write_task(tmp_path / "tasks", cloze_docs(read_texts(corpus), 12, context_words=12,
                                                      continuation_words=2), "stdlib_cloze")
    run = tmp_path / "run"
    # model.context_length is lm-eval's max_length (left truncation, as its hf model does on the export)
    keys = {"eval.tasks": "[stdlib_cloze]", "eval.task_paths": f"[{tasks}]", "train.steps": 4,
            "model.context_length": 256}
    proc = python_module("xlstm_pretrain.train", tiny_overrides(data, run, **keys), timeout=300)
    assert proc.returncode == 0, output(proc)
    end = [r for r in metrics(run, "val") if r["reason"] == "end"][0]
    assert "downstream: stdlib_cloze/acc " in proc.stdout
    standalone = evaluate_tasks(run, ["stdlib_cloze"], include_path=tasks)["tasks"]["stdlib_cloze"]
    assert {m: end[f"downstream/stdlib_cloze/{m}"] for m in ("acc", "acc_norm")} == pytest.approx(standalone)

    bad = tmp_path / "bad"
    # (a name not in task_paths makes lm-eval index its own ~15,000 tasks first: half a minute or more)
    proc = python_module("xlstm_pretrain.train", tiny_overrides(data, bad, **{**keys, "eval.tasks": "[stdlib_clozee]"}),
                         timeout=300)
    assert proc.returncode == 2 and "config error: unknown lm-eval task(s) ['stdlib_clozee']" in proc.stderr, output(proc)
    assert not bad.exists()
