"""Configuration of the xLSTM paper family (Beck et al., NeurIPS 2024): mLSTM and sLSTM blocks.

Standalone file (torch + transformers only), shipped inside exported Hugging Face folders by
xlstm-pretrain. Field names follow xlstm-pretrain's ``ModelConfig``; ``hidden_size`` and
``num_hidden_layers`` are aliases of ``embedding_dim`` and ``num_blocks`` for transformers utilities.
"""

import math

from transformers import PretrainedConfig


def _round_up(x: float, multiple: int) -> int:
    return int(math.ceil(x / multiple) * multiple)


class xLSTMPaperConfig(PretrainedConfig):
    model_type = "xlstm_paper"
    attribute_map = {"hidden_size": "embedding_dim", "num_hidden_layers": "num_blocks"}

    def __init__(
        self,
        vocab_size=50304,
        embedding_dim=768,
        num_blocks=24,
        num_heads=4,  # mLSTM heads
        slstm_at=(),  # indices of the sLSTM blocks; every other block is an mLSTM block
        slstm_num_heads=4,
        mlstm_proj_factor=2.0,
        conv1d_kernel_size=4,
        qkv_proj_blocksize=4,
        slstm_conv1d_kernel_size=4,  # 0 = no conv in the sLSTM block
        ffn_proj_factor=1.3,
        ffn_round_up_to=64,
        chunk_size=64,  # mLSTM sequences are processed in chunks of this length (memory O(S * chunk))
        eps=1e-6,  # mLSTM normaliser epsilon
        context_length=2048,  # training context; informational (no positional encoding)
        tie_word_embeddings=False,
        use_cache=True,  # return the recurrent state (xLSTMPaperCache) from forward
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=None,
        **kwargs,
    ):
        self.vocab_size = vocab_size
        self.embedding_dim = embedding_dim
        self.num_blocks = num_blocks
        self.num_heads = num_heads
        self.slstm_at = [int(i) for i in slstm_at]
        self.slstm_num_heads = slstm_num_heads
        self.mlstm_proj_factor = mlstm_proj_factor
        self.conv1d_kernel_size = conv1d_kernel_size
        self.qkv_proj_blocksize = qkv_proj_blocksize
        self.slstm_conv1d_kernel_size = slstm_conv1d_kernel_size
        self.ffn_proj_factor = ffn_proj_factor
        self.ffn_round_up_to = ffn_round_up_to
        self.chunk_size = chunk_size
        self.eps = eps
        self.context_length = context_length
        self.use_cache = use_cache
        super().__init__(
            tie_word_embeddings=tie_word_embeddings, bos_token_id=bos_token_id, eos_token_id=eos_token_id,
            pad_token_id=pad_token_id, **kwargs,
        )
        # Set again after the base init: some transformers versions reset these from their own defaults.
        self.tie_word_embeddings = tie_word_embeddings
        self.bos_token_id, self.eos_token_id, self.pad_token_id = bos_token_id, eos_token_id, pad_token_id

    # Derived sizes: the same formulas as the training code, so the checkpoint's tensor shapes match.
    @property
    def mlstm_inner_dim(self) -> int:
        return _round_up(self.mlstm_proj_factor * self.embedding_dim, 64)

    @property
    def ffn_dim(self) -> int:
        return _round_up(self.ffn_proj_factor * self.embedding_dim, self.ffn_round_up_to)

    @property
    def block_types(self) -> list:
        return ["slstm" if i in set(self.slstm_at) else "mlstm" for i in range(self.num_blocks)]
