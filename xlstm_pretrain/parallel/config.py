"""ParallelConfig and the layout checks that must pass before any collective is issued."""

from __future__ import annotations

from dataclasses import dataclass

from xlstm_pretrain.config_loader import ConfigError


@dataclass
class ParallelConfig:
    tensor_parallel: int = 1
    context_parallel: int = 1  # sequence split across ranks, recurrent state passed between shards
    sequence_parallel: bool = False  # Megatron sequence parallelism inside the TP group

    def validate(self) -> None:
        if self.tensor_parallel < 1 or self.context_parallel < 1:
            raise ConfigError(f"tensor_parallel and context_parallel must be >= 1, got "
                              f"{self.tensor_parallel} and {self.context_parallel}")
        if self.sequence_parallel and self.tensor_parallel == 1:
            raise ConfigError("sequence_parallel=true needs tensor_parallel > 1 (it splits activations across TP ranks)")


def check_layout(model_cfg, parallel_cfg: ParallelConfig, world_size: int, seq_len: int | None = None) -> int:
    """Raise ConfigError for impossible layouts; return the data-parallel degree."""
    tp, cp = parallel_cfg.tensor_parallel, parallel_cfg.context_parallel
    if world_size % (tp * cp):
        raise ConfigError(f"world size {world_size} is not a multiple of tensor_parallel x context_parallel = "
                          f"{tp} x {cp}")
    problems = []

    def need(cond, msg):
        if not cond:
            problems.append(msg)

    m = model_cfg
    need(m.vocab_size % tp == 0, f"vocab_size={m.vocab_size} is not divisible by tensor_parallel={tp} "
                                 "(pad the vocabulary, e.g. to 50304)")
    need(m.num_heads % tp == 0, f"num_heads={m.num_heads} is not divisible by tensor_parallel={tp}")
    need(m.ffn_dim % tp == 0, f"FFN dim {m.ffn_dim} is not divisible by tensor_parallel={tp}")
    if m.family == "paper":
        need((m.mlstm_inner_dim // m.qkv_proj_blocksize) % tp == 0,
             f"mLSTM inner dim {m.mlstm_inner_dim} / qkv_proj_blocksize {m.qkv_proj_blocksize} blocks is not "
             f"divisible by tensor_parallel={tp}")
        if m.slstm_at:
            need(m.slstm_num_heads % tp == 0, f"slstm_num_heads={m.slstm_num_heads} is not divisible by "
                                              f"tensor_parallel={tp}")
    if cp > 1 and seq_len is not None:
        # each rank takes an equal contiguous shard; the kernels handle a ragged last chunk per shard, so
        # chunk_size does not constrain it, but the conv halo comes from the previous shard alone
        need(seq_len % cp == 0, f"sequence length {seq_len} is not divisible by context_parallel={cp} (every "
                                f"rank takes an equal contiguous shard)")
        halo = max(m.conv1d_kernel_size, m.slstm_conv1d_kernel_size) - 1 if m.family == "paper" else 0
        need(seq_len // cp >= halo, f"a context-parallel shard of {seq_len} / {cp} tokens is shorter than the causal "
                                    f"conv's halo of {halo} tokens (conv1d_kernel_size - 1)")
    if parallel_cfg.sequence_parallel and seq_len is not None:
        need((seq_len // cp) % tp == 0, f"sequence length {seq_len} / context_parallel {cp} is not divisible by "
                                        f"tensor_parallel={tp} (sequence parallelism splits it)")
    if problems:
        raise ConfigError("impossible parallel layout: " + "; ".join(problems))
    return world_size // (tp * cp)
