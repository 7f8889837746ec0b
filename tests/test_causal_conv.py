"""The depthwise causal conv with document resets: exact against running each document on its own,
and it saves for backward no more than the conv without resets (plus the document index)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from xlstm_pretrain.model.components import CausalConv1d, DocumentMaskedConv

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools" / "bench"))
from activation_memory import saved_activation_bytes  # noqa: E402


def _docs_one_by_one(conv, x, state, reset):
    """Independent reference: cut each row at its resets and run every document through the conv from
    the zero state (the first one from the carried state unless the row resets at t = 0)."""
    rows = []
    for b in range(x.shape[0]):
        starts = [0] + [t for t in range(1, x.shape[1]) if reset[b, t]] + [x.shape[1]]
        parts = []
        for j, (s0, s1) in enumerate(zip(starts[:-1], starts[1:])):
            st = state[b : b + 1] if j == 0 and not reset[b, 0] else None
            parts.append(conv(x[b : b + 1, s0:s1], st)[0])
        rows.append(torch.cat(parts, 1))
    return torch.cat(rows, 0)


@pytest.mark.parametrize("K", [2, 4])
def test_conv_with_resets_equals_documents_one_by_one(K):
    torch.manual_seed(0)
    conv = CausalConv1d(8, K).double()
    B, S = 3, 23
    x = torch.randn(B, S, 8, dtype=torch.float64, requires_grad=True)
    state = torch.randn(B, K - 1, 8, dtype=torch.float64, requires_grad=True)
    reset = torch.zeros(B, S, dtype=torch.bool)
    reset[0, [5, 6, 20]] = True  # adjacent documents shorter than the kernel
    reset[1, 0] = True  # drops the carried state
    reset[2, 22] = True  # a document starting at the last token
    y, _ = conv(x, state, reset)
    y_ref = _docs_one_by_one(conv, x, state, reset)
    torch.testing.assert_close(y, y_ref, rtol=0, atol=1e-14)
    w = torch.randn_like(y)
    params = [x, state, conv.weight, conv.bias]
    got = torch.autograd.grad((y * w).sum(), params)
    want = torch.autograd.grad((y_ref * w).sum(), params)
    for name, a, b in zip(["dx", "dstate", "dweight", "dbias"], got, want):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-13, msg=name)


def test_document_masked_conv_gradcheck():
    torch.manual_seed(1)
    K, B, S, C = 3, 2, 9, 3
    xx = torch.randn(B, S + K - 1, C, dtype=torch.float64, requires_grad=True)
    w = torch.randn(C, K, dtype=torch.float64, requires_grad=True)
    reset = torch.zeros(B, S, dtype=torch.bool)
    reset[0, 4] = reset[1, 1] = True
    seg = torch.cat([reset.new_zeros(B, K - 1), reset], 1).long().cumsum(1)
    assert torch.autograd.gradcheck(lambda a, b: DocumentMaskedConv.apply(a, b, seg), (xx, w))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_conv_with_resets_saves_what_the_conv_without_them_saves(dtype):
    conv = CausalConv1d(256, 4).to(dtype)
    x = torch.randn(4, 512, 256, dtype=dtype, requires_grad=True)
    reset = torch.zeros(4, 512, dtype=torch.bool)
    reset[:, [3, 100, 101, 400]] = True
    with_resets = saved_activation_bytes(lambda: conv(x, None, reset))
    without = saved_activation_bytes(lambda: conv(x, None, None))
    # the padded input in both; with resets also the int32 document index, B*(S+K-1)*4 bytes
    assert with_resets <= without + 4 * (512 + 3) * 4 + 1024, (with_resets, without)
