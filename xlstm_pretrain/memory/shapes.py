"""Per-rank sizes of one micro-batch under a layout: the symbols the byte formulas use."""

from __future__ import annotations

import math
from dataclasses import dataclass

from xlstm_pretrain.flops import chunk_size_used


@dataclass(frozen=True)
class Shapes:
    B: int  # micro-batch (sequences per rank)
    S: int  # tokens per sequence on this rank (seq_len / CP)
    S_sp: int  # tokens per sequence between TP regions (S / TP under sequence parallelism, else S)
    tp: int
    L: int  # mLSTM chunk length actually used
    NC: int  # chunks per sequence
    act: int  # bytes of a matmul output / linear input (fp32 4, bf16 autocast or bf16 params 2)
    resid: int  # bytes of the residual stream (fp32 unless the parameters are bf16)
    autocast: bool  # bf16 autocast over fp32 parameters: the bf16 weight copies are saved too
    reset: bool  # document resets (packed documents): the conv / cells take a reset mask

    @property
    def T(self) -> int:  # tokens padded to whole chunks
        return self.NC * self.L


def shapes_for(model_cfg, seq_len: int, micro_batch: int, tp: int = 1, cp: int = 1, sp: bool = False,
               precision: str = "bf16", reset: bool = True) -> Shapes:
    S = seq_len // cp
    L = chunk_size_used(model_cfg.chunk_size, S)
    act = 4 if precision == "fp32" else 2
    resid = 2 if precision == "bf16-params" else 4
    return Shapes(B=micro_batch, S=S, S_sp=S // tp if sp else S, tp=tp, L=L, NC=math.ceil(S / L), act=act,
                  resid=resid, autocast=precision == "bf16", reset=reset)
