"""xLSTM paper family (Beck et al., NeurIPS 2024) for Hugging Face transformers: mLSTM and sLSTM blocks.

Standalone file (torch + transformers only), shipped inside exported Hugging Face folders by
xlstm-pretrain; it computes the same function as that project's model (parameter names match it under
the ``backbone.`` prefix). Read top to bottom: small layers, the two cells, the two blocks, the cache,
then the transformers model classes.

    mLSTM block: x + proj_down((MHNorm(mLSTM(q, k, v, i, f)) + skip * x_c) * SiLU(z)),
                 x_m, z = proj_up(LN(x));  x_c = SiLU(conv(x_m));  q, k from x_c, v from x_m (headwise)
    sLSTM block: x + MHNorm(sLSTM(LN(x))), then x + GeLU-gated FFN(LN(x))

Generation is recurrent: the cache is an ``xLSTMPaperCache`` holding each block's conv and cell state,
so a decoding step costs the same at any position. transformers has renamed the cache argument over
time (``past_key_values`` until 5.23, ``cache`` from 5.24, ``cache_params`` for recurrent models), so
``forward`` takes it under any of these names, and refuses a cache of another type or under a name it
does not know rather than silently starting from an empty state. Padding (an attention mask with zeros)
is not supported: a recurrent state cannot skip pad tokens, so the model refuses such masks.
"""

import dataclasses
import math

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers.cache_utils import Cache
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast

from .configuration_xlstm_paper import xLSTMPaperConfig

# ---- small layers -------------------------------------------------------------------------------


def compute_dtype(dtype):
    """fp32 for half (and fp32) tensors, fp64 for fp64 ones."""
    return torch.promote_types(dtype, torch.float32)


class ResidualLayerNorm(nn.Module):
    """LayerNorm without bias whose scale is stored as an offset from 1 (the paper family), fp32 reductions."""

    def __init__(self, dim, eps=1e-5):
        super().__init__()
        self.dim, self.eps = dim, eps
        self.weight = nn.Parameter(torch.zeros(dim))

    def forward(self, x):
        cdt = compute_dtype(x.dtype)
        y = F.layer_norm(x.to(cdt), (self.dim,), eps=self.eps)
        return (y * (1.0 + self.weight.to(cdt))).to(x.dtype)


class MultiHeadLayerNorm(nn.Module):
    """Per-head LayerNorm over the head dim, (B, S, NH, DH) -> (B, S, NH * DH), scale stored as offset from 1."""

    def __init__(self, num_heads, head_dim, eps=1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.zeros(num_heads * head_dim))

    def forward(self, x):
        B, S, NH, DH = x.shape
        cdt = compute_dtype(x.dtype)
        y = F.layer_norm(x.to(cdt), (DH,), eps=self.eps).reshape(B, S, NH * DH)
        return (y * (1.0 + self.weight.to(cdt))).to(x.dtype)


class CausalConv1d(nn.Module):
    """Depthwise causal conv; ``state`` holds the K-1 inputs before the sequence (None = zeros)."""

    def __init__(self, channels, kernel_size):
        super().__init__()
        self.channels, self.kernel_size = channels, kernel_size
        self.weight = nn.Parameter(torch.zeros(channels, 1, kernel_size))  # nn.Conv1d layout
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x, state=None):
        B, S, C = x.shape
        if state is None:
            state = x.new_zeros(B, self.kernel_size - 1, C)
        xx = torch.cat([state.to(x.dtype), x], dim=1)
        y = F.conv1d(xx.transpose(1, 2), self.weight.to(x.dtype), groups=C).transpose(1, 2)
        return y + self.bias.to(x.dtype), xx[:, xx.shape[1] - (self.kernel_size - 1):]


class LinearHeadwise(nn.Module):
    """Block-diagonal linear map with ``num_blocks`` independent blocks, no bias."""

    def __init__(self, in_features, out_features, num_blocks):
        super().__init__()
        self.num_blocks = num_blocks
        self.weight = nn.Parameter(torch.zeros(num_blocks, out_features // num_blocks, in_features // num_blocks))

    def forward(self, x):
        xs = x.reshape(*x.shape[:-1], self.num_blocks, -1)
        return torch.einsum("...hd,hod->...ho", xs, self.weight).reshape(*x.shape[:-1], -1)


class GatedFeedForward(nn.Module):
    """proj_down(GeLU(gate) * up) with the fused up projection ``proj_up`` = [gate; up]."""

    def __init__(self, dim, hidden):
        super().__init__()
        self.hidden = hidden
        self.proj_up = nn.Linear(dim, 2 * hidden, bias=False)
        self.proj_down = nn.Linear(hidden, dim, bias=False)

    def forward(self, x):
        gate, up = self.proj_up(x).split(self.hidden, dim=-1)
        return self.proj_down(F.gelu(gate) * up)


# ---- cells --------------------------------------------------------------------------------------
# Gates, m and n are fp32 for half-precision models (a half-precision stabiliser loses the sequence), fp64 for
# fp64 models (so that `dtype=float64` evaluations are fp64 end to end).


def mlstm_zero_state(B, NH, DHQK, DHV, device):
    return (torch.zeros(B, NH, DHQK, DHV, device=device), torch.zeros(B, NH, DHQK, device=device),
            torch.zeros(B, NH, 1, device=device))


def mlstm_chunk(q, k, v, i, f, state, eps):
    """mLSTM over one chunk from ``state`` = (C, n, m), in the stabilised parallel (S x S) form.

    q, k (B, NH, S, DHQK); v (B, NH, S, DHV); i, f (B, NH, S) gate pre-activations (exponential input
    gate, sigmoid forget gate). q is scaled by 1/sqrt(DHQK); states hold unscaled k. Returns (h, state).
    """
    cdt = compute_dtype(q.dtype)
    C0, n0, m0 = (s.to(cdt) for s in state)
    S, DHQK = q.shape[2], q.shape[3]
    q, k, v, i = q.to(cdt), k.to(cdt), v.to(cdt), i.to(cdt)
    log_f = F.logsigmoid(f.to(cdt))
    below = torch.ones(S, S, dtype=torch.bool, device=q.device).tril(-1)
    causal = torch.ones(S, S, dtype=torch.bool, device=q.device).tril()
    # log_F[t, s] = sum of log f over (s, t], built by masked sums (no differences of long cumsums)
    log_F = torch.where(below, log_f[..., :, None], 0.0).cumsum(-2)
    log_D = torch.where(causal, log_F + i[..., None, :], float("-inf"))  # weight of input s in h_t
    log_init = log_f.cumsum(-1) + m0  # weight of the incoming state at t
    m = torch.maximum(log_init, log_D.amax(-1))  # (B, NH, S)
    D = torch.exp(log_D - m[..., None])
    w_init = torch.exp(log_init - m)
    q_hat = q * DHQK ** -0.5
    scores = (q_hat @ k.transpose(-1, -2)) * D
    num = scores @ v + w_init[..., None] * (q_hat @ C0)
    den = scores.sum(-1) + w_init * (q_hat @ n0[..., None])[..., 0]
    h = num / (torch.maximum(den.abs(), torch.exp(-m)) + eps)[..., None]
    w_last = D[..., -1, :]  # weights of every input in the final state, already scaled by exp(-m_S)
    C = w_init[..., -1, None, None] * C0 + (k * w_last[..., None]).transpose(-1, -2) @ v
    n = w_init[..., -1, None] * n0 + (k * w_last[..., None]).sum(-2)
    return h, (C, n, m[..., -1:])


def mlstm_sequence(q, k, v, i, f, state, eps, chunk_size):
    """The chunk form applied chunk after chunk, carrying the state: memory O(S * chunk_size)."""
    hs = []
    for start in range(0, q.shape[2], chunk_size):
        sl = slice(start, start + chunk_size)
        h, state = mlstm_chunk(q[:, :, sl], k[:, :, sl], v[:, :, sl], i[:, :, sl], f[:, :, sl], state, eps)
        hs.append(h)
    return torch.cat(hs, dim=2), state


def slstm_zero_state(B, NH, DH, device):
    return tuple(torch.zeros(B, NH, DH, device=device) for _ in range(4))


def slstm_sequence(wx, R, b, state):
    """sLSTM recurrence. wx (B, S, 4, NH, DH) input pre-activations of gates (i, f, z, o); R (4, NH, DH, DH):
    gate g of head h adds y_{t-1}[h] @ R[g, h]; b (4, NH, DH). state = (y, c, n, m). Returns (y, state)."""
    cdt = compute_dtype(wx.dtype)
    y, c, n, m = (s.to(cdt) for s in state)
    R, b = R.to(cdt), b.to(cdt)
    ys = []
    for t in range(wx.shape[1]):
        raw = wx[:, t].to(cdt) + torch.einsum("bhd,ghde->bghe", y, R) + b
        i, f, z, o = raw.unbind(1)
        log_f = F.logsigmoid(f)
        m_new = torch.where(n == 0, i, torch.maximum(i, log_f + m))  # a fresh state has no stabiliser yet
        i_act = torch.exp(i - m_new).clamp(max=1.0)
        f_act = torch.exp(log_f + m - m_new).clamp(max=1.0)
        c = f_act * c + i_act * torch.tanh(z)
        n = f_act * n + i_act
        y = torch.sigmoid(o) * c / n
        m = m_new
        ys.append(y)
    return torch.stack(ys, dim=1), (y, c, n, m)


# ---- blocks -------------------------------------------------------------------------------------


class mLSTMLayer(nn.Module):
    def __init__(self, config):
        super().__init__()
        d, D, NH = config.embedding_dim, config.mlstm_inner_dim, config.num_heads
        self.inner_dim, self.num_heads, self.eps, self.chunk_size = D, NH, config.eps, config.chunk_size
        self.proj_up = nn.Linear(d, 2 * D, bias=False)
        self.conv = CausalConv1d(D, config.conv1d_kernel_size)
        n_qkv_blocks = D // config.qkv_proj_blocksize
        self.q_proj = LinearHeadwise(D, D, n_qkv_blocks)
        self.k_proj = LinearHeadwise(D, D, n_qkv_blocks)
        self.v_proj = LinearHeadwise(D, D, n_qkv_blocks)
        self.igate = nn.Linear(3 * D, NH, bias=True)
        self.fgate = nn.Linear(3 * D, NH, bias=True)
        self.outnorm = MultiHeadLayerNorm(NH, D // NH)
        self.learnable_skip = nn.Parameter(torch.ones(D))
        self.proj_down = nn.Linear(D, d, bias=False)

    def zero_state(self, batch, device):
        DH = self.inner_dim // self.num_heads
        return {"conv": None, "cell": mlstm_zero_state(batch, self.num_heads, DH, DH, device)}

    def forward(self, x, state):
        B, S, _ = x.shape
        x_m, z = self.proj_up(x).split(self.inner_dim, dim=-1)
        x_c, conv_state = self.conv(x_m, state["conv"])
        x_c = F.silu(x_c)
        q, k, v = self.q_proj(x_c), self.k_proj(x_c), self.v_proj(x_m)
        qkv = torch.cat([q, k, v], dim=-1)
        i, f = self.igate(qkv).transpose(1, 2), self.fgate(qkv).transpose(1, 2)  # (B, NH, S)

        def heads(t):
            return t.view(B, S, self.num_heads, -1).transpose(1, 2)

        h, cell = mlstm_sequence(heads(q), heads(k), heads(v), i, f, state["cell"], self.eps, self.chunk_size)
        h = self.outnorm(h.transpose(1, 2).to(x.dtype))
        y = self.proj_down((h + self.learnable_skip * x_c) * F.silu(z))
        return y, {"conv": conv_state, "cell": cell}


class sLSTMLayer(nn.Module):
    def __init__(self, config):
        super().__init__()
        d, NH = config.embedding_dim, config.slstm_num_heads
        self.num_heads, self.head_dim = NH, d // NH
        k = config.slstm_conv1d_kernel_size
        self.conv = CausalConv1d(d, k) if k > 0 else None
        self.igate = LinearHeadwise(d, d, NH)
        self.fgate = LinearHeadwise(d, d, NH)
        self.zgate = LinearHeadwise(d, d, NH)
        self.ogate = LinearHeadwise(d, d, NH)
        self.recurrent_kernel = nn.Parameter(torch.zeros(4, NH, self.head_dim, self.head_dim))
        self.bias = nn.Parameter(torch.zeros(4, NH, self.head_dim))
        self.group_norm = MultiHeadLayerNorm(NH, self.head_dim)

    def zero_state(self, batch, device):
        return {"conv": None, "cell": slstm_zero_state(batch, self.num_heads, self.head_dim, device)}

    def forward(self, x, state):
        B, S, _ = x.shape
        conv_state = None
        if self.conv is not None:
            x_c, conv_state = self.conv(x, state["conv"])
            x_c = F.silu(x_c)
        else:
            x_c = x
        wx = torch.stack([self.igate(x_c), self.fgate(x_c), self.zgate(x), self.ogate(x)], dim=2)
        wx = wx.view(B, S, 4, self.num_heads, self.head_dim)
        y, cell = slstm_sequence(wx, self.recurrent_kernel, self.bias, state["cell"])
        return self.group_norm(y.to(x.dtype)), {"conv": conv_state, "cell": cell}


class mLSTMBlock(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.norm = ResidualLayerNorm(config.embedding_dim)
        self.mlstm = mLSTMLayer(config)

    def zero_state(self, batch, device):
        return self.mlstm.zero_state(batch, device)

    def forward(self, x, state):
        y, state = self.mlstm(self.norm(x), state)
        return x + y, state


class sLSTMBlock(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.norm = ResidualLayerNorm(config.embedding_dim)
        self.slstm = sLSTMLayer(config)
        self.ffn_norm = ResidualLayerNorm(config.embedding_dim)
        self.ffn = GatedFeedForward(config.embedding_dim, config.ffn_dim)

    def zero_state(self, batch, device):
        return self.slstm.zero_state(batch, device)

    def forward(self, x, state):
        y, state = self.slstm(self.norm(x), state)
        x = x + y
        return x + self.ffn(self.ffn_norm(x)), state


# ---- recurrent cache ----------------------------------------------------------------------------


class xLSTMPaperCache:
    """The recurrent state of every block plus the number of tokens it has seen.

    ``states[idx]`` = {"conv": (B, K-1, C) or None, "cell": mLSTM (C, n, m) or sLSTM (y, c, n, m)}.
    It is not a transformers ``Cache`` (there are no keys or values), but offers what ``generate`` asks of
    one: ``get_seq_length``, ``reorder_cache`` (beam search) and the compile/crop flags.
    """

    is_compileable = False
    is_croppable = False  # a recurrent state cannot be rolled back to an earlier position

    def __init__(self, states, seen_tokens=0):
        self.states = states
        self.seen_tokens = seen_tokens

    def get_seq_length(self, layer_idx=0):
        return self.seen_tokens

    def reorder_cache(self, beam_idx):
        def pick(t):
            return None if t is None else t.index_select(0, beam_idx.to(t.device))

        self.states = [{"conv": pick(s["conv"]), "cell": tuple(pick(t) for t in s["cell"])} for s in self.states]


def pick_cache(cache, past_key_values, cache_params, other_kwargs):
    """The cache passed under whichever name the caller used (None when there is none), type-checked.

    A cache that went unnoticed would make every decoding step start from an empty state: generation
    would still run but repeat tokens. So every mistake here is an error.
    """
    given = {name: value for name, value in
             (("cache", cache), ("past_key_values", past_key_values), ("cache_params", cache_params))
             if value is not None}
    if len(given) > 1:
        raise ValueError(f"the cache was passed under several names ({', '.join(given)}): pass it once")
    for name, value in other_kwargs.items():  # a name a later transformers might adopt
        if isinstance(value, (xLSTMPaperCache, Cache)):
            raise TypeError(f"got a cache under the unknown argument {name!r}: pass it as `cache` "
                            "(this model file does not know the name this transformers version uses)")
    found = next(iter(given.items()), None)
    if found is not None and not isinstance(found[1], xLSTMPaperCache):
        raise TypeError(f"`{found[0]}` must be an xLSTMPaperCache (the recurrent state this model returns), "
                        f"got {type(found[1]).__name__}")
    return None if found is None else found[1]


def cache_field(output_cls):
    """The name of the cache field this transformers version declares on its output classes (``cache`` from
    5.24, ``past_key_values`` before), which is where ``generate`` looks for the cache."""
    return "cache" if "cache" in {f.name for f in dataclasses.fields(output_cls)} else "past_key_values"


def output_with_cache(output_cls, cache, **fields):
    return output_cls(**fields, **{cache_field(output_cls): cache})


# ---- transformers model classes -----------------------------------------------------------------


class xLSTMPaperPreTrainedModel(PreTrainedModel):
    config_class = xLSTMPaperConfig
    base_model_prefix = "backbone"
    _no_split_modules = ["mLSTMBlock", "sLSTMBlock"]
    _is_stateful = True
    supports_gradient_checkpointing = False

    @classmethod
    def _supports_default_dynamic_cache(cls):
        # generate must not create a transformers DynamicCache for us: the model makes its own xLSTMPaperCache.
        # transformers infers this from the class name (5.23, 5.24: no DynamicCache when it contains "xlstm")
        # or from _is_stateful (5.2); declared here so that neither a renamed subclass nor a changed
        # heuristic makes generate hand us a DynamicCache.
        return False

    def _init_weights(self, module):
        # Only reached for weights missing from a checkpoint (exported folders hold every tensor).
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=math.sqrt(2.0 / (5.0 * self.config.embedding_dim)))
            if getattr(module, "bias", None) is not None:
                nn.init.zeros_(module.bias)


class xLSTMPaperModel(xLSTMPaperPreTrainedModel):
    def __init__(self, config):
        super().__init__(config)
        block_cls = {"mlstm": mLSTMBlock, "slstm": sLSTMBlock}
        self.embedding = nn.Embedding(config.vocab_size, config.embedding_dim)
        self.blocks = nn.ModuleList(block_cls[t](config) for t in config.block_types)
        self.out_norm = ResidualLayerNorm(config.embedding_dim)
        self.post_init()

    def get_input_embeddings(self):
        return self.embedding

    def set_input_embeddings(self, value):
        self.embedding = value

    def forward(self, input_ids=None, inputs_embeds=None, cache=None, use_cache=None, attention_mask=None,
                return_dict=None, past_key_values=None, cache_params=None, **kwargs):
        cache = pick_cache(cache, past_key_values, cache_params, kwargs)
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids and inputs_embeds")
        if attention_mask is not None and not bool(attention_mask.all()):
            raise ValueError("xLSTM is recurrent and cannot skip padded positions: pass unpadded inputs "
                             "(attention_mask all ones), e.g. one sequence per call or equal-length batches")
        x = self.embedding(input_ids) if inputs_embeds is None else inputs_embeds
        use_cache = getattr(self.config, "use_cache", True) if use_cache is None else use_cache
        B = x.shape[0]
        states = cache.states if cache is not None else [block.zero_state(B, x.device) for block in self.blocks]
        new_states = []
        for block, state in zip(self.blocks, states):
            x, state = block(x, state)
            new_states.append(state)
        x = self.out_norm(x)
        if cache is not None:  # update in place, as transformers caches do
            cache.states, cache.seen_tokens = new_states, cache.seen_tokens + x.shape[1]
        elif use_cache:
            cache = xLSTMPaperCache(new_states, x.shape[1])
        out = output_with_cache(BaseModelOutputWithPast, cache, last_hidden_state=x)
        return out if return_dict is None or return_dict else out.to_tuple()


class xLSTMPaperForCausalLM(xLSTMPaperPreTrainedModel, GenerationMixin):
    _tied_weights_keys = {"lm_head.weight": "backbone.embedding.weight"}

    def __init__(self, config):
        super().__init__(config)
        self.backbone = xLSTMPaperModel(config)
        self.lm_head = nn.Linear(config.embedding_dim, config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self):
        return self.backbone.embedding

    def set_input_embeddings(self, value):
        self.backbone.embedding = value

    def get_output_embeddings(self):
        return self.lm_head

    def set_output_embeddings(self, value):
        self.lm_head = value

    def forward(self, input_ids=None, inputs_embeds=None, cache=None, use_cache=None, attention_mask=None,
                labels=None, return_dict=None, past_key_values=None, cache_params=None, **kwargs):
        cache = pick_cache(cache, past_key_values, cache_params, kwargs)
        out = self.backbone(input_ids=input_ids, inputs_embeds=inputs_embeds, cache=cache, use_cache=use_cache,
                            attention_mask=attention_mask, return_dict=True)
        logits = self.lm_head(out.last_hidden_state)
        logits = logits.to(compute_dtype(logits.dtype))
        loss = None
        if labels is not None:  # next-token loss, labels aligned with input_ids (-100 = ignore)
            loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1),
                                   ignore_index=-100)
        result = output_with_cache(CausalLMOutputWithPast, getattr(out, cache_field(type(out))),
                                   loss=loss, logits=logits)
        return result if return_dict is None or return_dict else result.to_tuple()
