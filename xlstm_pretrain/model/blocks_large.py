"""The xLSTM-7B block (family "large").

    x = x + mLSTMLayer(RMSNorm(x));  x = x + SwiGLU(RMSNorm(x))
    mLSTMLayer: q, k, v, o~ = Linear(x);  i~, f~ = softcap_15(Linear(x) + b)
                h = MultiHeadLayerNorm(mLSTM(q, k, v, i~, f~));  y = out_proj(sigmoid(o~) * h)

Parameter names follow ``xlstm.xlstm_large`` / ``transformers`` so checkpoints map one to one.
Block state: {"cell": (C, n, m)}.
"""

from __future__ import annotations

import torch
from torch import nn

from .cells import MLSTMCell
from .components import MultiHeadLayerNorm, RMSNorm, SwiGLU, small_init_, soft_cap, wang_init_
from .config import ModelConfig


class LargeMLSTMLayer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        d, NH = cfg.embedding_dim, cfg.num_heads
        self.num_heads = NH
        self.q = nn.Linear(d, cfg.qk_dim, bias=False)
        self.k = nn.Linear(d, cfg.qk_dim, bias=False)
        self.v = nn.Linear(d, cfg.v_dim, bias=False)
        self.ogate_preact = nn.Linear(d, cfg.v_dim, bias=False)
        self.igate_preact = nn.Linear(d, NH, bias=True)
        self.fgate_preact = nn.Linear(d, NH, bias=True)
        self.cell = MLSTMCell(cfg)
        self.multihead_norm = MultiHeadLayerNorm(NH, cfg.v_head_dim, eps=cfg.norm_eps, residual_weight=False)
        self.out_proj = nn.Linear(cfg.v_dim, d, bias=False)

    def reset_parameters(self):
        cfg, d = self.cfg, self.cfg.embedding_dim
        for lin in (self.q, self.k, self.v):
            small_init_(lin.weight, d)
        nn.init.zeros_(self.ogate_preact.weight)
        nn.init.zeros_(self.igate_preact.weight)
        nn.init.constant_(self.igate_preact.bias, cfg.igate_bias_init)
        nn.init.zeros_(self.fgate_preact.weight)
        with torch.no_grad():
            self.fgate_preact.bias.copy_(torch.linspace(3.0, 6.0, self.num_heads))
        self.multihead_norm.reset_parameters()
        wang_init_(self.out_proj.weight, d, cfg.num_blocks)

    def forward(self, x, state=None, reset=None, return_state=False):
        B, S, _ = x.shape
        NH, cap = self.num_heads, self.cfg.gate_soft_cap
        q = self.q(x).view(B, S, NH, -1).transpose(1, 2)
        k = self.k(x).view(B, S, NH, -1).transpose(1, 2)
        v = self.v(x).view(B, S, NH, -1).transpose(1, 2)
        i = soft_cap(self.igate_preact(x), cap).transpose(1, 2)
        f = soft_cap(self.fgate_preact(x), cap).transpose(1, 2)
        h, cell_state = self.cell(q, k, v, i, f, (state or {}).get("cell"), reset, return_state)
        h = self.multihead_norm(h.transpose(1, 2))  # (B, S, v_dim)
        y = self.out_proj(torch.sigmoid(self.ogate_preact(x)) * h)
        return y, ({"cell": cell_state} if return_state else None)


class LargeBlock(nn.Module):
    def __init__(self, cfg: ModelConfig, block_idx: int):
        super().__init__()
        self.cfg = cfg
        d = cfg.embedding_dim
        self.norm_mlstm = RMSNorm(d, cfg.norm_eps)
        self.mlstm_layer = LargeMLSTMLayer(cfg)
        self.norm_ffn = RMSNorm(d, cfg.norm_eps)
        self.ffn = SwiGLU(d, cfg.ffn_dim)

    def reset_parameters(self):
        d = self.cfg.embedding_dim
        self.norm_mlstm.reset_parameters()
        self.mlstm_layer.reset_parameters()
        self.norm_ffn.reset_parameters()
        small_init_(self.ffn.proj_up_gate.weight, d)
        small_init_(self.ffn.proj_up.weight, d)
        wang_init_(self.ffn.proj_down.weight, d, self.cfg.num_blocks)

    def forward(self, x, state=None, reset=None, return_state=False):
        y, state = self.mlstm_layer(self.norm_mlstm(x), state, reset, return_state)
        x = x + y
        return x + self.ffn(self.norm_ffn(x)), state
