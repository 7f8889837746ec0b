"""model.fused_ops="fla": FLA's fused norms, short causal conv and linear cross entropy vs the torch code.

Skipped when flash-linear-attention is not installed. On a CPU machine FLA's Triton kernels run under
the Triton interpreter (TRITON_INTERPRET=1, tests/conftest.py) on tiny fp32 shapes; on a GPU machine run
with TRITON_INTERPRET=0. Max errors are printed (run with -s).
"""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import importlib.util  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

if importlib.util.find_spec("fla") is None or importlib.util.find_spec("triton") is None:
    pytest.skip("flash-linear-attention (and triton) not installed: pip install 'xlstm-pretrain[fla]'",
                allow_module_level=True)

from kernel_checks import triton_test_device  # noqa: E402
from xlstm_pretrain.model import ModelConfig, build_model  # noqa: E402
from xlstm_pretrain.model import fused_fla  # noqa: E402
from xlstm_pretrain.model.components import (CausalConv1d, LayerNorm, MultiHeadLayerNorm, RMSNorm,  # noqa: E402
                                             set_fused_ops)
from xlstm_pretrain.parallel import fused_loss_applies, lm_loss, lm_loss_from_hidden  # noqa: E402

INTERPRET = os.environ["TRITON_INTERPRET"] == "1"
DEVICE = triton_test_device()
TOL = dict(atol=1e-5, rtol=1e-5) if INTERPRET else dict(atol=2e-3, rtol=2e-3)  # GPU: TF32 matmuls in the CE


def _maxerr(a, b):
    return (a - b).abs().max().item()


def _compare(module, inputs, extra_outputs=lambda out: [out]):
    """Forward and every gradient (inputs and parameters) of ``module`` with fused_ops torch vs fla."""
    results = []
    for mode in ("torch", "fla"):
        set_fused_ops(module, mode)
        module.zero_grad()
        xs = [None if x is None else (x.detach().clone().requires_grad_(x.is_floating_point()))
              for x in inputs]
        outs = extra_outputs(module(*xs))
        torch.manual_seed(5)
        loss = sum((o * torch.randn(o.shape, device=o.device)).sum() for o in outs)
        loss.backward()
        grads = [x.grad for x in xs if x is not None and x.is_floating_point()]
        grads += [p.grad for p in module.parameters()]
        results.append(([o.detach() for o in outs], grads))
    err = 0.0
    for a, b in zip(results[0][0] + results[0][1], results[1][0] + results[1][1]):
        torch.testing.assert_close(b, a, **TOL)
        err = max(err, _maxerr(a, b))
    return err


def test_use_fla_rule():
    x = torch.zeros(2)
    assert fused_fla.use_fla(x) == INTERPRET
    assert not fused_fla.use_fla(x.double())


@pytest.mark.parametrize("residual_weight", [True, False])
def test_layer_norm(residual_weight):
    m = LayerNorm(24, eps=1e-5, residual_weight=residual_weight).to(DEVICE)
    torch.nn.init.normal_(m.weight, std=0.3)
    err = _compare(m, [torch.randn(2, 5, 24, device=DEVICE) * 3 + 1])
    print(f"LayerNorm(residual_weight={residual_weight}) max err {err:.2e}")


def test_rms_norm():
    m = RMSNorm(24, eps=1e-6).to(DEVICE)
    torch.nn.init.normal_(m.weight, mean=1.0, std=0.3)
    err = _compare(m, [torch.randn(2, 5, 24, device=DEVICE) * 3])
    print(f"RMSNorm max err {err:.2e}")


@pytest.mark.parametrize("residual_weight,eps", [(True, 1e-5), (False, 1e-6)])
def test_multihead_layer_norm(residual_weight, eps):
    m = MultiHeadLayerNorm(4, 8, eps=eps, residual_weight=residual_weight).to(DEVICE)
    torch.nn.init.normal_(m.weight, mean=0.0 if residual_weight else 1.0, std=0.3)
    err = _compare(m, [torch.randn(2, 5, 4, 8, device=DEVICE) * 2 + 0.5])
    print(f"MultiHeadLayerNorm(residual_weight={residual_weight}) max err {err:.2e}")


def _resets(B, S):
    r = torch.zeros(B, S, dtype=torch.bool)
    r[0, [3, 4, 9]] = True  # a one-token document
    r[1, 0] = True  # a row that drops its carried state
    r[1, S - 1] = True  # a reset at the last token
    if B > 2:
        r[2, 1] = True
    return r.to(DEVICE)


@pytest.mark.parametrize("K", [4, 3, 2])
@pytest.mark.parametrize("with_state", [False, True])
@pytest.mark.parametrize("with_reset", [False, True])
def test_causal_conv(K, with_state, with_reset):
    B, S, C = 3, 11, 12
    m = CausalConv1d(C, K).to(DEVICE)
    x = torch.randn(B, S, C, device=DEVICE)
    state = torch.randn(B, K - 1, C, device=DEVICE) if with_state else None
    reset = _resets(B, S) if with_reset else None
    err = _compare(m, [x, state, reset], extra_outputs=lambda out: list(out))
    print(f"CausalConv1d(K={K}, state={with_state}, reset={with_reset}) max err {err:.2e}")


@pytest.mark.parametrize("S", [1, 2])
def test_causal_conv_short_sequences(S):
    """S < K-1: the new state still holds part of the carried one (and its gradient)."""
    m = CausalConv1d(8, 4).to(DEVICE)
    reset = torch.zeros(2, S, dtype=torch.bool, device=DEVICE)
    reset[1, 0] = True
    err = _compare(m, [torch.randn(2, S, 8, device=DEVICE), torch.randn(2, 3, 8, device=DEVICE), reset],
                   extra_outputs=lambda out: list(out))
    print(f"CausalConv1d(S={S}) max err {err:.2e}")


@pytest.mark.parametrize("family", ["paper", "large"])
def test_linear_cross_entropy(family):
    torch.manual_seed(0)
    cfg = ModelConfig(family=family, vocab_size=300, embedding_dim=16, num_blocks=1, num_heads=2,
                      slstm_at=[], fused_ops="fla")
    model = build_model(cfg).to(DEVICE)
    torch.nn.init.normal_(model.lm_head.weight, std=2.0)  # logits beyond the soft cap
    hidden = torch.randn(2, 9, 16, device=DEVICE)
    labels = torch.randint(0, 300, (2, 9), device=DEVICE)
    labels[0, 2] = -100
    res = []
    for fused in (False, True):
        h = hidden.clone().requires_grad_()
        model.zero_grad()
        if fused:
            loss = lm_loss_from_hidden(model, h, labels)
        else:
            logits = model.lm_head(h)
            if family == "large":
                logits = 30.0 * torch.tanh(logits.float() / 30.0)
            loss = lm_loss(model, logits, labels).sum()
        (loss * 0.7).backward()
        res.append([loss.detach(), h.grad, model.lm_head.weight.grad])
    err = 0.0
    for a, b in zip(*res):
        torch.testing.assert_close(b, a, **TOL)
        err = max(err, _maxerr(a, b))
    print(f"linear CE ({family}) max err {err:.2e}")


def _model_loss_and_grads(family, fused_ops):
    torch.manual_seed(1)
    kw = dict(slstm_at=[1]) if family == "paper" else {}
    cfg = ModelConfig(family=family, vocab_size=61, embedding_dim=32, num_blocks=3 if family == "paper" else 2,
                      num_heads=4, chunk_size=8, fused_ops=fused_ops, **kw)
    model = build_model(cfg).to(DEVICE)
    for p in model.parameters():  # move residual-form scales and biases off their init values
        with torch.no_grad():
            p.add_(0.05 * torch.randn_like(p))
    torch.manual_seed(2)
    ids = torch.randint(0, 61, (2, 20), device=DEVICE)
    labels = torch.randint(0, 61, (2, 20), device=DEVICE)
    labels[1, 5] = -100
    bounds = torch.zeros(2, 20, dtype=torch.bool, device=DEVICE)
    bounds[0, [0, 6, 13]] = True
    bounds[1, [0, 9]] = True
    if fused_loss_applies(model):
        loss = lm_loss_from_hidden(model, model(ids, doc_boundaries=bounds, return_hidden=True), labels)
    else:
        loss = lm_loss(model, model(ids, doc_boundaries=bounds), labels).sum()
    loss = loss / 39
    loss.backward()
    return loss.detach(), {n: p.grad for n, p in model.named_parameters()}, model


@pytest.mark.parametrize("family", ["paper", "large"])
def test_model_fla_matches_torch(family):
    loss0, g0, m0 = _model_loss_and_grads(family, "torch")
    loss1, g1, m1 = _model_loss_and_grads(family, "fla")
    assert not fused_loss_applies(m0) and fused_loss_applies(m1) == (family == "paper")  # large: soft cap
    assert m0.state_dict().keys() == m1.state_dict().keys()
    torch.testing.assert_close(loss1, loss0, **TOL)
    err = _maxerr(loss1, loss0)
    for n in g0:
        assert g1[n] is not None, n
        torch.testing.assert_close(g1[n], g0[n], **TOL, msg=lambda s, n=n: f"{n}: {s}")
        err = max(err, _maxerr(g1[n], g0[n]))
    print(f"model ({family}) fla vs torch: loss {loss0.item():.6f}, max err (loss, all grads) {err:.2e}")


def test_fused_ops_validation():
    from xlstm_pretrain.config_loader import ConfigError

    with pytest.raises(ConfigError, match="fused_ops"):
        ModelConfig(fused_ops="triton").validate()
