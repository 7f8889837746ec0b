"""Hugging Face export and import (xlstm_pretrain.export).

Exported folders are loaded by ``transformers`` in a fresh process that cannot import anything of ours
(the repository is off sys.path and the editable-install finder is removed; the script checks that
``import xlstm_pretrain`` fails): logits must equal ours to 1e-5 (fp32) and greedy ``generate`` must
give our generator's tokens. One such process checks every exported model, to save start-up time.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from xlstm_pretrain.export import ExportError, load_plain_checkpoint, read_plain_checkpoint, save_plain_checkpoint
from xlstm_pretrain.export.hf import export_state_dict_to_hf, export_to_hf, import_from_hf, main
from xlstm_pretrain.export.hf_large_native import hf_sizes
from xlstm_pretrain.export.safetensors_io import INDEX_FILE, load_safetensors
from xlstm_pretrain.model import ModelConfig, build_model, generate

REPO = Path(__file__).resolve().parents[1]
VOCAB = 320  # >= the test tokenizer's vocabulary
EOD = "<|endoftext|>"
TEXTS = ["the quick brown fox jumps over the lazy dog", "xLSTM blends exponential gating with matrix memory",
         "recurrent models generate in constant memory per token"] * 20


def make_tokenizer(path: Path) -> Path:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(TEXTS, trainers.BpeTrainer(vocab_size=300, special_tokens=[EOD],
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok.save(str(path))
    return path


def tiny_cfg(family: str, **kw) -> ModelConfig:
    base = dict(vocab_size=VOCAB, num_heads=4, chunk_size=16, context_length=64)
    if family == "paper":
        base.update(embedding_dim=64, num_blocks=3, slstm_at=[1])
    else:  # 128: HF's cache rounds qk_dim up to a multiple of 64, so d * 0.5 must already be one
        base.update(embedding_dim=128, num_blocks=2)
    return ModelConfig(family=family, **{**base, **kw})


def briefly_trained(model, steps: int = 4):
    """A few AdamW steps on random tokens: moves the zero/constant-initialised gates and norms."""
    opt = torch.optim.AdamW(model.parameters(), lr=2e-2)
    for _ in range(steps):
        ids = torch.randint(0, VOCAB, (2, 33))
        loss = F.cross_entropy(model(ids[:, :-1]).flatten(0, 1), ids[:, 1:].flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


# ---- the models, exported once for the whole module -----------------------------------------------

CASES = {  # name: (family, config overrides, trained?, export options)
    "paper_random": ("paper", {}, False, {}),
    "paper_trained_tied": ("paper", {"tie_embeddings": True}, True, {"max_shard_size": "40KB"}),
    "large_random": ("large", {}, False, {}),
    "large_trained": ("large", {}, True, {"max_shard_size": "100KB"}),
}
PROMPT_LEN, NEW_TOKENS = 5, 12


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """Plain checkpoint -> HF folder for every case, plus our logits and greedy tokens on fixed inputs."""
    root = tmp_path_factory.mktemp("export")
    tokenizer = make_tokenizer(root / "tokenizer.json")
    torch.manual_seed(0)
    inputs = {"ids": torch.randint(0, VOCAB, (2, 37)), "prompt": torch.randint(0, VOCAB, (2, PROMPT_LEN))}
    torch.save(inputs, root / "inputs.pt")
    out = {"root": root, "inputs": inputs, "tokenizer": tokenizer, "cases": {}}
    for name, (family, overrides, trained, options) in CASES.items():
        cfg = tiny_cfg(family, **overrides)
        model = build_model(cfg).eval()
        if trained:
            model = briefly_trained(model)
        ckpt, hf_dir = root / f"{name}_ckpt", root / f"{name}_hf"
        save_plain_checkpoint(model, cfg, ckpt, tokenizer_file=tokenizer)
        if name == "large_trained":  # through the command line
            argv = ["--checkpoint", str(ckpt), "--out", str(hf_dir), "--max-shard-size", options["max_shard_size"]]
            assert main(argv) == 0
        else:
            export_to_hf(ckpt, hf_dir, **options)
        with torch.no_grad():
            logits = model(inputs["ids"])
        eos = json.loads((hf_dir / "generation_config.json").read_text())["eos_token_id"]
        tokens = generate(model, inputs["prompt"], NEW_TOKENS, eos_token_id=eos)
        out["cases"][name] = {"family": family, "ckpt": ckpt, "hf": hf_dir, "model": model, "logits": logits,
                              "tokens": tokens}
    return out


CHILD_SCRIPT = r'''
import json, os, sys
repo, root = os.path.realpath(sys.argv[1]), sys.argv[2]
cases = json.loads(sys.argv[3])
# Nothing of ours may be importable: drop the repository (but not a virtualenv inside it) from sys.path,
# and the editable-install finder from sys.meta_path.
def ours(path):
    path = os.path.realpath(path) + os.sep
    return path.startswith(repo + os.sep) and not path.startswith(os.path.realpath(sys.prefix) + os.sep)
sys.path[:] = [p for p in sys.path if p and not ours(p)]
sys.meta_path[:] = [f for f in sys.meta_path if "__editable__" not in (getattr(f, "__module__", "") or "")]
for name in ("xlstm_pretrain", "xlstm_kernels"):
    try:
        __import__(name)
    except ModuleNotFoundError:
        pass
    else:
        raise SystemExit(f"{name} is importable in the checking process: it would not prove anything")
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

inputs = torch.load(os.path.join(root, "inputs.pt"))
results = {}
for name, (folder, remote) in cases.items():
    model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=remote).eval()
    with torch.no_grad():
        logits = model(inputs["ids"]).logits
    tokens = model.generate(inputs["prompt"], max_new_tokens=%d, do_sample=False)
    tok = AutoTokenizer.from_pretrained(folder)
    results[name] = {"logits": logits, "tokens": tokens, "module": type(model).__module__,
                     "class": type(model).__name__, "tokenized": tok("the quick brown fox")["input_ids"],
                     "eos_token": tok.eos_token}
torch.save(results, os.path.join(root, "results.pt"))
''' % NEW_TOKENS


@pytest.fixture(scope="module")
def loaded_by_transformers(exported):
    """Run the checking process once over every exported folder; returns its results per case."""
    root = exported["root"]
    (root / "child.py").write_text(CHILD_SCRIPT)
    cases = {name: (str(c["hf"]), c["family"] == "paper") for name, c in exported["cases"].items()}
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env.update(HF_HOME=str(root / "hf_home"), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    proc = subprocess.run([sys.executable, "-I", str(root / "child.py"), str(REPO), str(root), json.dumps(cases)],
                          cwd=root, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return torch.load(root / "results.pt")


@pytest.mark.parametrize("name", list(CASES))
def test_transformers_logits_and_greedy_tokens_equal_ours(exported, loaded_by_transformers, name):
    ours, theirs = exported["cases"][name], loaded_by_transformers[name]
    if ours["family"] == "large":  # the native class, not remote code
        assert (theirs["module"], theirs["class"]) == ("transformers.models.xlstm.modeling_xlstm", "xLSTMForCausalLM")
    else:
        assert theirs["module"].startswith("transformers_modules.") and theirs["class"] == "xLSTMPaperForCausalLM"
    torch.testing.assert_close(theirs["logits"], ours["logits"], atol=1e-5, rtol=0)
    assert torch.equal(theirs["tokens"], ours["tokens"])


def test_exported_folder_layout_and_tokenizer(exported, loaded_by_transformers):
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(exported["tokenizer"]))
    eod = tok.token_to_id(EOD)
    for name, case in exported["cases"].items():
        hf = case["hf"]
        gen = json.loads((hf / "generation_config.json").read_text())
        assert (gen["bos_token_id"], gen["eos_token_id"]) == (eod, eod)  # taken from the tokenizer's EOD token
        assert loaded_by_transformers[name]["tokenized"] == tok.encode("the quick brown fox").ids
        assert loaded_by_transformers[name]["eos_token"] == EOD
        config = json.loads((hf / "config.json").read_text())
        assert config["eos_token_id"] == eod
        if case["family"] == "paper":
            assert config["model_type"] == "xlstm_paper" and "AutoModelForCausalLM" in config["auto_map"]
            assert (hf / "modeling_xlstm_paper.py").is_file() and (hf / "configuration_xlstm_paper.py").is_file()
        else:
            assert config["model_type"] == "xlstm" and "auto_map" not in config
    for name in ("paper_trained_tied", "large_trained"):  # small shard limits: sharded with an index
        index = json.loads((exported["cases"][name]["hf"] / INDEX_FILE).read_text())
        assert len(set(index["weight_map"].values())) > 1
    # the tied paper model stores the embedding only; the remote model ties lm_head to it
    assert "lm_head.weight" not in load_safetensors(exported["cases"]["paper_trained_tied"]["hf"])


def test_plain_checkpoint_round_trip(exported):
    case = exported["cases"]["paper_trained_tied"]
    model, cfg = load_plain_checkpoint(case["ckpt"])
    assert cfg.model == case["model"].cfg
    assert model.lm_head.weight is model.embedding.weight
    with torch.no_grad():
        torch.testing.assert_close(model(exported["inputs"]["ids"]), case["logits"], atol=0, rtol=0)


def _tensors_identical(a: dict, b: dict) -> None:
    assert sorted(a) == sorted(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, k
        assert torch.equal(a[k].contiguous().view(torch.uint8), b[k].contiguous().view(torch.uint8)), k


def test_paper_export_import_round_trip(exported, tmp_path):
    case = exported["cases"]["paper_trained_tied"]
    import_from_hf(case["hf"], tmp_path / "back")
    back = read_plain_checkpoint(tmp_path / "back")
    assert back.cfg.model == case["model"].cfg
    _tensors_identical(back.state_dict, read_plain_checkpoint(case["ckpt"]).state_dict)
    assert (tmp_path / "back" / "tokenizer.json").read_bytes() == exported["tokenizer"].read_bytes()


# ---- transformers -> ours -> transformers ----------------------------------------------------------


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory):
    """A transformers xLSTM saved by transformers itself, in bf16 and sharded (the 7B checkpoint's layout)."""
    from transformers import xLSTMConfig, xLSTMForCausalLM

    root = tmp_path_factory.mktemp("hf_source")
    torch.manual_seed(1)
    model = xLSTMForCausalLM(xLSTMConfig(vocab_size=VOCAB, hidden_size=128, num_hidden_layers=2, num_heads=4,
                                         chunk_size=16, eos_token_id=0, bos_token_id=0, pad_token_id=None))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    model.to(torch.bfloat16).save_pretrained(root / "hf", max_shard_size="100KB")
    make_tokenizer(root / "hf" / "tokenizer.json")
    return root / "hf", model.eval()


def test_hf_to_ours_to_hf_is_identical(hf_folder, tmp_path):
    src, hf_model = hf_folder
    assert (src / INDEX_FILE).is_file()
    import_from_hf(src, tmp_path / "ours", context_length=128)
    export_to_hf(tmp_path / "ours", tmp_path / "hf", max_shard_size="100KB")
    _tensors_identical(load_safetensors(tmp_path / "hf"), load_safetensors(src))
    for name in ("config.json", "generation_config.json"):
        a, b = (json.loads((d / name).read_text()) for d in (src, tmp_path / "hf"))
        a.pop("transformers_version"), b.pop("transformers_version")
        if name == "generation_config.json":  # transformers adds bookkeeping keys; the token ids must agree
            a = {k: a.get(k) for k in ("bos_token_id", "eos_token_id", "pad_token_id")}
        assert b == a, name
    # the imported checkpoint computes what transformers computes (same bf16 weights, compared in fp32)
    ours, cfg = load_plain_checkpoint(tmp_path / "ours")
    assert cfg.model.context_length == 128 and ours.embedding.weight.dtype == torch.bfloat16
    ids = torch.randint(0, VOCAB, (1, 24))
    with torch.no_grad():
        torch.testing.assert_close(ours.float()(ids), hf_model.float()(ids).logits, atol=1e-5, rtol=0)


# ---- refusing what cannot be expressed --------------------------------------------------------------


def _export(tmp_path, cfg, **kw):
    return export_state_dict_to_hf(cfg, build_model(cfg, device="meta").state_dict(), tmp_path / "out", **kw)


def test_large_tied_embeddings_need_explicit_untie(tmp_path):
    cfg = tiny_cfg("large", tie_embeddings=True)
    model = build_model(cfg)
    with pytest.raises(ExportError, match="never ties"):
        export_state_dict_to_hf(cfg, model.state_dict(), tmp_path / "a")
    export_state_dict_to_hf(cfg, model.state_dict(), tmp_path / "b", untie_embeddings=True)
    sd = load_safetensors(tmp_path / "b")
    assert torch.equal(sd["lm_head.weight"], sd["backbone.embeddings.weight"])
    assert json.loads((tmp_path / "b" / "config.json").read_text())["tie_word_embeddings"] is False


@pytest.mark.parametrize("overrides, match", [
    ({"embedding_dim": 64}, "qk_head_dim \\(cache\\): transformers computes 16, this model uses 8"),
    ({"v_dim_factor": 0.75, "embedding_dim": 192, "num_heads": 2}, "v_head_dim"),
    ({"ffn_proj_factor": 2.00390625}, "ffn_dim: transformers computes 256, this model uses 320"),
])
def test_large_sizes_transformers_would_compute_differently_are_refused(tmp_path, overrides, match):
    cfg = tiny_cfg("large", **overrides)
    with pytest.raises(ExportError, match=match):
        _export(tmp_path, cfg)


def test_hf_size_formulas_match_transformers():
    """Our reproduction of transformers' sizes (used to refuse) agrees with transformers itself."""
    from transformers import xLSTMConfig, xLSTMForCausalLM

    for overrides in ({}, {"embedding_dim": 64}, {"ffn_proj_factor": 2.00390625},
                      {"embedding_dim": 192, "v_dim_factor": 0.75}):
        cfg = tiny_cfg("large", **overrides)
        hf_cfg = xLSTMConfig(vocab_size=VOCAB, hidden_size=cfg.embedding_dim, num_hidden_layers=1, num_heads=4,
                             qk_dim_factor=cfg.qk_dim_factor, v_dim_factor=cfg.v_dim_factor,
                             ffn_proj_factor=cfg.ffn_proj_factor, ffn_round_up_to_multiple_of=cfg.ffn_round_up_to)
        with torch.device("meta"):
            block = xLSTMForCausalLM(hf_cfg).backbone.blocks[0]
        assert hf_sizes(cfg) == {
            "qk_dim (layers)": block.mlstm_layer.qk_dim, "v_dim (layers)": block.mlstm_layer.v_dim,
            "qk_head_dim (cache)": hf_cfg.qk_head_dim, "v_head_dim (cache)": hf_cfg.v_head_dim,
            "ffn_dim": block.ffn.up_proj_dim,
        }


def test_bad_inputs_give_clear_errors(tmp_path, hf_folder):
    cfg = tiny_cfg("paper")
    sd = build_model(cfg, device="meta").state_dict()
    with pytest.raises(ExportError, match="does not match the model config"):
        export_state_dict_to_hf(cfg, {k: v for k, v in sd.items() if "blocks.1" not in k}, tmp_path / "a")
    with pytest.raises(ExportError, match="not a plain checkpoint"):
        export_to_hf(tmp_path, tmp_path / "b")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("")
    with pytest.raises(ExportError, match="not empty"):
        export_state_dict_to_hf(cfg, sd, tmp_path / "full")
    # import: transformers features we do not implement, and unknown model types
    src, _ = hf_folder
    for change, match in (({"use_bias": True}, "use_bias"), ({"norm_reduction_force_float32": False}, "fp32"),
                          ({"model_type": "llama"}, "model_type='llama'")):
        bad = tmp_path / f"bad_{next(iter(change))}"
        bad.mkdir()
        for f in src.iterdir():
            (bad / f.name).write_bytes(f.read_bytes())
        config = json.loads((src / "config.json").read_text())
        (bad / "config.json").write_text(json.dumps({**config, **change}))
        with pytest.raises(ExportError, match=match):
            import_from_hf(bad, tmp_path / f"out_{bad.name}")
    # the command line reports errors without a traceback
    assert main(["--checkpoint", str(tmp_path / "nothing"), "--out", str(tmp_path / "c")]) == 2


def output_cache(output):
    """The cache of a transformers output, whichever field name this transformers version uses."""
    return output["cache"] if "cache" in output.keys() else output["past_key_values"]


def test_paper_remote_model_refuses_padding_and_continues_from_its_cache(exported):
    """In-process checks of the remote code: the cache continues a sequence exactly, passed under any name
    transformers has used for it; a cache of another type or under an unknown name, and padding, are refused."""
    from transformers import AutoModelForCausalLM, DynamicCache

    hf = AutoModelForCausalLM.from_pretrained(exported["cases"]["paper_random"]["hf"], trust_remote_code=True).eval()
    ids = exported["inputs"]["ids"]
    with torch.no_grad():
        full = hf(ids).logits
        for name in ("cache", "past_key_values", "cache_params"):
            first = hf(ids[:, :20], use_cache=True)
            rest = hf(ids[:, 20:], **{name: output_cache(first)}).logits
            assert output_cache(first).get_seq_length() == ids.shape[1]
            torch.testing.assert_close(torch.cat([first.logits, rest], 1), full, atol=1e-5, rtol=0, msg=name)
        cache = output_cache(hf(ids[:, :20], use_cache=True))
        with pytest.raises(TypeError, match="`cache` must be an xLSTMPaperCache .*got DynamicCache"):
            hf(ids, cache=DynamicCache())
        with pytest.raises(ValueError, match="several names"):
            hf(ids, cache=cache, past_key_values=cache)
        with pytest.raises(TypeError, match="unknown argument 'state'"):
            hf(ids, state=cache)
        with pytest.raises(ValueError, match="padded"):
            hf(ids, attention_mask=torch.ones_like(ids).index_fill_(1, torch.tensor([0]), 0))


@pytest.mark.parametrize("name", ["paper_random", "paper_trained_tied"])
def test_paper_remote_model_generates_our_tokens_through_transformers_defaults(exported, name):
    """transformers' own generate with default arguments (it creates the cache and hands it over under its
    current name) and the text-generation pipeline give our generator's greedy tokens."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline

    case = exported["cases"][name]
    hf = AutoModelForCausalLM.from_pretrained(case["hf"], trust_remote_code=True).eval()
    tokens = hf.generate(exported["inputs"]["prompt"], max_new_tokens=NEW_TOKENS, do_sample=False)
    assert torch.equal(tokens, case["tokens"])

    tokenizer = AutoTokenizer.from_pretrained(case["hf"])
    text = "the quick brown fox"
    prompt = torch.tensor([tokenizer(text)["input_ids"]])
    ours = generate(case["model"], prompt, NEW_TOKENS, eos_token_id=tokenizer.eos_token_id)
    generated = pipeline("text-generation", model=hf, tokenizer=tokenizer)(
        text, max_new_tokens=NEW_TOKENS, do_sample=False, return_tensors=True)
    assert generated[0]["generated_token_ids"] == ours[0].tolist()
    # opted out of transformers' DynamicCache by declaration, not by the "xlstm" in the class name
    assert type("PaperLM", (type(hf),), {})._supports_default_dynamic_cache() is False


def test_export_from_a_training_run_dir(exported, tmp_path):
    """A run dir (checkpoints/latest -> step_N/consolidated, written by the trainer at any layout) exports
    exactly like the plain checkpoint inside it."""
    import shutil

    from safetensors.torch import load_file

    case = exported["cases"]["large_random"]
    run = tmp_path / "run"
    step = run / "checkpoints" / "step_00000002"
    shutil.copytree(case["ckpt"], step / "consolidated")
    (run / "checkpoints" / "latest").write_text("step_00000002\n")
    direct, via_run = tmp_path / "direct", tmp_path / "via_run"
    export_to_hf(case["ckpt"], direct)
    export_to_hf(run, via_run)
    a = {k: v for f in sorted(direct.glob("*.safetensors")) for k, v in load_file(str(f)).items()}
    b = {k: v for f in sorted(via_run.glob("*.safetensors")) for k, v in load_file(str(f)).items()}
    _tensors_identical(a, b)
