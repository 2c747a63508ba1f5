"""The mathematical trick in self-attention, the way the lecture derives it.

Each token should see a summary of the tokens before it, never of those after. The simplest
summary is the average of x[b, :t+1]; it can be computed three ways, from slow and obvious to
the form self-attention uses (v1 to v3). Self-attention (v4) keeps the v3 form but lets the
weights depend on the data: each token emits a query ("what am I looking for") and a key
("what do I contain"), and their dot products, scaled, masked and softmaxed, are the weights.

These functions are for learning and for the tests that prove the facts; the model's own
attention lives in gptlab.model, where its three implementations compute one math:
batched_to_heads maps the batched weights onto the lecture's Head modules.
"""

import torch
from torch import nn
from torch.nn import functional as F


def average_past_loop(x: torch.Tensor) -> torch.Tensor:
    """v1: for every batch b and time t, the mean of x[b, :t+1], with two explicit loops."""
    B, T, C = x.shape
    out = torch.zeros_like(x)
    for b in range(B):
        for t in range(T):
            out[b, t] = x[b, : t + 1].mean(dim=0)
    return out


def average_past_matmul(x: torch.Tensor) -> torch.Tensor:
    """v2: one batched matmul with a lower-triangular matrix whose rows sum to one."""
    T = x.shape[1]
    weights = torch.tril(torch.ones(T, T))
    weights = weights / weights.sum(dim=1, keepdim=True)
    return weights @ x  # (T, T) @ (B, T, C) -> (B, T, C)


def average_past_softmax(x: torch.Tensor) -> torch.Tensor:
    """v3: start from zero affinities, forbid the future with -inf, softmax each row.
    Softmax of equal scores is the same uniform average; attention replaces the zeros."""
    T = x.shape[1]
    affinities = torch.zeros(T, T).masked_fill(torch.tril(torch.ones(T, T)) == 0, float("-inf"))
    return F.softmax(affinities, dim=-1) @ x


def attention_scores(q: torch.Tensor, k: torch.Tensor, scaled: bool = True) -> torch.Tensor:
    """q k^T, optionally times head_size**-0.5. With unit-variance q and k the raw scores have
    variance head_size; scaling brings it back to 1, so softmax does not saturate at init.
    head_size is the last dimension of q and k, not n_embd."""
    scores = q @ k.transpose(-2, -1)
    return scores * k.size(-1) ** -0.5 if scaled else scores


def self_attention(
    x: torch.Tensor, key: nn.Linear, query: nn.Linear, value: nn.Linear, causal: bool = True
) -> torch.Tensor:
    """v4: one head of self-attention over x (B, T, C). With causal=False every token also
    sees the tokens after it, as in an encoder block (note 4 of the lecture)."""
    T = x.shape[1]
    weights = attention_scores(query(x), key(x))  # (B, T, T)
    if causal:
        weights = weights.masked_fill(torch.tril(torch.ones(T, T)) == 0, float("-inf"))
    return F.softmax(weights, dim=-1) @ value(x)  # (B, T, head_size)


def batched_to_heads(state_dict: dict[str, torch.Tensor], n_head: int) -> dict[str, torch.Tensor]:
    """The weights of a GPT with batched attention (sdpa or manual) as the same GPT with
    attention="heads". c_attn stacks [q; k; v] by rows, each n_embd rows of n_head blocks of
    head_size rows: head h's query is rows h*hs:(h+1)*hs of the q part, and so on. The q and k
    norms (qk_norm), which the batched attention shares across heads, become each head's own.
    Works on gradients too, which share the parameters' shapes (but for those norms' gains)."""
    converted = {}
    for name, tensor in state_dict.items():
        if ".attn.c_attn." in name:
            prefix, kind = name.split(".c_attn.")  # kind: weight or bias
            for part, per_head in zip(("query", "key", "value"), tensor.chunk(3), strict=True):
                for h, head_tensor in enumerate(per_head.chunk(n_head)):
                    converted[f"{prefix}.heads.{h}.{part}.{kind}"] = head_tensor
        elif ".attn.q_norm." in name or ".attn.k_norm." in name:
            prefix, norm = name.split(".attn.")
            for h in range(n_head):
                converted[f"{prefix}.attn.heads.{h}.{norm}"] = tensor
        else:
            converted[name.replace(".attn.c_proj.", ".attn.proj.")] = tensor
    return converted
