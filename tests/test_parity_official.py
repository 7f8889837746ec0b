"""Parity with code we did not write: the official ``xlstm`` package (paper family, vanilla sLSTM on
CPU) and ``transformers`` ``xLSTMForCausalLM`` (large family), with weights imported by our importers."""

import pytest
import torch

from xlstm_pretrain.model import build_model
from xlstm_pretrain.model.importers import (config_from_hf, config_from_official_paper, from_hf_model,
                                            from_official_paper_model, import_large_state_dict,
                                            import_official_paper_state_dict)

# per tensor: ||g_ours - g_ref|| / ||g_ref||. fp32 rounding gives at most ~5e-5 (the large family's input-gate
# bias, whose gradient is tiny at its -10 init); a mapping error gives O(1).
GRAD_RTOL = 1e-3


def _perturb(model, scale=0.1):
    """Move every parameter off its init, so that zero/constant inits cannot hide a mapping error."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn_like(p))


def _next_token_loss(logits, ids):
    return torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), ids.roll(-1, 1).flatten())


def reference_grads(model):
    """Gradients by state_dict name; a tied reference lists its shared tensor under both names."""
    grads = {name: p.grad for name, p in model.named_parameters(remove_duplicate=False)}
    assert all(g is not None for g in grads.values()), [n for n, g in grads.items() if g is None]
    return grads


def assert_all_grads_match(ours, mapped_ref_grads):
    """Every parameter of ours against its reference gradient. The reference gradients are mapped by the
    importer itself: its renames, reshapes and splits are linear, so they map gradients like weights."""
    ours_params = dict(ours.named_parameters())  # a tied lm_head is listed once, as the embedding
    assert ours_params.keys() == mapped_ref_grads.keys()
    for name, p in ours_params.items():
        ref = mapped_ref_grads[name]
        err = ((p.grad - ref).norm() / ref.norm()).item()
        assert err <= GRAD_RTOL, f"{name}: relative gradient error {err:.2e}"


def official_paper_model(slstm_at=(1,), num_blocks=3, d=64, ctx=64, tie_weights=False, **slstm_kw):
    from xlstm import (FeedForwardConfig, mLSTMBlockConfig, mLSTMLayerConfig, sLSTMBlockConfig, sLSTMLayerConfig,
                       xLSTMLMModel, xLSTMLMModelConfig)

    cfg = xLSTMLMModelConfig(
        mlstm_block=mLSTMBlockConfig(mlstm=mLSTMLayerConfig(conv1d_kernel_size=4, qkv_proj_blocksize=4, num_heads=4)),
        slstm_block=sLSTMBlockConfig(
            slstm=sLSTMLayerConfig(backend="vanilla", num_heads=4, conv1d_kernel_size=4, dtype="float32", **slstm_kw),
            feedforward=FeedForwardConfig(proj_factor=1.3, act_fn="gelu")),
        context_length=ctx, num_blocks=num_blocks, embedding_dim=d, slstm_at=list(slstm_at), vocab_size=97,
        tie_weights=tie_weights)
    model = xLSTMLMModel(cfg)
    model.reset_parameters()
    _perturb(model)
    return model


@pytest.mark.parametrize("tie", [False, True], ids=["untied", "tied"])
@pytest.mark.parametrize("slstm_at", [(), (1,), (0, 2)])
def test_paper_logits_and_all_grads_match_official_xlstm(slstm_at, tie):
    official = official_paper_model(slstm_at, tie_weights=tie)
    ours = from_official_paper_model(official, chunk_size=16)
    assert ours.cfg.tie_embeddings == tie and (ours.lm_head.weight is ours.embedding.weight) == tie
    ids = torch.randint(0, 97, (2, 64))
    ref = official(ids)
    got = ours(ids)
    torch.testing.assert_close(got, ref, atol=2e-5, rtol=1e-4)
    _next_token_loss(ref, ids).backward()
    _next_token_loss(got, ids).backward()
    # tied: the shared tensor's gradient sums its embedding and output uses, on both sides
    assert_all_grads_match(ours, import_official_paper_state_dict(reference_grads(official), ours.cfg))


def test_paper_step_state_matches_official_step():
    """Our prefill + recurrent steps equal the official model's step-by-step generation."""
    official = official_paper_model((1,)).eval()
    ours = from_official_paper_model(official).eval()
    ids = torch.randint(0, 97, (1, 12))
    with torch.no_grad():
        state_o, outs_o = None, []
        for t in range(12):
            logits, state_o = official.step(ids[:, t : t + 1], state=state_o)
            outs_o.append(logits)
        state, outs = None, []
        for t in range(12):
            logits, state = ours(ids[:, t : t + 1], state=state, return_state=True)
            outs.append(logits)
    torch.testing.assert_close(torch.cat(outs, 1), torch.cat(outs_o, 1), atol=2e-5, rtol=1e-4)


def test_paper_tied_import_refuses_a_distinct_head():
    official = official_paper_model((), num_blocks=1)  # untied: its lm_head is its own tensor
    tied_cfg = config_from_official_paper(official.config, tie_embeddings=True)
    with pytest.raises(ValueError, match="differs from its embedding"):
        import_official_paper_state_dict(official.state_dict(), tied_cfg)


def test_importer_rejects_unsupported_official_features():
    official = official_paper_model((1,))
    official.config.slstm_block.feedforward.act_fn = "relu"
    with pytest.raises(ValueError, match="act_fn"):
        config_from_official_paper(official.config)


def hf_model(**kw):
    from transformers import xLSTMConfig, xLSTMForCausalLM

    cfg = dict(vocab_size=97, hidden_size=64, num_hidden_layers=2, num_heads=4, mode="train",
               return_last_states=True, chunk_size=16, use_cache=False)
    cfg.update(kw)
    model = xLSTMForCausalLM(xLSTMConfig(**cfg))
    _perturb(model)
    return model


@pytest.mark.parametrize("tie_word_embeddings", [False, True])
def test_large_logits_and_all_grads_match_transformers(tie_word_embeddings):
    """transformers' xLSTMForCausalLM never ties (it has no tied-weights entry), whatever its config says:
    the import is untied and keeps HF's own lm_head."""
    hf = hf_model(tie_word_embeddings=tie_word_embeddings)
    assert hf.lm_head.weight is not hf.backbone.embeddings.weight  # the fact the importer relies on
    ours = from_hf_model(hf)
    assert not ours.cfg.tie_embeddings
    ids = torch.randint(0, 97, (2, 48))
    ref = hf(ids, use_cache=False).logits
    got = ours(ids)
    torch.testing.assert_close(got, ref, atol=2e-5, rtol=1e-4)
    _next_token_loss(ref, ids).backward()
    _next_token_loss(got, ids).backward()
    assert_all_grads_match(ours, import_large_state_dict(reference_grads(hf), ours.cfg))


def test_large_tied_import_of_an_equal_head_sums_both_gradients():
    """tie_embeddings=True on request, for a source whose lm_head equals its embedding: the logits are
    HF's, and our one tensor's gradient is the sum of HF's embedding and lm_head gradients."""
    hf = hf_model()
    with torch.no_grad():
        hf.lm_head.weight.copy_(hf.backbone.embeddings.weight)
    ours = from_hf_model(hf, tie_embeddings=True)
    assert ours.lm_head.weight is ours.embedding.weight
    ids = torch.randint(0, 97, (2, 48))
    ref = hf(ids, use_cache=False).logits
    got = ours(ids)
    torch.testing.assert_close(got, ref, atol=2e-5, rtol=1e-4)
    _next_token_loss(ref, ids).backward()
    _next_token_loss(got, ids).backward()
    grads = reference_grads(hf)
    grads["backbone.embeddings.weight"] = grads["backbone.embeddings.weight"] + grads.pop("lm_head.weight")
    assert_all_grads_match(ours, import_large_state_dict(grads, ours.cfg))


def test_large_tied_import_refuses_a_distinct_head():
    hf = hf_model()
    with pytest.raises(ValueError, match="differs from its embedding"):
        from_hf_model(hf, tie_embeddings=True)
    sd = hf.state_dict()
    del sd["lm_head.weight"]
    with pytest.raises(KeyError, match="lm_head"):
        import_large_state_dict(sd, config_from_hf(hf.config))


def test_large_logits_and_all_grads_match_xlstm_large():
    """The official ``xlstm_large`` model (native PyTorch kernels), embedding named ``embedding.weight``."""
    from xlstm.xlstm_large.model import xLSTMLarge, xLSTMLargeConfig

    official = xLSTMLarge(xLSTMLargeConfig(
        embedding_dim=64, num_heads=4, num_blocks=2, vocab_size=97, chunk_size=16, mode="train",
        return_last_states=True, chunkwise_kernel="chunkwise--native_autograd",
        sequence_kernel="native_sequence__native", step_kernel="native"))
    _perturb(official)
    ours = from_hf_model(official)
    ids = torch.randint(0, 97, (2, 48))
    ref, _ = official(ids)
    got = ours(ids)
    torch.testing.assert_close(got, ref, atol=2e-5, rtol=1e-4)
    _next_token_loss(ref, ids).backward()
    _next_token_loss(got, ids).backward()
    assert_all_grads_match(ours, import_large_state_dict(reference_grads(official), ours.cfg))


def test_large_state_matches_transformers_cache():
    """Our final (C, n, m) uses the same convention as the HF cache: states are interchangeable."""
    # (hidden 128: HF sizes its cache with qk_dim rounded up to 64, so the qk dim must already be a multiple)
    hf = hf_model(mode="inference", use_cache=True, hidden_size=128).eval()
    ours = from_hf_model(hf).eval()
    ids = torch.randint(0, 97, (1, 20))
    with torch.no_grad():
        out = hf(ids, use_cache=True)
        _, state = ours(ids, return_state=True)
    for layer, block_state in enumerate(state):
        for ours_t, hf_t in zip(block_state["cell"], out.cache_params.rnn_state[layer]):
            torch.testing.assert_close(ours_t, hf_t.reshape(ours_t.shape).float(), atol=1e-5, rtol=1e-4)


def test_large_fused_weights_import():
    hf = hf_model()
    ours_cfg = from_hf_model(hf).cfg
    sd = hf.state_dict()
    fused = {}
    for k, v in sd.items():
        fused[k] = v
    for i in range(ours_cfg.num_blocks):
        p = f"backbone.blocks.{i}."
        fused[p + "mlstm_layer.qkv_opreact.weight"] = torch.cat(
            [fused.pop(p + f"mlstm_layer.{n}.weight") for n in ("q", "k", "v", "ogate_preact")])
        fused[p + "mlstm_layer.ifgate_preact.weight"] = torch.cat(
            [fused.pop(p + "mlstm_layer.igate_preact.weight"), fused.pop(p + "mlstm_layer.fgate_preact.weight")])
        fused[p + "mlstm_layer.ifgate_preact.bias"] = torch.cat(
            [fused.pop(p + "mlstm_layer.igate_preact.bias"), fused.pop(p + "mlstm_layer.fgate_preact.bias")])
        fused[p + "ffn.proj_up_gate_z.weight"] = torch.cat(
            [fused.pop(p + "ffn.proj_up_gate.weight"), fused.pop(p + "ffn.proj_up.weight")])
    model = build_model(ours_cfg)
    model.load_state_dict(import_large_state_dict(fused, ours_cfg))
    ids = torch.randint(0, 97, (1, 16))
    torch.testing.assert_close(model(ids), hf(ids, use_cache=False).logits, atol=2e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="unused"):
        import_large_state_dict({**sd, "backbone.extra.weight": torch.zeros(1)}, ours_cfg)


def test_chunkwise_matches_transformers_native_fallback(monkeypatch):
    """Cell level: our torch chunkwise equals the pure-PyTorch chunkwise kernel embedded in transformers
    (its fallback when `xlstm` is absent; loaded as a separate module copy with that switch off)."""
    import importlib.util
    import sys

    import transformers.models.xlstm.modeling_xlstm as mx
    import transformers.utils

    from xlstm_kernels import mlstm_chunkwise

    monkeypatch.setattr(transformers.utils, "is_xlstm_available", lambda: False)
    spec = importlib.util.spec_from_file_location("transformers.models.xlstm._fallback_copy", mx.__file__)
    fallback = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, fallback)  # its decorators look the module up by name
    spec.loader.exec_module(fallback)

    B, NH, S, DQ, DV = 2, 3, 128, 16, 32
    q, k = torch.randn(2, B, NH, S, DQ, dtype=torch.float64)
    v = torch.randn(B, NH, S, DV, dtype=torch.float64)
    i, f = torch.randn(B, NH, S, dtype=torch.float64), 3 + torch.randn(B, NH, S, dtype=torch.float64)
    C0, n0, m0 = torch.randn(B, NH, DQ, DV).double(), torch.randn(B, NH, DQ).double(), torch.randn(B, NH, 1).double()
    h_ref, st_ref = fallback.mlstm_chunkwise_native_autograd(q, k, v, i, f, C0, n0, m0, return_last_states=True,
                                                             chunk_size=32)
    h, st = mlstm_chunkwise(q, k, v, i, f, initial_state=(C0, n0, m0), return_final_state=True, chunk_size=16)
    torch.testing.assert_close(h, h_ref, atol=1e-10, rtol=1e-10)
    for a, b in zip(st, st_ref):
        torch.testing.assert_close(a, b.reshape(a.shape), atol=1e-10, rtol=1e-10)
