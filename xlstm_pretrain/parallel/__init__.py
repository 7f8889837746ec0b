from .config import ParallelConfig, check_layout
from .context_parallel import shard_sequence, token_count
from .layers import ColumnParallelLinear, HeadParallelGate, RowParallelLinear, VocabParallelEmbedding
from .loss import vocab_parallel_cross_entropy
from .mappings import CommContext, checkpoint_context_fn
from .materialize import build_sharded_model
from .plan import apply_context_parallel, parallelize_model
from .state import DeepSpeedMPU, ParallelState, init_parallel_state, single_process_state
from .tensor_parallel import (fused_loss_applies, gather_full_state_dict, gather_logits, lm_loss, lm_loss_from_hidden,
                              load_full_state_dict)

__all__ = [
    "apply_context_parallel", "build_sharded_model", "checkpoint_context_fn", "shard_sequence", "token_count",
    "ColumnParallelLinear", "CommContext", "DeepSpeedMPU", "HeadParallelGate", "ParallelConfig", "ParallelState",
    "RowParallelLinear", "VocabParallelEmbedding", "check_layout", "gather_full_state_dict", "gather_logits",
    "fused_loss_applies", "init_parallel_state", "lm_loss", "lm_loss_from_hidden", "load_full_state_dict",
    "parallelize_model", "single_process_state",
    "vocab_parallel_cross_entropy",
]
