"""Layout: how one run is spread over GPUs (what the planner varies), read from a loaded Config."""

from __future__ import annotations

from dataclasses import dataclass, replace


@dataclass(frozen=True)
class Layout:
    gpus: int = 8
    tp: int = 1
    cp: int = 1
    sp: bool = False
    zero_stage: int = 1
    micro_batch: int = 1
    activation_checkpointing: bool = False

    @property
    def dp(self) -> int:
        return self.gpus // (self.tp * self.cp)

    def grad_accum(self, global_batch: int) -> int:
        return global_batch // (self.micro_batch * self.dp)

    @classmethod
    def from_config(cls, cfg, gpus: int) -> Layout:
        p, t = cfg.parallel, cfg.train
        return cls(gpus=gpus, tp=p.tensor_parallel, cp=p.context_parallel, sp=p.sequence_parallel,
                   zero_stage=t.zero_stage, micro_batch=t.micro_batch_size,
                   activation_checkpointing=t.activation_checkpointing)

    def with_(self, **kw) -> Layout:
        return replace(self, **kw)

    def describe(self) -> str:
        return (f"TP={self.tp}{' +SP' if self.sp else ''} CP={self.cp} DP={self.dp} ZeRO-{self.zero_stage} "
                f"micro={self.micro_batch} AC={'on' if self.activation_checkpointing else 'off'}")
