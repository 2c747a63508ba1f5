"""Today's switches of the GPT (rotary positions, RMSNorm, QK-norm, ReLU², SwiGLU, soft-capped
logits): each changes the forward and computes what it says, and each composes with the others,
with all three attention implementations, the KV cache (chunked prefill included) and compile."""

import pytest
import torch
from torch.nn import functional as F

from gptlab.attention_math import batched_to_heads
from gptlab.model import GPT, GPTConfig, KVCache, Rotary, rotate

SMALL = dict(block_size=16, vocab_size=65, n_layer=2, n_head=4, n_embd=32)
SWITCHES = {
    "rope": {"position": "rope"},
    "rmsnorm": {"norm": "rmsnorm"},
    "qk_norm": {"qk_norm": True},
    "relu2": {"activation": "relu2"},
    "swiglu": {"mlp": "swiglu"},
    "softcap": {"logit_softcap": 2.0},
}
ALL = {k: v for switch in SWITCHES.values() for k, v in switch.items()} | {"bias": False}


def trained_a_little(model: GPT) -> GPT:
    """Gains and biases away from their 1 and 0 at init (where a norm's gain changes nothing)."""
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.dim() == 1:
                param.add_(torch.randn_like(param) * 0.3)
            elif "proj" in name:
                param.mul_(10)  # projections into the stream out of their tiny init
    return model


# (swiglu's MLP has other shapes: test_swiglu_width_and_gate computes it)
@pytest.mark.parametrize("switch", [switch for switch in SWITCHES if switch != "swiglu"])
def test_each_switch_changes_the_forward(switch: str) -> None:
    torch.manual_seed(0)
    plain = trained_a_little(GPT(GPTConfig(**SMALL)))
    switched = GPT(GPTConfig(**SMALL, **SWITCHES[switch]))
    # every weight the two share, the same: the switch alone tells them apart
    shared = {k: v for k, v in plain.state_dict().items() if k in switched.state_dict()}
    switched.load_state_dict(shared, strict=False)
    idx = torch.randint(65, (2, 16))
    assert not torch.allclose(plain.eval()(idx)[0], switched.eval()(idx)[0], atol=1e-3)


def test_rotary_scores_depend_on_the_distance_alone() -> None:
    rotary = Rotary(GPTConfig(**SMALL | {"block_size": 64}))
    q, k = torch.randn(8), torch.randn(8 * 4).view(4, 8)[0]
    score = {}
    for i, j in [(3, 1), (13, 11), (40, 38), (5, 1)]:
        rq, rk = rotate(q.expand(64, 8), rotary(0, 64))[i], rotate(k.expand(64, 8), rotary(0, 64))[j]
        score[(i, j)] = rq @ rk
    torch.testing.assert_close(score[(13, 11)], score[(3, 1)])
    torch.testing.assert_close(score[(40, 38)], score[(3, 1)])
    assert not torch.allclose(score[(5, 1)], score[(3, 1)])  # another distance, another score
    # position 0 is not turned; the rotation keeps each vector's length
    torch.testing.assert_close(rotate(q.expand(64, 8), rotary(0, 64))[0], q)
    torch.testing.assert_close(rotate(q.expand(64, 8), rotary(0, 64)).norm(dim=-1), q.norm().expand(64))


def test_rope_has_no_position_table_and_sees_order() -> None:
    torch.manual_seed(0)
    model = GPT(GPTConfig(**SMALL, position="rope")).eval()
    assert "transformer.wpe.weight" not in model.state_dict()
    idx = torch.randint(65, (1, 16))
    swapped = idx.clone()
    swapped[0, [3, 4]] = idx[0, [4, 3]]
    # the same tokens in another order: the last position's prediction changes
    assert not torch.allclose(model(idx)[0][0, -1], model(swapped)[0][0, -1])


def test_rmsnorm_is_torchs() -> None:
    torch.manual_seed(0)
    model = trained_a_little(GPT(GPTConfig(**SMALL, norm="rmsnorm", qk_norm=True)))
    x = torch.randn(2, 5, 32)
    ln = model.transformer.h[0].ln_1
    torch.testing.assert_close(ln(x), F.rms_norm(x, (32,), ln.weight, eps=1e-6))
    q_norm = model.transformer.h[0].attn.q_norm
    q = torch.randn(2, 4, 5, 8)
    torch.testing.assert_close(q_norm(q), F.rms_norm(q, (8,), q_norm.weight, eps=1e-6))


def test_swiglu_width_and_gate() -> None:
    assert GPTConfig(n_embd=96, mlp="swiglu").mlp_width == 256  # 8/3 of 96
    assert GPTConfig(n_embd=128, n_head=4, mlp="swiglu").mlp_width == 344  # 341.3, up to a multiple of 8
    assert GPTConfig(n_embd=96, mlp="swiglu", mlp_hidden=100).mlp_width == 100
    assert GPTConfig(n_embd=96).mlp_width == 384
    torch.manual_seed(0)
    mlp = GPT(GPTConfig(**SMALL, mlp="swiglu")).transformer.h[0].mlp
    x = torch.randn(3, 32)
    gate, up = (
        x @ mlp.c_fc.weight[:88].T + mlp.c_fc.bias[:88],
        x @ mlp.c_fc.weight[88:].T + mlp.c_fc.bias[88:],
    )
    torch.testing.assert_close(mlp(x), mlp.c_proj(F.silu(gate) * up))


def test_relu2_and_softcap_compute_what_they_say() -> None:
    torch.manual_seed(0)
    mlp = GPT(GPTConfig(**SMALL, activation="relu2")).transformer.h[0].mlp
    x = torch.randn(3, 32)
    torch.testing.assert_close(mlp(x), mlp.c_proj(F.relu(mlp.c_fc(x)) ** 2))
    capped = trained_a_little(GPT(GPTConfig(**SMALL, logit_softcap=2.0))).eval()
    plain = GPT(GPTConfig(**SMALL))
    plain.load_state_dict(capped.state_dict())
    idx = torch.randint(65, (2, 16))
    logits = capped(idx)[0]
    torch.testing.assert_close(logits, 2.0 * torch.tanh(plain.eval()(idx)[0] / 2.0))
    assert logits.abs().max() < 2.0


def same_model_three_ways(**fields) -> dict[str, GPT]:
    torch.manual_seed(0)
    sdpa = trained_a_little(GPT(GPTConfig(**SMALL, attention="sdpa", **fields)))
    manual = GPT(GPTConfig(**SMALL, attention="manual", **fields))
    manual.load_state_dict(sdpa.state_dict())
    heads = GPT(GPTConfig(**SMALL, attention="heads", **fields))
    heads.load_state_dict(batched_to_heads(sdpa.state_dict(), n_head=4))
    return {"sdpa": sdpa, "manual": manual, "heads": heads}


@pytest.mark.parametrize("fields", [*SWITCHES.values(), ALL], ids=[*SWITCHES, "all"])
def test_switches_compose_with_every_attention(fields: dict) -> None:
    models = same_model_three_ways(**fields)
    idx = torch.randint(65, (2, 16))
    outputs = [model.eval()(idx)[0] for model in models.values()]
    for out in outputs[1:]:
        torch.testing.assert_close(out, outputs[0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("attention", ["sdpa", "manual"])
@pytest.mark.parametrize("fields", [{}, *SWITCHES.values(), ALL], ids=["gpt", *SWITCHES, "all"])
def test_the_kv_cache_generates_the_same_tokens_under_every_switch(attention: str, fields: dict) -> None:
    torch.manual_seed(0)
    model = trained_a_little(GPT(GPTConfig(**SMALL, attention=attention, **fields))).eval()
    prompt = torch.randint(65, (3, 3))
    runs = {}
    for use_cache in (True, False):
        torch.manual_seed(42)  # 30 new tokens: past block_size (16), where the cache refills
        runs[use_cache] = model.generate(prompt, 30, temperature=0.8, top_k=20, use_cache=use_cache)
    assert torch.equal(runs[True], runs[False])


@pytest.mark.parametrize("attention", ["sdpa", "manual"])
@pytest.mark.parametrize("fields", [{}, ALL], ids=["gpt", "all"])
def test_chunks_after_a_cached_prefix_see_what_a_full_forward_sees(attention: str, fields: dict) -> None:
    """A chunk of several tokens into a cache that holds some (chunked prefill): each token of the
    chunk attends to the prefix and to the chunk up to itself."""
    torch.manual_seed(0)
    config = GPTConfig(**SMALL, attention=attention, **fields)
    model = trained_a_little(GPT(config)).eval()
    idx = torch.randint(65, (2, 16))
    full, _ = model(idx)
    kv_cache = KVCache(config, batch_size=2, device=idx.device, dtype=torch.float32)
    chunks = [model(idx[:, a:b], kv_cache=kv_cache)[0] for a, b in [(0, 5), (5, 11), (11, 12), (12, 16)]]
    torch.testing.assert_close(torch.cat(chunks, dim=1), full, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("attention", ["sdpa", "manual"])
def test_every_switch_compiles_as_one_graph(attention: str) -> None:
    torch._dynamo.reset()
    model = GPT(GPTConfig(**SMALL, attention=attention, **ALL))
    forward = torch.compile(model.forward, backend="eager", dynamic=True, fullgraph=True)
    for shape in [(8, 16), (6, 9), (1, 1)]:
        idx = torch.randint(65, shape)
        logits, loss = forward(idx, idx)
        torch.testing.assert_close(logits, model(idx)[0])
        loss.backward()


def test_every_switch_trains_under_bf16_autocast() -> None:
    torch.manual_seed(0)
    model = GPT(GPTConfig(**SMALL, **ALL))
    idx = torch.randint(65, (4, 16))
    with torch.autocast("cpu", torch.bfloat16):
        logits, loss = model(idx, idx)
    loss.backward()
    assert torch.isfinite(loss) and all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"position": "rope", "n_embd": 36, "n_head": 12}, r"model.position=rope with a head size of 3"),
        ({"position": "alibi"}, r"model.position='alibi' is not allowed: use one of \['learned', 'rope'\]"),
        ({"rope_base": 1.0}, r"model.rope_base=1.0 is not allowed: use a number above 1"),
        ({"norm": "batchnorm"}, r"model.norm='batchnorm' .* \['layernorm', 'rmsnorm', 'none'\]"),
        ({"logit_softcap": 0.0}, r"model.logit_softcap=0.0 is not allowed: use a positive number, or null"),
        ({"mlp": "single", "mlp_hidden": 64}, r"model.mlp_hidden=64 with model.mlp=single is not allowed"),
        ({"mlp_hidden": 0}, r"model.mlp_hidden=0 is not allowed: use a positive integer"),
        ({"activation": "swish"}, r"model.activation='swish' .* 'relu2'\]"),
    ],
)
def test_switch_errors_name_the_setting(fields: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        GPTConfig(**fields)
