"""ModelConfig: one dataclass for both xLSTM families.

- ``family="paper"``: the NeurIPS 2024 architecture. mLSTM blocks (pre-up-projection) and sLSTM blocks
  (post-up-projection, gated GeLU FFN) stacked as xLSTM[a:b] with sLSTM at ``slstm_at``.
- ``family="large"``: the xLSTM-7B architecture. Every block is RMSNorm -> mLSTM layer -> RMSNorm -> SwiGLU,
  with gate soft-cap and logit soft-cap.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

from xlstm_pretrain.config_loader import ConfigError


def round_up(x: float, multiple: int) -> int:
    return int(math.ceil(x / multiple) * multiple)


@dataclass
class ModelConfig:
    family: Literal["paper", "large"] = "paper"
    vocab_size: int = 50304
    embedding_dim: int = 768
    num_blocks: int = 24
    num_heads: int = 4  # mLSTM heads
    context_length: int = 2048  # training context (no positional encoding; used by data/flops)
    tie_embeddings: bool = False

    # Cell computation: "auto" (Triton/FLA kernels on CUDA, the torch reference elsewhere; see
    # xlstm_kernels.resolve_backend) or a backend registered in xlstm_kernels ("torch" is the reference);
    # mlstm_form picks the torch form (chunkwise for training, parallel = quadratic reference).
    backend: str = "auto"
    mlstm_form: Literal["chunkwise", "parallel", "recurrent"] = "chunkwise"
    chunk_size: int = 64
    eps: float = 1e-6
    # Fused ops around the cells (model/fused_fla.py): "torch" (default, the reference) or "fla":
    # flash-linear-attention's fused LayerNorm / RMSNorm / per-head norm, short causal conv and (TP == 1,
    # no ZeRO-3) linear + cross-entropy loss without materialised logits. Same function and parameters
    # (checkpoints interchangeable); FLA runs on CUDA tensors (and CPU under TRITON_INTERPRET=1), torch elsewhere.
    fused_ops: Literal["torch", "fla"] = "torch"

    # paper family
    slstm_at: list[int] = field(default_factory=list)
    slstm_num_heads: int = 4
    mlstm_proj_factor: float = 2.0
    conv1d_kernel_size: int = 4
    qkv_proj_blocksize: int = 4
    slstm_conv1d_kernel_size: int = 4

    # FFN (sLSTM blocks in "paper", every block in "large"); None = the family's default (1.3 / 2.667)
    ffn_proj_factor: float | None = None
    ffn_round_up_to: int = 64

    # large family
    qk_dim_factor: float = 0.5
    v_dim_factor: float = 1.0
    gate_soft_cap: float = 15.0
    logit_soft_cap: float = 30.0
    norm_eps: float = 1e-6
    igate_bias_init: float = -10.0

    def __post_init__(self):
        if self.ffn_proj_factor is None:
            self.ffn_proj_factor = 1.3 if self.family == "paper" else 2.667

    # ---- derived sizes ------------------------------------------------------------------------
    @property
    def mlstm_inner_dim(self) -> int:
        """paper: D of the pre-up-projected mLSTM block."""
        return round_up(self.mlstm_proj_factor * self.embedding_dim, 64)

    @property
    def qk_dim(self) -> int:
        if self.family == "paper":
            return self.mlstm_inner_dim
        return int(self.embedding_dim * self.qk_dim_factor)

    @property
    def v_dim(self) -> int:
        if self.family == "paper":
            return self.mlstm_inner_dim
        return int(self.embedding_dim * self.v_dim_factor)

    @property
    def qk_head_dim(self) -> int:
        return self.qk_dim // self.num_heads

    @property
    def v_head_dim(self) -> int:
        return self.v_dim // self.num_heads

    @property
    def ffn_dim(self) -> int:
        return round_up(self.ffn_proj_factor * self.embedding_dim, self.ffn_round_up_to)

    @property
    def block_types(self) -> list[str]:
        return ["slstm" if i in set(self.slstm_at) else "mlstm" for i in range(self.num_blocks)]

    # ---- validation ---------------------------------------------------------------------------
    def validate(self) -> None:
        def need(cond: bool, msg: str):
            if not cond:
                raise ConfigError(msg)

        for name in ("vocab_size", "embedding_dim", "num_blocks", "num_heads", "chunk_size", "context_length"):
            need(getattr(self, name) > 0, f"{name} must be positive, got {getattr(self, name)}")
        need(
            self.chunk_size & (self.chunk_size - 1) == 0,
            f"chunk_size must be a power of two, got {self.chunk_size}",
        )
        need(self.eps >= 0, f"eps must be >= 0, got {self.eps}")
        need(self.ffn_proj_factor > 0, f"ffn_proj_factor must be positive, got {self.ffn_proj_factor}")
        need(self.qk_dim % self.num_heads == 0, f"num_heads={self.num_heads} must divide qk_dim={self.qk_dim}")
        need(self.v_dim % self.num_heads == 0, f"num_heads={self.num_heads} must divide v_dim={self.v_dim}")
        if self.family == "paper":
            need(
                self.mlstm_inner_dim % self.qkv_proj_blocksize == 0,
                f"qkv_proj_blocksize={self.qkv_proj_blocksize} must divide the mLSTM inner dim {self.mlstm_inner_dim}",
            )
            need(
                self.embedding_dim % self.slstm_num_heads == 0,
                f"slstm_num_heads={self.slstm_num_heads} must divide embedding_dim={self.embedding_dim}",
            )
            bad = [i for i in self.slstm_at if not 0 <= i < self.num_blocks]
            need(not bad, f"slstm_at indices {bad} out of range for num_blocks={self.num_blocks}")
            need(len(set(self.slstm_at)) == len(self.slstm_at), f"slstm_at has duplicates: {self.slstm_at}")
            need(self.conv1d_kernel_size > 0, "conv1d_kernel_size must be positive for the mLSTM block")
            need(self.slstm_conv1d_kernel_size >= 0, "slstm_conv1d_kernel_size must be >= 0 (0 = no conv)")
        else:
            need(not self.slstm_at, "slstm_at is only valid for family='paper' (the large family is all mLSTM)")
            need(self.gate_soft_cap > 0 and self.logit_soft_cap > 0, "soft caps must be positive")
        need(self.fused_ops in ("torch", "fla"), f"fused_ops must be 'torch' or 'fla', got {self.fused_ops!r}")
        if self.fused_ops == "fla":
            import importlib.util

            need(importlib.util.find_spec("fla") is not None and importlib.util.find_spec("triton") is not None,
                 "fused_ops='fla' needs flash-linear-attention >= 0.6 and triton: pip install "
                 "flash-linear-attention (or: pip install 'xlstm-pretrain[fla]')")
        import xlstm_kernels  # the kernel registry decides which backends exist

        need(
            self.backend == "auto" or self.backend in xlstm_kernels.MLSTM_BACKENDS,
            f"backend must be 'auto' or one of {sorted(xlstm_kernels.MLSTM_BACKENDS)}, got {self.backend!r}"
            + (f" ({xlstm_kernels.MISSING_BACKENDS[self.backend]})" if self.backend in xlstm_kernels.MISSING_BACKENDS
               else ""),
        )
