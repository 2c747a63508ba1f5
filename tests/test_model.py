import math
import string
from dataclasses import replace

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from gptlab.config import model_settings
from gptlab.data.tokenizer import CharTokenizer
from gptlab.generation import generate_samples
from gptlab.model import GPT, BigramLanguageModel, GPTConfig, KVCache, create_model, use_decoding_layout

SMALL = GPTConfig(block_size=16, vocab_size=65, n_layer=2, n_head=4, n_embd=32)


@pytest.mark.parametrize("config", [SMALL, GPTConfig(arch="bigram", block_size=16)])
def test_forward_shapes(config: GPTConfig) -> None:
    model = create_model(config)
    idx = torch.randint(65, (3, 16))
    logits, loss = model(idx)
    assert logits.shape == (3, 16, 65) and loss is None
    logits, loss = model(idx, targets=idx)
    assert loss is not None and loss.shape == ()


def test_model_kinds() -> None:
    assert isinstance(create_model(SMALL), GPT)
    assert isinstance(create_model(GPTConfig(arch="bigram")), BigramLanguageModel)


def test_initial_loss_is_close_to_uniform_guessing() -> None:
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=64, vocab_size=65, n_layer=4, n_head=4, n_embd=128))
    idx = torch.randint(65, (16, 64))
    _, loss = model(idx, targets=torch.randint(65, (16, 64)))
    assert abs(loss.item() - math.log(65)) < 0.05


def test_attention_is_causal() -> None:
    torch.manual_seed(0)
    model = GPT(SMALL).eval()
    idx = torch.randint(65, (2, 16))
    changed = idx.clone()
    changed[:, 10:] = (changed[:, 10:] + 1) % 65  # a different future from position 10 on
    logits, _ = model(idx)
    changed_logits, _ = model(changed)
    torch.testing.assert_close(logits[:, :10], changed_logits[:, :10])
    assert not torch.allclose(logits[:, 10:], changed_logits[:, 10:])


def test_generate_extends_past_block_size() -> None:
    torch.manual_seed(0)
    for model in (GPT(SMALL), BigramLanguageModel(SMALL)):
        out = model.generate(torch.zeros(2, 1, dtype=torch.long), max_new_tokens=40, top_k=5)
        assert out.shape == (2, 41) and out.min() >= 0 and out.max() < 65


@pytest.mark.parametrize("attention", ["sdpa", "manual"])
def test_forward_compiles_as_one_graph_for_any_batch_shape(attention: str) -> None:
    """model.compile=true: a validation batch of another shape makes torch.compile trace sizes as
    dynamic. Any graph break then made it skip the forward and train in eager from there on,
    at half the speed on a GPU (seen on an H200); fullgraph=True turns a graph break into an error."""
    torch._dynamo.reset()
    model = GPT(GPTConfig(block_size=16, vocab_size=65, n_layer=2, n_head=4, n_embd=32, attention=attention))
    forward = torch.compile(model.forward, backend="eager", dynamic=True, fullgraph=True)
    for shape in [(8, 16), (6, 9), (1, 1)]:
        idx = torch.randint(65, shape)
        logits, loss = forward(idx, idx)
        torch.testing.assert_close(logits, model(idx)[0])
        loss.backward()


def test_too_long_input_is_refused() -> None:
    with pytest.raises(ValueError, match="longer than block_size 16"):
        GPT(SMALL)(torch.zeros(1, 17, dtype=torch.long))


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"n_embd": 100, "n_head": 6}, r"model.n_embd=100 is not divisible by model.n_head=6.*\[1, 2, 4, 5"),
        ({"dropout": 1.0}, r"model.dropout=1.0 .* 0 <= dropout < 1"),
        ({"dropout": -0.1}, r"model.dropout=-0.1"),
        ({"n_layer": 0}, r"model.n_layer=0 .* positive integer"),
        ({"arch": "rnn"}, r"model.arch='rnn'"),
    ],
)
def test_config_errors_name_the_field(fields: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        GPTConfig(**fields)


def expected_gpt_parameters(V: int, T: int, C: int, L: int) -> int:
    per_block = (
        2 * C  # ln_1
        + C * 3 * C
        + 3 * C  # c_attn: q, k, v for all heads
        + C * C
        + C  # attention output projection
        + 2 * C  # ln_2
        + C * 4 * C
        + 4 * C
        + 4 * C * C
        + C  # MLP
    )
    return V * C + T * C + L * per_block + 2 * C + C * V  # embeddings, blocks, ln_f, lm_head


def test_parameter_count_of_the_lectures_model(compose) -> None:
    cfg = compose("experiment=shakespeare_char")
    model = GPT(GPTConfig(**model_settings(cfg), vocab_size=65))
    assert model.num_parameters() == expected_gpt_parameters(V=65, T=256, C=384, L=6) == 10_795_776
    # the lecture prints 10.788929 M: it has no q/k/v biases but an lm_head bias
    assert abs(model.num_parameters() - 10_788_929) / 10_788_929 < 0.001


@pytest.mark.parametrize("attention", ["sdpa", "manual"])
@pytest.mark.parametrize("new_tokens", [10, 40])  # inside block_size (16), and well past it
def test_kv_cache_generates_the_same_tokens(attention: str, new_tokens: int) -> None:
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=16, vocab_size=65, n_layer=2, n_head=4, n_embd=32, attention=attention))
    prompt = torch.randint(65, (3, 3))
    runs = {}
    for use_cache in (True, False):
        torch.manual_seed(42)
        runs[use_cache] = model.eval().generate(
            prompt, new_tokens, temperature=0.8, top_k=20, use_cache=use_cache
        )
    assert runs[True].shape == (3, 3 + new_tokens)
    assert torch.equal(runs[True], runs[False])

    # gptlab.sample's layout: the same weights in another memory order, the same tokens
    weights = {name: p.clone() for name, p in model.named_parameters()}
    use_decoding_layout(model)
    assert all(torch.equal(p, weights[name]) for name, p in model.named_parameters())
    assert not model.lm_head.weight.is_contiguous() and model.lm_head.weight.t().is_contiguous()
    for use_cache in (True, False):
        torch.manual_seed(42)
        assert torch.equal(model.generate(prompt, new_tokens, 0.8, 20, use_cache), runs[True])


def test_cached_logits_match_a_full_forward() -> None:
    torch.manual_seed(0)
    model = GPT(SMALL).eval()
    idx = torch.randint(65, (2, 16))
    full, _ = model(idx)
    tokens = list(model.stream(idx[:, :4], max_new_tokens=0))  # nothing to sample: cache untouched
    assert tokens == []
    kv_cache = KVCache(SMALL, batch_size=2, device=idx.device, dtype=torch.float32)
    step_logits = [model(idx[:, :4], kv_cache=kv_cache)[0][:, -1]]  # the prompt, then a token at a time
    step_logits += [model(idx[:, t : t + 1], kv_cache=kv_cache)[0][:, -1] for t in range(4, 16)]
    assert kv_cache.pos == 16
    torch.testing.assert_close(torch.stack(step_logits, dim=1), full[:, 3:], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("use_cache", [True, False])
def test_samples_are_drawn_as_one_batch_and_a_seed_repeats_them(use_cache: bool) -> None:
    torch.manual_seed(0)
    model = GPT(SMALL).eval()
    tokenizer = CharTokenizer(string.ascii_letters + string.digits + " .,:;!?\n")  # 65 characters
    forward_passes = []
    model.register_forward_pre_hook(lambda module, args: forward_passes.append(args[0].shape))

    def samples(seed: int) -> str:
        torch.manual_seed(seed)
        written: list[str] = []
        generate_samples(model, tokenizer, "To be", 3, 20, 0.8, 10, use_cache, written.append)
        return "".join(written)

    text = samples(seed=1)
    assert len(forward_passes) == 20  # one forward pass a token, for the three samples at once
    assert all(shape[0] == 3 for shape in forward_passes)
    drawn = text.rstrip("\n").split("\n---------------\n")
    assert len(drawn) == 3 and all(s.startswith("To be") and len(s) == len("To be") + 20 for s in drawn)
    assert len(set(drawn)) == 3  # each row its own sample
    assert samples(seed=1) == text
    assert samples(seed=2) != text


@pytest.mark.parametrize(
    "config",
    [
        GPTConfig(n_layer=2, n_head=4, n_embd=96, block_size=64, position="rope"),  # the default run's
        GPTConfig(n_layer=6, n_head=6, n_embd=384, block_size=256),  # the lecture's final model
    ],
    ids=["default", "lecture"],
)
def test_training_flops_are_the_matrix_products_torch_counts(config: GPTConfig) -> None:
    # torch's FlopCounterMode sees the manual path's matmuls (not sdpa's on a CPU); a step of one
    # window, forward and backward, against the count of 6 a matrix weight plus attention's
    model = GPT(replace(config, attention="manual", vocab_size=65))
    idx = torch.randint(65, (1, config.block_size))
    with FlopCounterMode(display=False) as counter:
        model(idx, idx)[1].backward()
    counted = counter.get_total_flops() / config.block_size
    assert model.training_flops_per_token() == pytest.approx(counted, rel=0.02)


def test_the_bigram_a_lookup_alone_counts_no_flops() -> None:
    # (a flops_budget for it is refused: tests/test_bad_input.py)
    assert BigramLanguageModel(GPTConfig(arch="bigram", vocab_size=65)).training_flops_per_token() == 0
