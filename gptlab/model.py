"""A GPT language model in plain PyTorch, read top to bottom.

The model of Karpathy's lecture "Let's build GPT", written the way nanoGPT writes it:
token and learned position embeddings, a stack of pre-LayerNorm Transformer blocks
(causal multi-head self-attention, then a 4x MLP, each inside a residual connection),
a final LayerNorm and a linear head over the vocabulary. Tokens are whatever the tokenizer
makes them (characters, or byte-level BPE pieces): the model knows only vocab_size. While
generating, a KVCache passed to forward keeps every layer's keys and values. The bigram
baseline the lecture starts from sits at the end, with the same interface.

What small GPTs train with today (nanochat, the modded-nanogpt speedrun, Llama) is a few
switches away, each off by default: rotary position embeddings on q and k instead of a
position table (position="rope"), RMSNorm instead of LayerNorm (norm="rmsnorm"), an RMSNorm of
each head's q and k (qk_norm), a squared ReLU (activation="relu2") or a SiLU-gated MLP
(mlp="swiglu"), and tanh soft-capped logits (logit_softcap).

Under muP (parametrization="mup", Tensor Programs V) a few multipliers follow the width ratio
m = n_embd / base_width, so that hyperparameters tuned at base_width hold at every width: hidden
matrices start m^-1/2 smaller (and train at 1/m of the learning rate: the optimizer's part),
the logits are divided by m, and attention scores scale as 1/head_size instead of
1/sqrt(head_size). At m = 1 it is the standard parametrization ("sp"), exactly.

No Lightning, Hydra or data code here: the model only knows tensors.
"""

import math
from collections.abc import Iterator
from dataclasses import dataclass, fields
from functools import partial
from typing import Literal, get_args, get_origin

import torch
import torch.nn as nn
from torch.nn import functional as F

from gptlab.faults import SettingError

RMS_NORM_EPS = 1e-6  # every RMSNorm's (Llama's and Qwen3's rms_norm_eps, so that exports match)


@dataclass(frozen=True)
class GPTConfig:
    arch: Literal["gpt", "bigram"] = "gpt"
    block_size: int = 64  # longest context the model sees, in tokens
    vocab_size: int = 65  # set from the tokenizer at train time; 65 is Tiny Shakespeare's characters
    n_layer: int = 2
    n_head: int = 4
    n_embd: int = 96
    dropout: float = 0.0
    # The lecture builds the GPT up step by step; these switch the steps on and off. The
    # defaults give the standard GPT.
    attention: Literal["sdpa", "manual", "heads"] = "sdpa"  # one math, three implementations
    causal: bool = True  # False: every token sees the whole block (an encoder, not a decoder)
    attn_proj: bool = True  # a linear projection after the heads are concatenated
    # gpt: C -> 4C -> C; swiglu: SiLU(gate) * up, C -> 8C/3 -> C (activation unused); single: one C -> C layer
    mlp: Literal["gpt", "swiglu", "single", "none"] = "gpt"
    # the MLP's inner width; null: 4 n_embd (gpt), 8/3 n_embd up to a multiple of 8 (swiglu)
    mlp_hidden: int | None = None
    # gelu_tanh: GPT-2's approximation; relu2: ReLU squared (modded-nanogpt, nanochat)
    activation: Literal["gelu", "gelu_tanh", "relu", "relu2"] = "gelu"
    residual: bool = True  # blocks add to the residual stream instead of replacing it
    norm: Literal["layernorm", "rmsnorm", "none"] = "layernorm"  # pre-norm in each block and before lm_head
    init: Literal["gpt2", "pytorch"] = "gpt2"  # pytorch: each layer's default init (lecture, early steps)
    # Today's small GPTs: rotary positions instead of a learned table, RMSNorm of each head's q and
    # k, tanh soft-capped logits
    position: Literal["learned", "rope"] = "learned"  # rope: q and k rotated by position, no wpe table
    rope_base: float = 10000.0  # rope: the base of the rotation frequencies (Llama's rope_theta)
    qk_norm: bool = False  # RMSNorm of each head's q and k before attention (and before rope)
    logit_softcap: float | None = None  # logits become cap * tanh(logits / cap) (Gemma 2, nanochat)
    # nanoGPT's options, for checkpoints converted from it
    bias: bool = True  # biases in the linear layers and LayerNorms (lm_head never has one)
    tie_weights: bool = False  # lm_head shares the token embedding's weights (GPT-2, nanoGPT)
    # sp: the standard parametrization; mup: muP over width (see the module docstring), which
    # keeps n_head as the width changes, so that head_size grows with it
    parametrization: Literal["sp", "mup"] = "sp"
    base_width: int = 96  # mup: the n_embd the hyperparameters were tuned at (m = n_embd / base_width)

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if get_origin(f.type) is Literal and value not in get_args(f.type):
                raise SettingError(f"model.{f.name}={value!r}", f"use one of {list(get_args(f.type))}")
            if int in (f.type, *get_args(f.type)) and value is not None and value < 1:
                raise SettingError(f"model.{f.name}={value!r}", "use a positive integer")
        if self.n_embd % self.n_head:
            divisors = [h for h in range(1, self.n_embd + 1) if self.n_embd % h == 0]
            raise SettingError(
                f"model.n_embd={self.n_embd} is not divisible by model.n_head={self.n_head}: "
                f"with n_embd={self.n_embd} use n_head in {divisors}"
            )
        if not 0 <= self.dropout < 1:
            raise SettingError(f"model.dropout={self.dropout!r}", "use a number with 0 <= dropout < 1")
        if self.position == "rope" and self.head_size % 2:
            raise SettingError(
                f"model.position=rope with a head size of {self.head_size} (n_embd / n_head)",
                "rotary embeddings turn pairs of channels, so use n_embd and n_head with an even head size",
            )
        if not (math.isfinite(self.rope_base) and self.rope_base > 1):
            raise SettingError(f"model.rope_base={self.rope_base!r}", "use a number above 1")
        cap = self.logit_softcap
        if cap is not None and not (math.isfinite(cap) and cap > 0):
            raise SettingError(f"model.logit_softcap={cap!r}", "use a positive number, or null")
        if self.mlp_hidden is not None and self.mlp not in ("gpt", "swiglu"):
            raise SettingError(
                f"model.mlp_hidden={self.mlp_hidden} with model.mlp={self.mlp}",
                "only mlp=gpt and mlp=swiglu have an inner width, use mlp_hidden=null",
            )
        if self.parametrization == "mup":
            if self.arch == "bigram" or self.init == "pytorch":
                setting = "model.arch=bigram" if self.arch == "bigram" else "model.init=pytorch"
                raise SettingError(
                    f"model.parametrization=mup with {setting}",
                    "muP scales the GPT's init (model.init=gpt2), use model.parametrization=sp",
                )
            if self.base_width % self.n_head:
                raise SettingError(
                    f"model.base_width={self.base_width} is not divisible by model.n_head={self.n_head}: "
                    "muP keeps n_head across widths, so base_width must split into n_head heads too"
                )

    @property
    def head_size(self) -> int:
        return self.n_embd // self.n_head

    @property
    def mlp_width(self) -> int:
        """The MLP's inner width: mlp_hidden, or 4 n_embd (gpt); for swiglu 8/3 n_embd (the same
        parameters in three matrices as gpt's in two) rounded up to a multiple of 8."""
        if self.mlp_hidden is not None:
            return self.mlp_hidden
        return {"gpt": 4 * self.n_embd, "swiglu": -(-8 * self.n_embd // 24) * 8}.get(self.mlp, self.n_embd)

    @property
    def width_multiplier(self) -> float:
        """muP's m = n_embd / base_width; 1 under sp."""
        return self.n_embd / self.base_width if self.parametrization == "mup" else 1.0

    @property
    def attention_scale(self) -> float:
        """What attention scores are multiplied by: 1/sqrt(head_size) under sp; under mup 1/head_size,
        times the constant sqrt(base head_size) that makes it sp's at base_width."""
        if self.parametrization == "sp":
            return self.head_size**-0.5
        return self.head_size**-0.5 * (self.base_width // self.n_head / self.head_size) ** 0.5


class KVCache:
    """Every layer's keys and values of the positions seen so far, while generating: with it,
    forward runs the model on the new positions only, whose queries attend to the cached keys and
    values before them (a chunk of several new positions, each also to those before it in the
    chunk). It holds block_size positions, the longest context the model sees."""

    def __init__(self, config: GPTConfig, batch_size: int, device: torch.device, dtype: torch.dtype):
        shape = (config.n_layer, batch_size, config.n_head, config.block_size, config.head_size)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.pos = 0  # positions cached: the next ones go here

    def insert(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Caches a layer's keys and values (B, n_head, T, head_size) of the next T positions, and
        returns the layer's keys and values of every position so far."""
        end = self.pos + k.size(2)
        self.k[layer, :, :, self.pos : end] = k
        self.v[layer, :, :, self.pos : end] = v
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]


class Rotary(nn.Module):
    """Rotary position embeddings (RoFormer; Llama's layout): channel i of a head and channel
    i + head_size/2 are a pair, turned by the angle position * rope_base^(-2i/head_size). Rotating
    q and k makes each score depend on the two tokens' distance alone, not on where they are."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        half = torch.arange(0, config.head_size, 2, dtype=torch.int64).float() / config.head_size
        frequencies = 1.0 / (config.rope_base**half)  # (head_size / 2,)
        angles = torch.outer(torch.arange(config.block_size).float(), frequencies)
        # computed from the config, not learned: kept out of the state dict. The sines carry the
        # rotation's sign: the first channel of a pair gets -sin times the second, the second
        # +sin times the first (see rotate)
        self.register_buffer("cos", torch.cat((angles.cos(), angles.cos()), dim=-1), persistent=False)
        self.register_buffer("sin", torch.cat((-angles.sin(), angles.sin()), dim=-1), persistent=False)

    def forward(self, start: int, T: int) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and signed sin (T, head_size) of positions start .. start + T - 1."""
        return self.cos[start : start + T], self.sin[start : start + T]


def rotate(x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """x (..., T, head_size) with each channel pair (i, i + head_size/2) turned by its position's
    angle: (x1 cos - x2 sin, x2 cos + x1 sin). Rolling the channels by half a head brings each
    channel's partner to it, in one operation."""
    cos, sin = (t.to(x.dtype) for t in rope)
    return torch.addcmul(x * cos, x.roll(x.size(-1) // 2, dims=-1), sin)


# the rotary angles of the positions a forward pass runs on, for every layer; None under learned positions
Rope = tuple[torch.Tensor, torch.Tensor] | None


class CausalSelfAttention(nn.Module):
    """nanoGPT's batched attention: q, k and v of all heads come out of one matmul and the
    heads become a batch dimension. `sdpa` hands the core to F.scaled_dot_product_attention
    (fused kernels, flash attention on GPUs); `manual` spells the same math out."""

    def __init__(self, config: GPTConfig, layer: int):
        super().__init__()
        self.layer = layer  # which of the KV cache's layers is this one's
        self.n_head = config.n_head
        self.causal = config.causal
        self.scale = config.attention_scale
        self.use_sdpa = config.attention == "sdpa"
        self.dropout = config.dropout
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.q_norm = nn.RMSNorm(config.head_size, eps=RMS_NORM_EPS) if config.qk_norm else None
        self.k_norm = nn.RMSNorm(config.head_size, eps=RMS_NORM_EPS) if config.qk_norm else None
        self.c_proj = (
            nn.Linear(config.n_embd, config.n_embd, bias=config.bias) if config.attn_proj else nn.Identity()
        )
        self.attn_dropout = nn.Dropout(config.dropout)
        self.resid_dropout = nn.Dropout(config.dropout)
        if not self.use_sdpa:  # which keys each query sees: row t of the mask is position t's
            tril = torch.tril(torch.ones(config.block_size, config.block_size, dtype=torch.bool))
            self.register_buffer(
                "tril", tril.view(1, 1, config.block_size, config.block_size), persistent=False
            )

    def forward(self, x: torch.Tensor, rope: Rope = None, kv_cache: KVCache | None = None) -> torch.Tensor:
        B, T, C = x.size()  # batch, time (sequence length), channels (n_embd)
        q, k, v = self.c_attn(x).split(C, dim=2)
        # (B, T, C) -> (B, n_head, T, head_size): heads become a batch dimension
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        if rope is not None:
            q, k = rotate(q, rope), rotate(k, rope)
        start = 0
        if kv_cache is not None:  # generating: these positions' queries see every position so far
            start = kv_cache.pos
            k, v = kv_cache.insert(self.layer, k, v)
        # Queries at positions start .. start + T - 1 see the keys up to their own position. One
        # new token after cached ones sees them all: no mask. Without a cache, causal stays a plain
        # bool, which torch.compile needs when T is a dynamic size. A chunk after cached positions
        # takes rows start .. start + T - 1 of the causal mask (sdpa's is_causal would align its
        # mask to the top left of the scores, as if the chunk were the first positions).
        causal = self.causal and (kv_cache is None or T > 1)
        if self.use_sdpa:
            mask = None
            if causal and start > 0:  # query i of the chunk sees keys up to start + i
                mask = torch.ones(T, start + T, dtype=torch.bool, device=q.device).tril(start)
            dropout_p = self.dropout if self.training else 0.0
            is_causal = causal and mask is None
            y = F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, dropout_p=dropout_p, is_causal=is_causal, scale=self.scale
            )
        else:
            # scale (sp: head_size**-0.5) so that the scores keep unit variance and softmax
            # stays diffuse at init instead of collapsing onto one token
            att = (q @ k.transpose(-2, -1)) * self.scale  # (B, n_head, T, start + T)
            if causal:
                att = att.masked_fill(~self.tril[:, :, start : start + T, : start + T], float("-inf"))
            att = self.attn_dropout(F.softmax(att, dim=-1))
            y = att @ v  # (B, n_head, T, head_size)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # re-assemble the heads side by side
        return self.resid_dropout(self.c_proj(y))


class Head(nn.Module):
    """One head of self-attention, as the lecture writes it."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        head_size = config.head_size
        self.causal = config.causal
        self.scale = config.attention_scale  # sp: head_size**-0.5
        self.key = nn.Linear(config.n_embd, head_size, bias=config.bias)
        self.query = nn.Linear(config.n_embd, head_size, bias=config.bias)
        self.value = nn.Linear(config.n_embd, head_size, bias=config.bias)
        self.q_norm = nn.RMSNorm(head_size, eps=RMS_NORM_EPS) if config.qk_norm else None
        self.k_norm = nn.RMSNorm(head_size, eps=RMS_NORM_EPS) if config.qk_norm else None
        self.register_buffer(
            "tril", torch.tril(torch.ones(config.block_size, config.block_size)), persistent=False
        )
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, rope: Rope = None) -> torch.Tensor:
        B, T, C = x.shape
        k = self.key(x)  # (B, T, head_size)
        q = self.query(x)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        if rope is not None:
            q, k = rotate(q, rope), rotate(k, rope)
        wei = q @ k.transpose(-2, -1) * self.scale  # (B, T, T) affinities
        if self.causal:
            wei = wei.masked_fill(self.tril[:T, :T] == 0, float("-inf"))
        wei = self.dropout(F.softmax(wei, dim=-1))
        return wei @ self.value(x)  # (B, T, head_size)


class MultiHeadAttention(nn.Module):
    """The lecture's multi-head attention: n_head Head modules side by side, concatenated."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.heads = nn.ModuleList([Head(config) for _ in range(config.n_head)])
        self.proj = (
            nn.Linear(config.n_embd, config.n_embd, bias=config.bias) if config.attn_proj else nn.Identity()
        )
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, rope: Rope = None, kv_cache: KVCache | None = None) -> torch.Tensor:
        # (no KV cache: the GPT generates without one with these heads, and refuses one)
        return self.dropout(self.proj(torch.cat([head(x, rope) for head in self.heads], dim=-1)))


class ReLUSquared(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x).square()


ACTIVATIONS = {
    "gelu": nn.GELU,
    "gelu_tanh": partial(nn.GELU, approximate="tanh"),
    "relu": nn.ReLU,
    "relu2": ReLUSquared,
}


class MLP(nn.Module):
    """The per-token feed-forward network: each position thinks on what it gathered. swiglu
    (Shazeer 2020, Llama) multiplies one projection, through SiLU, with another: c_fc makes both
    in one matmul, the gate first."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.gated = config.mlp == "swiglu"
        hidden = config.mlp_width
        self.c_fc = nn.Linear(config.n_embd, 2 * hidden if self.gated else hidden, bias=config.bias)
        self.act = nn.SiLU() if self.gated else ACTIVATIONS[config.activation]()
        # the lecture's first feed-forward ("single") is one layer and its nonlinearity
        self.c_proj = (
            nn.Linear(hidden, config.n_embd, bias=config.bias) if config.mlp != "single" else nn.Identity()
        )
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gated:
            gate, up = self.c_fc(x).chunk(2, dim=-1)
            return self.dropout(self.c_proj(self.act(gate) * up))
        return self.dropout(self.c_proj(self.act(self.c_fc(x))))


def norm_layer(config: GPTConfig) -> nn.Module:
    if config.norm == "layernorm":
        return nn.LayerNorm(config.n_embd, bias=config.bias)
    if config.norm == "rmsnorm":  # no mean subtracted, no bias: a gain on x / rms(x)
        return nn.RMSNorm(config.n_embd, eps=RMS_NORM_EPS)
    return nn.Identity()


class Block(nn.Module):
    """Communication (attention) then computation (MLP), each pre-normed and residual:

        x ──ln_1──attn──(+)──ln_2──mlp──(+)──>      each sublayer adds to the stream x, so
        └──────────────┘ └──────────────┘           gradients flow straight to the input

    model.residual=false is the lecture's step before: each sublayer replaces x instead."""

    def __init__(self, config: GPTConfig, layer: int):
        super().__init__()
        self.residual = config.residual
        self.ln_1 = norm_layer(config)
        self.attn = (
            MultiHeadAttention(config) if config.attention == "heads" else CausalSelfAttention(config, layer)
        )
        self.ln_2 = norm_layer(config)
        self.mlp = MLP(config) if config.mlp != "none" else None

    def forward(self, x: torch.Tensor, rope: Rope = None, kv_cache: KVCache | None = None) -> torch.Tensor:
        if not self.residual:
            x = self.attn(self.ln_1(x), rope, kv_cache)
            return x if self.mlp is None else self.mlp(self.ln_2(x))
        x = x + self.attn(self.ln_1(x), rope, kv_cache)
        if self.mlp is not None:
            x = x + self.mlp(self.ln_2(x))
        return x


class LanguageModel(nn.Module):
    """What every model here shares: next-token logits from forward(), and sampling."""

    config: GPTConfig

    def forward(
        self, idx: torch.Tensor, targets: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        raise NotImplementedError

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def non_embedding_parameters(self) -> int:
        """The parameters less the embeddings' (token and position), as scaling laws count a
        model's size (Kaplan et al. 2020). An untied lm_head counts; a tied one is the token embedding."""
        embeddings = [m.weight for m in self.modules() if isinstance(m, nn.Embedding)]
        return self.num_parameters() - sum(w.numel() for w in embeddings)

    def training_flops_per_token(self) -> float:
        """FLOPs of a training step (forward and backward) per token, after PaLM's appendix B: 6
        for each weight of a matrix product (2 forward, 4 backward), plus attention's scores and
        weighted values, 12 * n_layer * n_embd * T. Embedding lookups, gains and biases are no
        matrix products: they count nothing (so the bigram, a lookup alone, counts 0)."""
        c = self.config
        matrix_weights = sum(m.weight.numel() for m in self.modules() if isinstance(m, nn.Linear))
        attention = 12 * c.n_layer * c.n_embd * c.block_size if c.arch == "gpt" else 0
        return 6 * matrix_weights + attention

    @staticmethod
    def loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1))

    def generate(
        self,
        idx: torch.Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        use_cache: bool = True,
    ) -> torch.Tensor:
        """Extend idx (B, T) by max_new_tokens sampled tokens, feeding each one back in."""
        return torch.cat([idx, *self.stream(idx, max_new_tokens, temperature, top_k, use_cache)], dim=1)

    @torch.inference_mode()  # no autograd bookkeeping at all (no_grad still tracks versions)
    def stream(
        self,
        idx: torch.Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        use_cache: bool = True,
    ) -> Iterator[torch.Tensor]:
        """Yields the sampled tokens (B, 1) one by one; without a KV cache, each one costs a
        forward pass over the whole (cropped) context."""
        for _ in range(max_new_tokens):
            # the model has position embeddings for block_size positions only: crop the context
            logits, _ = self(idx[:, -self.config.block_size :])
            idx_next = sample_next(logits[:, -1, :], temperature, top_k)
            idx = torch.cat((idx, idx_next), dim=1)
            yield idx_next


def sample_next(logits: torch.Tensor, temperature: float, top_k: int | None) -> torch.Tensor:
    """One token per row from the last position's logits (B, vocab_size)."""
    logits = logits.float() / temperature  # probabilities in float32, whatever the weights are in
    if not torch.isfinite(logits).all():
        raise SettingError("the model's logits are not finite numbers (nan or inf): its weights are not")
    if top_k is not None and top_k < logits.size(-1):  # else every token stays a candidate
        kth_largest = torch.topk(logits, top_k).values[:, [-1]]
        logits = logits.masked_fill(logits < kth_largest, -float("inf"))
    return torch.multinomial(F.softmax(logits, dim=-1), num_samples=1)  # (B, 1)


class GPT(LanguageModel):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(dict(wte=nn.Embedding(config.vocab_size, config.n_embd)))  # tokens
        if config.position == "learned":
            self.transformer.wpe = nn.Embedding(config.block_size, config.n_embd)  # position embedding
        self.transformer.drop = nn.Dropout(config.dropout)
        self.transformer.h = nn.ModuleList([Block(config, layer) for layer in range(config.n_layer)])
        self.transformer.ln_f = norm_layer(config)
        self.rotary = Rotary(config) if config.position == "rope" else None
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        if config.tie_weights:
            self.transformer.wte.weight = self.lm_head.weight  # one (vocab_size, n_embd) matrix

        if config.init == "gpt2":
            self.apply(self._init_weights)
            # scale the init of the projections into the residual stream, which add up once
            # per layer, by 1/sqrt(2 * n_layer)
            for name, param in self.named_parameters():
                if name.endswith("proj.weight"):
                    nn.init.normal_(param, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))
            if config.parametrization == "mup":  # hidden matrices: init std times m^-1/2
                with torch.no_grad():
                    for param in self.hidden_matrices():
                        param.mul_(config.width_multiplier**-0.5)

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def hidden_matrices(self) -> list[nn.Parameter]:
        """The matrices muP scales with the width: every one inside the blocks (n_embd wide on
        both sides), not the embeddings (a vocabulary or positions in) nor lm_head (a vocabulary out)."""
        return [p for p in self.transformer.h.parameters() if p.dim() == 2]

    def forward(
        self, idx: torch.Tensor, targets: torch.Tensor | None = None, kv_cache: KVCache | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """With kv_cache, idx (B, T) holds the positions after those cached, which it then caches too."""
        B, T = idx.size()
        start = 0 if kv_cache is None else kv_cache.pos
        if start + T > self.config.block_size:
            raise SettingError(
                f"sequence of length {start + T} is longer than block_size {self.config.block_size}"
            )
        if kv_cache is not None and not self.caches_keys_and_values:
            raise SettingError("this model has no KV cache (attention='heads', or causal=false)")
        x = self.transformer.wte(idx)  # (B, T, C)
        rope = None
        if self.rotary is None:
            x = x + self.transformer.wpe(torch.arange(start, start + T, dtype=torch.long, device=idx.device))
        else:  # the positions go into each layer's q and k instead
            rope = self.rotary(start, T)
        x = self.transformer.drop(x)
        for block in self.transformer.h:
            x = block(x, rope, kv_cache)
        if kv_cache is not None:
            kv_cache.pos += T
        logits = self.lm_head(self.transformer.ln_f(x))  # (B, T, vocab_size)
        if self.config.parametrization == "mup":
            logits = logits / self.config.width_multiplier  # the readout shrinks as 1/m
        if (cap := self.config.logit_softcap) is not None:  # smoothly bounded to (-cap, cap), in float32
            logits = cap * torch.tanh(logits.float() / cap)
        return logits, None if targets is None else self.loss(logits, targets)

    @property
    def caches_keys_and_values(self) -> bool:
        """Only a causal model's keys and values stay the same as tokens are added after them."""
        return self.config.causal and self.config.attention != "heads"

    @torch.inference_mode()
    def stream(
        self,
        idx: torch.Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        use_cache: bool = True,
    ) -> Iterator[torch.Tensor]:
        """With the KV cache, each new token runs the model on that token alone, attending to
        the keys and values cached for the positions before it. Past block_size, every new token
        recomputes the cropped window, exactly as generation without a cache does: learned
        absolute positions cannot slide inside a full cache (rotary ones could, but then the
        tokens would part from uncached generation's)."""
        if not (use_cache and self.caches_keys_and_values):
            yield from super().stream(idx, max_new_tokens, temperature, top_k)
            return
        B, T = idx.shape
        # the context and every token sampled, written in place: no copy of a growing context per token
        tokens = idx.new_empty((B, T + max_new_tokens))
        tokens[:, :T] = idx
        end = T  # tokens[:, :end] are known
        kv_cache = KVCache(self.config, B, idx.device, self.transformer.wte.weight.dtype)
        for _ in range(max_new_tokens):
            if kv_cache.pos in (0, self.config.block_size):  # fill the cache from the (cropped) context
                kv_cache.pos = 0
                logits, _ = self(tokens[:, max(0, end - self.config.block_size) : end], kv_cache=kv_cache)
            else:
                logits, _ = self(tokens[:, end - 1 : end], kv_cache=kv_cache)
            idx_next = sample_next(logits[:, -1, :], temperature, top_k)
            tokens[:, end : end + 1] = idx_next
            end += 1
            yield idx_next


class BigramLanguageModel(LanguageModel):
    """The lecture's baseline: the next character's logits are read off a table, row = this
    character. No context beyond one token, so nothing to attend to."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.token_embedding_table = nn.Embedding(config.vocab_size, config.vocab_size)

    def forward(
        self, idx: torch.Tensor, targets: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        logits = self.token_embedding_table(idx)  # (B, T, vocab_size)
        return logits, None if targets is None else self.loss(logits, targets)


def use_decoding_layout(model: nn.Module) -> nn.Module:
    """Stores every linear layer's weight input-major, its transpose contiguous: the same values
    and shapes, another memory order. Generating with the KV cache multiplies one vector by each
    weight matrix a token, and a CPU streams a matrix faster in this order than in nn.Linear's
    own; the products, and so the samples, stay the same. For generating, not training."""
    for module in model.modules():
        if isinstance(module, nn.Linear):
            module.weight.data = module.weight.data.t().contiguous().t()
    return model


def create_model(config: GPTConfig) -> LanguageModel:
    return BigramLanguageModel(config) if config.arch == "bigram" else GPT(config)
