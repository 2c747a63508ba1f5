"""The lecture's attention math, and three implementations of one attention."""

import pytest
import torch
from torch import nn

from gptlab.attention_math import (
    attention_scores,
    average_past_loop,
    average_past_matmul,
    average_past_softmax,
    batched_to_heads,
    self_attention,
)
from gptlab.model import GPT, GPTConfig


def test_three_ways_to_average_the_past_agree() -> None:
    torch.manual_seed(1337)
    x = torch.randn(4, 8, 2)
    v1 = average_past_loop(x)
    assert torch.allclose(v1[:, 0], x[:, 0]) and torch.allclose(v1[:, -1], x.mean(dim=1))
    assert torch.allclose(v1, average_past_matmul(x), atol=1e-6)
    assert torch.allclose(v1, average_past_softmax(x), atol=1e-6)


def head(C: int = 32, head_size: int = 16) -> tuple[nn.Linear, nn.Linear, nn.Linear]:
    torch.manual_seed(0)
    return nn.Linear(C, head_size, bias=False), nn.Linear(C, head_size, bias=False), nn.Linear(C, head_size)


def test_causal_self_attention_never_looks_ahead() -> None:
    key, query, value = head()
    x = torch.randn(2, 8, 32)
    changed = x.clone()
    changed[:, 5:] = torch.randn(2, 3, 32)  # a different future from t=5 on
    out, out_changed = self_attention(x, key, query, value), self_attention(changed, key, query, value)
    torch.testing.assert_close(out[:, :5], out_changed[:, :5])
    assert not torch.allclose(out[:, 5:], out_changed[:, 5:])
    # an encoder block (no mask) lets every position see the changed future
    enc, enc_changed = (self_attention(t, key, query, value, causal=False) for t in (x, changed))
    assert not torch.allclose(enc[:, :5], enc_changed[:, :5])


def test_scaling_keeps_unit_variance() -> None:
    torch.manual_seed(0)
    head_size = 64
    q, k = torch.randn(8, 256, head_size), torch.randn(8, 256, head_size)
    assert attention_scores(q, k, scaled=True).var().item() == pytest.approx(1.0, rel=0.1)
    assert attention_scores(q, k, scaled=False).var().item() == pytest.approx(head_size, rel=0.1)
    # the scale follows head_size, not n_embd: project n_embd=256 features to heads of 16
    n_embd, head_size = 256, 16
    x = torch.randn(8, 64, n_embd)
    to_head = torch.randn(n_embd, head_size) * n_embd**-0.5  # keeps unit variance
    scores = attention_scores(x @ to_head, torch.randn(8, 64, n_embd) @ to_head)
    assert scores.var().item() == pytest.approx(1.0, rel=0.15)  # a n_embd**-0.5 scale would give 1/16


def config(attention: str, **fields) -> GPTConfig:
    return GPTConfig(
        block_size=16, vocab_size=65, n_layer=2, n_head=4, n_embd=32, attention=attention, **fields
    )


def same_model_three_ways(**fields) -> dict[str, GPT]:
    torch.manual_seed(0)
    sdpa = GPT(config("sdpa", **fields))
    manual = GPT(config("manual", **fields))
    manual.load_state_dict(sdpa.state_dict())
    heads = GPT(config("heads", **fields))
    heads.load_state_dict(batched_to_heads(sdpa.state_dict(), n_head=4))
    return {"sdpa": sdpa, "manual": manual, "heads": heads}


@pytest.mark.parametrize("train_mode", [True, False])
@pytest.mark.parametrize("causal", [True, False])
def test_three_attention_implementations_give_the_same_logits_and_gradients(train_mode, causal) -> None:
    models = same_model_three_ways(causal=causal)
    idx, targets = torch.randint(65, (3, 16)), torch.randint(65, (3, 16))
    logits, grads = {}, {}
    for name, model in models.items():
        model.train(train_mode)
        logits[name], loss = model(idx, targets)
        loss.backward()
        grads[name] = {n: p.grad for n, p in model.named_parameters()}
    heads_grads_from_sdpa = batched_to_heads(grads["sdpa"], n_head=4)
    for name in ("manual", "heads"):
        torch.testing.assert_close(logits[name], logits["sdpa"], atol=1e-5, rtol=1e-5)
    for n, g in grads["manual"].items():
        torch.testing.assert_close(g, grads["sdpa"][n], atol=1e-5, rtol=1e-5)
    for n, g in grads["heads"].items():
        torch.testing.assert_close(g, heads_grads_from_sdpa[n], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("attention", ["sdpa", "manual", "heads"])
def test_no_communication_across_the_batch(attention: str) -> None:
    model = same_model_three_ways()[attention].eval()
    idx = torch.randint(65, (4, 16))
    changed = idx.clone()
    changed[2] = torch.randint(65, (16,))
    logits, changed_logits = model(idx)[0], model(changed)[0]
    keep = [0, 1, 3]
    torch.testing.assert_close(logits[keep], changed_logits[keep])
    assert not torch.allclose(logits[2], changed_logits[2])


@pytest.mark.parametrize("attention", ["sdpa", "manual", "heads"])
def test_encoder_blocks_see_the_future(attention: str) -> None:
    model = same_model_three_ways(causal=False)[attention].eval()
    idx = torch.randint(65, (2, 16))
    changed = idx.clone()
    changed[:, 10:] = (changed[:, 10:] + 1) % 65
    assert not torch.allclose(model(idx)[0][:, :10], model(changed)[0][:, :10])


@pytest.mark.parametrize(
    "fields",
    [
        {"residual": False},
        {"norm": "none"},
        {"mlp": "single", "activation": "relu"},
        {"mlp": "none", "attn_proj": False},
        {"dropout": 0.1},
    ],
)
def test_ladder_switches_compose_with_every_attention(fields: dict) -> None:
    models = same_model_three_ways(**fields)
    idx = torch.randint(65, (2, 16))
    outputs = [model.eval()(idx)[0] for model in models.values()]
    for out in outputs[1:]:
        torch.testing.assert_close(out, outputs[0], atol=1e-5, rtol=1e-5)
