"""A character-level GPT in plain PyTorch, read top to bottom.

The model of Karpathy's lecture "Let's build GPT", written the way nanoGPT writes it:
token and learned position embeddings, a stack of pre-LayerNorm Transformer blocks
(causal multi-head self-attention, then a 4x MLP, each inside a residual connection),
a final LayerNorm and a linear head over the vocabulary. The bigram baseline the
lecture starts from sits at the end, with the same interface.

No Lightning, Hydra or data code here: the model only knows tensors.
"""

import math
from collections.abc import Iterator
from dataclasses import dataclass, fields
from typing import Literal, get_args, get_origin

import torch
import torch.nn as nn
from torch.nn import functional as F


def is_number(value: object) -> bool:
    """An int or a float: not a bool (which Python counts as an int), not a string."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class GPTConfig:
    arch: Literal["gpt", "bigram"] = "gpt"
    block_size: int = 64  # longest context the model sees, in characters
    vocab_size: int = 65  # set from the tokenizer at train time; 65 is Tiny Shakespeare's
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 192
    dropout: float = 0.0
    # The lecture builds the GPT up step by step; these switch the steps on and off. The
    # defaults give the standard GPT.
    attention: Literal["sdpa", "manual", "heads"] = "sdpa"  # one math, three implementations
    causal: bool = True  # False: every token sees the whole block (an encoder, not a decoder)
    attn_proj: bool = True  # a linear projection after the heads are concatenated
    mlp: Literal["gpt", "single", "none"] = "gpt"  # gpt: C -> 4C -> C; single: one C -> C layer
    activation: Literal["gelu", "relu"] = "gelu"
    residual: bool = True  # blocks add to the residual stream instead of replacing it
    norm: Literal["layernorm", "none"] = "layernorm"  # pre-norm in each block and before lm_head
    init: Literal["gpt2", "pytorch"] = "gpt2"  # pytorch: each layer's default init (lecture, early steps)
    # nanoGPT's options, for checkpoints converted from it
    bias: bool = True  # biases in the linear layers and LayerNorms (lm_head never has one)
    tie_weights: bool = False  # lm_head shares the token embedding's weights (GPT-2, nanoGPT)

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if get_origin(f.type) is Literal and value not in get_args(f.type):
                raise ValueError(
                    f"model.{f.name}={value!r} is not allowed: use one of {list(get_args(f.type))}"
                )
            if f.type is bool and not isinstance(value, bool):
                raise ValueError(f"model.{f.name}={value!r} is not allowed: use true or false")
            if f.type is int and (not is_count(value) or value < 1):
                raise ValueError(f"model.{f.name}={value!r} is not allowed: use a positive integer")
        if self.n_embd % self.n_head:
            divisors = [h for h in range(1, self.n_embd + 1) if self.n_embd % h == 0]
            raise ValueError(
                f"model.n_embd={self.n_embd} is not divisible by model.n_head={self.n_head}: "
                f"with n_embd={self.n_embd} use n_head in {divisors}"
            )
        if not is_number(self.dropout) or not 0 <= self.dropout < 1:
            raise ValueError(
                f"model.dropout={self.dropout!r} is not allowed: use a number with 0 <= dropout < 1"
            )


class CausalSelfAttention(nn.Module):
    """nanoGPT's batched attention: q, k and v of all heads come out of one matmul and the
    heads become a batch dimension. `sdpa` hands the core to F.scaled_dot_product_attention
    (fused kernels, flash attention on GPUs); `manual` spells the same math out."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.n_head = config.n_head
        self.causal = config.causal
        self.use_sdpa = config.attention == "sdpa"
        self.dropout = config.dropout
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = (
            nn.Linear(config.n_embd, config.n_embd, bias=config.bias) if config.attn_proj else nn.Identity()
        )
        self.attn_dropout = nn.Dropout(config.dropout)
        self.resid_dropout = nn.Dropout(config.dropout)
        self.kv_cache: tuple[torch.Tensor, torch.Tensor] | None = None  # only while generating
        if not self.use_sdpa:
            tril = torch.tril(torch.ones(config.block_size, config.block_size, dtype=torch.bool))
            self.register_buffer(
                "tril", tril.view(1, 1, config.block_size, config.block_size), persistent=False
            )

    def forward(self, x: torch.Tensor, cache_pos: int | None = None) -> torch.Tensor:
        B, T, C = x.size()  # batch, time (sequence length), channels (n_embd)
        q, k, v = self.c_attn(x).split(C, dim=2)
        # (B, T, C) -> (B, n_head, T, head_size): heads become a batch dimension
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        if cache_pos is not None:  # generating: remember k, v of these positions
            k_cache, v_cache = self.kv_cache
            k_cache[:, :, cache_pos : cache_pos + T] = k
            v_cache[:, :, cache_pos : cache_pos + T] = v
            if T == 1:  # one new token attends to every position so far: nothing to mask
                k, v = k_cache[:, :, : cache_pos + 1], v_cache[:, :, : cache_pos + 1]
        causal = self.causal and T > 1
        if self.use_sdpa:  # its default scale is head_size**-0.5, as below
            dropout_p = self.dropout if self.training else 0.0
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=causal)
        else:
            # scale by head_size**-0.5 so that the scores keep unit variance and softmax
            # stays diffuse at init instead of collapsing onto one token
            att = (q @ k.transpose(-2, -1)) * k.size(-1) ** -0.5  # (B, n_head, T, T)
            if causal:
                att = att.masked_fill(~self.tril[:, :, :T, :T], float("-inf"))
            att = self.attn_dropout(F.softmax(att, dim=-1))
            y = att @ v  # (B, n_head, T, head_size)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # re-assemble the heads side by side
        return self.resid_dropout(self.c_proj(y))


class Head(nn.Module):
    """One head of self-attention, as the lecture writes it."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        head_size = config.n_embd // config.n_head
        self.causal = config.causal
        self.key = nn.Linear(config.n_embd, head_size, bias=config.bias)
        self.query = nn.Linear(config.n_embd, head_size, bias=config.bias)
        self.value = nn.Linear(config.n_embd, head_size, bias=config.bias)
        self.register_buffer(
            "tril", torch.tril(torch.ones(config.block_size, config.block_size)), persistent=False
        )
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        k = self.key(x)  # (B, T, head_size)
        q = self.query(x)
        wei = q @ k.transpose(-2, -1) * k.size(-1) ** -0.5  # (B, T, T) affinities
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

    def forward(self, x: torch.Tensor, cache_pos: int | None = None) -> torch.Tensor:
        if cache_pos is not None:
            raise ValueError("attention='heads' has no KV cache: generate with use_cache=False")
        return self.dropout(self.proj(torch.cat([head(x) for head in self.heads], dim=-1)))


class MLP(nn.Module):
    """The per-token feed-forward network: each position thinks on what it gathered."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        hidden = 4 * config.n_embd if config.mlp == "gpt" else config.n_embd
        self.c_fc = nn.Linear(config.n_embd, hidden, bias=config.bias)
        self.act = nn.GELU() if config.activation == "gelu" else nn.ReLU()
        # the lecture's first feed-forward ("single") is one layer and its nonlinearity
        self.c_proj = (
            nn.Linear(hidden, config.n_embd, bias=config.bias) if config.mlp == "gpt" else nn.Identity()
        )
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(self.act(self.c_fc(x))))


def norm_layer(config: GPTConfig) -> nn.Module:
    return nn.LayerNorm(config.n_embd, bias=config.bias) if config.norm == "layernorm" else nn.Identity()


class Block(nn.Module):
    """Communication (attention) then computation (MLP), each pre-normed and residual."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.residual = config.residual
        self.ln_1 = norm_layer(config)
        self.attn = MultiHeadAttention(config) if config.attention == "heads" else CausalSelfAttention(config)
        self.ln_2 = norm_layer(config)
        self.mlp = MLP(config) if config.mlp != "none" else None

    def forward(self, x: torch.Tensor, cache_pos: int | None = None) -> torch.Tensor:
        x = self.connect(x, self.attn(self.ln_1(x), cache_pos))
        if self.mlp is not None:
            x = self.connect(x, self.mlp(self.ln_2(x)))
        return x

    def connect(self, x: torch.Tensor, update: torch.Tensor) -> torch.Tensor:
        # a residual connection adds to the stream, so gradients flow straight to the input
        return x + update if self.residual else update


class LanguageModel(nn.Module):
    """What every model here shares: next-token logits from forward(), and sampling."""

    config: GPTConfig

    def forward(
        self, idx: torch.Tensor, targets: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        raise NotImplementedError

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def training_flops_per_token(self) -> float:
        """FLOPs of a training step (forward and backward) per token, as nanoGPT (after PaLM,
        appendix B) counts them: 6 per parameter, plus attention's 12 * n_layer * n_embd * T."""
        c = self.config
        attention = 12 * c.n_layer * c.n_embd * c.block_size if c.arch == "gpt" else 0
        return 6 * self.num_parameters() + attention

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
    if top_k is not None and top_k < logits.size(-1):  # else every token stays a candidate
        kth_largest = torch.topk(logits, top_k).values[:, [-1]]
        logits = logits.masked_fill(logits < kth_largest, -float("inf"))
    return torch.multinomial(F.softmax(logits, dim=-1), num_samples=1)  # (B, 1)


class GPT(LanguageModel):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(
            dict(
                wte=nn.Embedding(config.vocab_size, config.n_embd),  # token embedding
                wpe=nn.Embedding(config.block_size, config.n_embd),  # position embedding
                drop=nn.Dropout(config.dropout),
                h=nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
                ln_f=norm_layer(config),
            )
        )
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

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def forward(
        self, idx: torch.Tensor, targets: torch.Tensor | None = None, cache_pos: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """cache_pos: generating with the KV cache, idx holds positions cache_pos, cache_pos+1, ..."""
        B, T = idx.size()
        start = cache_pos or 0
        if start + T > self.config.block_size:
            raise ValueError(
                f"sequence of length {start + T} is longer than block_size {self.config.block_size}"
            )
        pos = torch.arange(start, start + T, dtype=torch.long, device=idx.device)
        x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(pos))  # (B, T, C)
        for block in self.transformer.h:
            x = block(x, cache_pos)
        logits = self.lm_head(self.transformer.ln_f(x))  # (B, T, vocab_size)
        return logits, None if targets is None else self.loss(logits, targets)

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
        the keys and values cached for the positions before it. Learned absolute positions
        cannot slide inside a full cache: past block_size, every new token recomputes the
        cropped window, exactly as generation without a cache does."""
        if not (use_cache and self.config.causal and self.config.attention != "heads"):
            yield from super().stream(idx, max_new_tokens, temperature, top_k)
            return
        block_size = self.config.block_size
        B, T = idx.shape
        # the context and every token sampled, written in place: no copy of a growing context per token
        tokens = idx.new_empty((B, T + max_new_tokens))
        tokens[:, :T] = idx
        end = T  # tokens[:, :end] are known
        cache_shape = (B, self.config.n_head, block_size, self.config.n_embd // self.config.n_head)
        dtype = self.transformer.wte.weight.dtype
        for block in self.transformer.h:
            block.attn.kv_cache = (
                idx.new_zeros(cache_shape, dtype=dtype),
                idx.new_zeros(cache_shape, dtype=dtype),
            )
        try:
            cached = 0  # positions whose keys and values are in the cache
            for _ in range(max_new_tokens):
                if cached in (0, block_size):  # fill the cache from the (cropped) context
                    window = tokens[:, max(0, end - block_size) : end]
                    logits, _ = self(window, cache_pos=0)
                    cached = window.size(1)
                else:
                    logits, _ = self(tokens[:, end - 1 : end], cache_pos=cached)
                    cached += 1
                idx_next = sample_next(logits[:, -1, :], temperature, top_k)
                tokens[:, end : end + 1] = idx_next
                end += 1
                yield idx_next
        finally:
            for block in self.transformer.h:
                block.attn.kv_cache = None


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


def batched_to_heads(state_dict: dict[str, torch.Tensor], n_head: int) -> dict[str, torch.Tensor]:
    """The weights of a GPT with batched attention (sdpa or manual) as the same GPT with
    attention="heads". c_attn stacks [q; k; v] by rows, each n_embd rows of n_head blocks of
    head_size rows: head h's query is rows h*hs:(h+1)*hs of the q part, and so on. Works on
    gradients too, which share the parameters' shapes."""
    converted = {}
    for name, tensor in state_dict.items():
        if ".attn.c_attn." in name:
            prefix, kind = name.split(".c_attn.")  # kind: weight or bias
            for part, per_head in zip(("query", "key", "value"), tensor.chunk(3), strict=True):
                for h, head_tensor in enumerate(per_head.chunk(n_head)):
                    converted[f"{prefix}.heads.{h}.{part}.{kind}"] = head_tensor
        else:
            converted[name.replace(".attn.c_proj.", ".attn.proj.")] = tensor
    return converted
