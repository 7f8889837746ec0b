"""The NeurIPS 2024 xLSTM blocks (family "paper").

mLSTM block (pre-up-projection):  x + mLSTMLayer(LayerNorm(x))
    x_m, z = proj_up(x);  x_c = SiLU(conv4(x_m));  q, k = headwise(x_c);  v = headwise(x_m)
    i~, f~ = Linear(concat(q, k, v));  h = MultiHeadLayerNorm(mLSTM(q, k, v, i~, f~))
    y = proj_down((h + skip * x_c) * SiLU(z))
sLSTM block (post-up-projection): x + sLSTMLayer(LayerNorm(x)), then x + GatedFFN(LayerNorm(x))
    x_c = SiLU(conv4(x));  (i~, f~) from x_c, (z~, o~) from x, headwise;  y = MultiHeadLayerNorm(sLSTM(...))

Block state (for generation, TBPTT and context parallelism): {"conv": (B, K-1, C), "cell": cell state}.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .components import CausalConv1d, GatedFeedForward, LayerNorm, LinearHeadwise, MultiHeadLayerNorm, small_init_, wang_init_
from .cells import MLSTMCell, SLSTMCell
from .config import ModelConfig


class PaperMLSTMLayer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        d, D, NH = cfg.embedding_dim, cfg.mlstm_inner_dim, cfg.num_heads
        self.inner_dim, self.num_heads = D, NH
        self.proj_up = nn.Linear(d, 2 * D, bias=False)
        self.conv = CausalConv1d(D, cfg.conv1d_kernel_size)
        n_qkv_blocks = D // cfg.qkv_proj_blocksize
        self.q_proj = LinearHeadwise(D, D, n_qkv_blocks)
        self.k_proj = LinearHeadwise(D, D, n_qkv_blocks)
        self.v_proj = LinearHeadwise(D, D, n_qkv_blocks)
        self.igate = nn.Linear(3 * D, NH, bias=True)
        self.fgate = nn.Linear(3 * D, NH, bias=True)
        self.cell = MLSTMCell(cfg)
        self.outnorm = MultiHeadLayerNorm(NH, D // NH, eps=1e-5, residual_weight=True)
        self.learnable_skip = nn.Parameter(torch.ones(D))
        self.proj_down = nn.Linear(D, d, bias=False)

    def reset_parameters(self):
        d, cfg = self.cfg.embedding_dim, self.cfg
        small_init_(self.proj_up.weight, d)
        for proj in (self.q_proj, self.k_proj, self.v_proj):
            small_init_(proj.weight, d)  # dim = embedding dim, as the official code does
        self.conv.reset_parameters()
        nn.init.zeros_(self.igate.weight)
        nn.init.normal_(self.igate.bias, mean=0.0, std=0.1)
        nn.init.zeros_(self.fgate.weight)
        with torch.no_grad():
            self.fgate.bias.copy_(torch.linspace(3.0, 6.0, self.num_heads))
        self.outnorm.reset_parameters()
        nn.init.ones_(self.learnable_skip)
        wang_init_(self.proj_down.weight, d, cfg.num_blocks)

    def forward(self, x, state=None, reset=None, return_state=False):
        NH, D = self.num_heads, self.inner_dim
        state = state or {}
        x_m, z = self.proj_up(x).split(D, dim=-1)
        B, S, _ = x_m.shape  # (under sequence parallelism proj_up gathers the sequence)
        x_c, conv_state = self.conv(x_m, state.get("conv"), reset)
        x_c = F.silu(x_c)
        q, k, v = self.q_proj(x_c), self.k_proj(x_c), self.v_proj(x_m)
        qkv = torch.cat([q, k, v], dim=-1)
        i, f = self.igate(qkv), self.fgate(qkv)  # (B, S, NH)

        def heads(t):
            return t.view(B, S, NH, -1).transpose(1, 2)

        h, cell_state = self.cell(heads(q), heads(k), heads(v), i.transpose(1, 2), f.transpose(1, 2),
                                  state.get("cell"), reset, return_state)
        h = self.outnorm(h.transpose(1, 2))  # (B, S, D)
        y = self.proj_down((h + self.learnable_skip * x_c) * F.silu(z))
        return y, ({"conv": conv_state, "cell": cell_state} if return_state else None)


class PaperSLSTMLayer(nn.Module):
    def __init__(self, cfg: ModelConfig, block_idx: int):
        super().__init__()
        self.cfg, self.block_idx = cfg, block_idx
        d, NH = cfg.embedding_dim, cfg.slstm_num_heads
        self.num_heads, self.head_dim = NH, d // NH
        self.conv = CausalConv1d(d, cfg.slstm_conv1d_kernel_size) if cfg.slstm_conv1d_kernel_size > 0 else None
        self.igate = LinearHeadwise(d, d, NH)
        self.fgate = LinearHeadwise(d, d, NH)
        self.zgate = LinearHeadwise(d, d, NH)
        self.ogate = LinearHeadwise(d, d, NH)
        # R[g, h]: recurrent weights of gate g (i, f, z, o) in head h; y_{t-1}[h] @ R[g, h]
        self.recurrent_kernel = nn.Parameter(torch.zeros(4, NH, self.head_dim, self.head_dim))
        self.bias = nn.Parameter(torch.zeros(4, NH, self.head_dim))
        self.cell = SLSTMCell(cfg)
        self.group_norm = MultiHeadLayerNorm(NH, self.head_dim, eps=1e-5, residual_weight=True)

    def reset_parameters(self):
        d = self.cfg.embedding_dim
        for g in (self.igate, self.fgate, self.zgate, self.ogate):
            small_init_(g.weight, d)
        if self.conv is not None:
            self.conv.reset_parameters()
        nn.init.zeros_(self.recurrent_kernel)
        # "powerlaw_blockdependent" forget-gate bias: from +5 down to -7 across each head, steeper in later blocks
        DH, nb = self.head_dim, self.cfg.num_blocks
        ratio = self.block_idx / (nb - 1) if nb > 1 else 0.0
        j = torch.arange(DH, dtype=torch.float32, device=self.bias.device)
        f_bias = -(-5.0 + 12.0 * (j / max(DH - 1, 1)) ** (0.3 + 1.3 * ratio))
        with torch.no_grad():
            self.bias.zero_()
            self.bias[1].copy_(f_bias.expand(self.num_heads, DH))
        self.group_norm.reset_parameters()

    def forward(self, x, state=None, reset=None, return_state=False):
        B, S, d = x.shape
        state = state or {}
        conv_state = None
        if self.conv is not None:
            x_c, conv_state = self.conv(x, state.get("conv"), reset)
            x_c = F.silu(x_c)
        else:
            x_c = x
        wx = torch.stack([self.igate(x_c), self.fgate(x_c), self.zgate(x), self.ogate(x)], dim=2)
        wx = wx.view(B, S, 4, self.num_heads, self.head_dim)
        y, cell_state = self.cell(wx, self.recurrent_kernel, self.bias, state.get("cell"), reset, return_state)
        y = self.group_norm(y)  # (B, S, d)
        return y, ({"conv": conv_state, "cell": cell_state} if return_state else None)


class PaperMLSTMBlock(nn.Module):
    def __init__(self, cfg: ModelConfig, block_idx: int):
        super().__init__()
        self.norm = LayerNorm(cfg.embedding_dim)
        self.mlstm = PaperMLSTMLayer(cfg)

    def reset_parameters(self):
        self.norm.reset_parameters()
        self.mlstm.reset_parameters()

    def forward(self, x, state=None, reset=None, return_state=False):
        y, state = self.mlstm(self.norm(x), state, reset, return_state)
        return x + y, state


class PaperSLSTMBlock(nn.Module):
    def __init__(self, cfg: ModelConfig, block_idx: int):
        super().__init__()
        self.cfg = cfg
        self.norm = LayerNorm(cfg.embedding_dim)
        self.slstm = PaperSLSTMLayer(cfg, block_idx)
        self.ffn_norm = LayerNorm(cfg.embedding_dim)
        self.ffn = GatedFeedForward(cfg.embedding_dim, cfg.ffn_dim, act="gelu")

    def reset_parameters(self):
        d = self.cfg.embedding_dim
        self.norm.reset_parameters()
        self.slstm.reset_parameters()
        self.ffn_norm.reset_parameters()
        small_init_(self.ffn.proj_up.weight, d)
        wang_init_(self.ffn.proj_down.weight, d, self.cfg.num_blocks)

    def forward(self, x, state=None, reset=None, return_state=False):
        y, state = self.slstm(self.norm(x), state, reset, return_state)
        x = x + y
        return x + self.ffn(self.ffn_norm(x)), state
