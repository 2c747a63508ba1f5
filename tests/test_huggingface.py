"""gptlab models as transformers GPT-2 and back (gptlab/interop/huggingface.py), checked against
transformers itself: the exported directory loaded with AutoModelForCausalLM and AutoTokenizer
(no code of gptlab's), its logits and greedy text beside gptlab's; GPT-2 models made locally with
transformers imported, sampled, evaluated and fine-tuned. Nothing downloads."""

import json
import sys
from pathlib import Path

import pytest
import torch

from gptlab import convert
from gptlab.checkpoint import gptlab_checkpoint, load_checkpoint, model_from_checkpoint
from gptlab.data.tokenizer import BPETokenizer, CharTokenizer, Tokenizer
from gptlab.model import GPTConfig, create_model
from tests.conftest import SHAKESPEARE, run_here, train_here

transformers = pytest.importorskip(
    "transformers", reason="the hf extra is not installed: pip install 'gptlab[hf]'"
)

TEXT = "ROMEO:\nBut, soft! what light through yonder window breaks?\n\nJULIET:\nAy me!"
NON_ASCII = "Größe – naïve café, 東京 🙂\n"


@pytest.fixture(scope="module")
def bpe() -> BPETokenizer:
    return BPETokenizer.train([SHAKESPEARE.read_text()[:100_000]], vocab_size=300)


@pytest.fixture(scope="module")
def chars() -> CharTokenizer:
    return CharTokenizer("".join(sorted(set(SHAKESPEARE.read_text()))))


def saved_checkpoint(path: Path, tokenizer: Tokenizer, **settings) -> Path:
    """A gptlab checkpoint of a freshly initialised model of these settings."""
    torch.manual_seed(0)
    config = GPTConfig(
        vocab_size=tokenizer.vocab_size, n_layer=2, n_head=4, n_embd=32, block_size=32, **settings
    )
    torch.save(gptlab_checkpoint(create_model(config), tokenizer), path)
    return path


def exported(ckpt: Path, out: Path) -> tuple:
    convert.main(["to_hf", str(ckpt), str(out)])
    model = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    return model, transformers.AutoTokenizer.from_pretrained(out)


def assert_same_logits(hf_model, ckpt: Path, ids: list[int]) -> None:
    model, _ = model_from_checkpoint(load_checkpoint(ckpt))
    batch = torch.tensor([ids])
    with torch.no_grad():
        torch.testing.assert_close(hf_model(batch).logits, model.eval()(batch)[0], atol=1e-5, rtol=0)


def greedy_sample(ckpt: Path, prompt: str, new_tokens: int, out: Path) -> str:
    """What gptlab.sample writes for top_k=1 (greedy): the prompt and its continuation."""
    result = run_here(
        "sample",
        f"ckpt_path={ckpt}",
        f"prompt={prompt!r}",
        "top_k=1",
        f"max_new_tokens={new_tokens}",
        f"out_file={out}",
    )
    assert result.returncode == 0, result.stderr
    return out.read_text().removesuffix("\n")


def test_a_trained_char_run_exports_to_transformers_with_its_logits_text_and_tokenizer(
    trained_run: Path, tmp_path: Path
) -> None:
    hf_model, tokenizer = exported(trained_run, tmp_path / "hf")
    ckpt = Path(json.loads((trained_run / "summary.json").read_text())["best_ckpt"])
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    gptlab_model, gptlab_tokenizer = model_from_checkpoint(load_checkpoint(ckpt))
    # the default run's model: rotary positions, LayerNorm and a plain MLP, which GPT-NeoX computes
    assert config["architectures"] == ["GPTNeoXForCausalLM"]
    assert hf_model.config.max_position_embeddings == gptlab_model.config.block_size == 16
    assert config["vocab_size"] == gptlab_tokenizer.vocab_size and config["tie_word_embeddings"] is False
    assert (
        0 <= config["bos_token_id"] < config["vocab_size"]
        and 0 <= config["eos_token_id"] < config["vocab_size"]
    )

    # the tokenizer: the same ids, newlines included, and decode(encode(text)) == text
    text = TEXT[:16]
    assert tokenizer(TEXT).input_ids == gptlab_tokenizer.encode(TEXT)
    assert tokenizer.decode(tokenizer(TEXT).input_ids) == TEXT
    with pytest.raises(Exception, match="Missing \\[UNK\\] token"):
        tokenizer("ROMEO§")  # a character outside the vocabulary
    assert_same_logits(hf_model, ckpt, gptlab_tokenizer.encode(text))

    # greedy text within block_size, through the pipeline as a user would call it
    generate = transformers.pipeline("text-generation", model=hf_model, tokenizer=tokenizer)
    hf_text = generate("ROMEO:", max_new_tokens=10, do_sample=False)[0]["generated_text"]
    assert hf_text == greedy_sample(ckpt, "ROMEO:", 10, tmp_path / "sample.txt")
    card = (tmp_path / "hf" / "README.md").read_text()
    summary = json.loads((trained_run / "summary.json").read_text())
    assert f"best val_loss: {summary['best_val_loss']:.4f}" in card and "training steps: 60" in card


@pytest.mark.parametrize(
    ("tokenizer", "settings"),
    [
        ("bpe", {"tie_weights": False, "bias": False}),
        ("bpe", {"tie_weights": True, "bias": True, "activation": "gelu_tanh"}),
        ("char", {"tie_weights": True, "bias": False, "activation": "relu"}),
        ("char", {"attention": "heads", "attn_proj": False, "mlp": "single"}),  # the lecture's layers
        ("char", {"attention": "manual", "mlp": "none"}),
    ],
    ids=["bpe-untied-no-bias", "bpe-tied-gelu-tanh", "char-tied-relu", "lecture-heads", "no-mlp"],
)
def test_every_model_gpt2_can_compute_exports_exactly_and_comes_back(
    tmp_path: Path, bpe: BPETokenizer, chars: CharTokenizer, tokenizer: str, settings: dict
) -> None:
    gptlab_tokenizer = bpe if tokenizer == "bpe" else chars
    ckpt = saved_checkpoint(tmp_path / "model.ckpt", gptlab_tokenizer, **settings)
    hf_model, hf_tokenizer = exported(ckpt, tmp_path / "hf")
    ids = gptlab_tokenizer.encode(TEXT)[:32]
    assert hf_tokenizer(TEXT).input_ids == gptlab_tokenizer.encode(TEXT)
    assert_same_logits(hf_model, ckpt, ids)
    if tokenizer == "bpe":
        assert hf_tokenizer.decode(hf_tokenizer(NON_ASCII).input_ids) == NON_ASCII
    prompt = "JULIET:"
    new_tokens = 32 - len(gptlab_tokenizer.encode(prompt))  # within block_size
    hf_ids = hf_model.generate(
        hf_tokenizer(prompt, return_tensors="pt").input_ids, max_new_tokens=new_tokens, do_sample=False
    )
    assert hf_tokenizer.decode(hf_ids[0]) == greedy_sample(ckpt, prompt, new_tokens, tmp_path / "sample.txt")

    if settings.get("attention") is None and "mlp" not in settings:  # GPT-2's own layers: back as they were
        convert.main(["from_hf", str(tmp_path / "hf"), str(tmp_path / "back.ckpt")])
        back, back_tokenizer = model_from_checkpoint(load_checkpoint(tmp_path / "back.ckpt"))
        assert type(back_tokenizer) is type(gptlab_tokenizer)
        assert back_tokenizer.encode(TEXT) == gptlab_tokenizer.encode(TEXT)
        assert_same_logits(hf_model, tmp_path / "back.ckpt", ids)


# today's small GPT, as Llama computes it, and with QK-norm as Qwen3 does (rotary positions with
# LayerNorm and the plain MLP, the default run's, are GPT-NeoX)
LLAMA = {"position": "rope", "norm": "rmsnorm", "mlp": "swiglu", "bias": False}
QWEN3 = LLAMA | {"qk_norm": True}
NEOX = {"position": "rope"}


def trained_a_little(ckpt: Path) -> Path:
    """The checkpoint with its gains and biases moved off their 1 and 0 at init, where a norm's
    gain changes nothing (and a wrong one would pass unseen)."""
    checkpoint = load_checkpoint(ckpt)
    generator = torch.Generator().manual_seed(1)
    for tensor in checkpoint["state_dict"].values():
        if tensor.dim() == 1:
            tensor.add_(torch.randn(tensor.shape, generator=generator) * 0.3)
    torch.save(checkpoint, ckpt)
    return ckpt


@pytest.mark.parametrize(
    ("settings", "architecture"),
    [
        (LLAMA, "LlamaForCausalLM"),
        (LLAMA | {"bias": True, "rope_base": 500.0, "tie_weights": True}, "LlamaForCausalLM"),
        (LLAMA | {"attention": "heads", "mlp_hidden": 40}, "LlamaForCausalLM"),
        (QWEN3, "Qwen3ForCausalLM"),
        (QWEN3 | {"parametrization": "mup", "base_width": 16}, "Qwen3ForCausalLM"),  # m = 2
        ({"activation": "relu2"}, "GPT2LMHeadModel"),
        ({"position": "rope"}, "GPTNeoXForCausalLM"),  # the default run's model
        (
            {"position": "rope", "bias": False, "tie_weights": True, "attention": "heads"},
            "GPTNeoXForCausalLM",
        ),
        (
            {"position": "rope", "parametrization": "mup", "base_width": 16, "attn_proj": False},
            "GPTNeoXForCausalLM",
        ),
    ],
    ids=[
        "llama",
        "llama-biases-tied-base-500",
        "llama-lecture-heads",
        "qwen3",
        "qwen3-mup",
        "gpt2-relu2",
        "neox",
        "neox-no-biases-tied-heads",
        "neox-mup-no-projection",
    ],
)
def test_today_s_gpt_exports_as_the_transformers_architecture_that_computes_it(
    tmp_path: Path, chars: CharTokenizer, settings: dict, architecture: str
) -> None:
    ckpt = trained_a_little(saved_checkpoint(tmp_path / "model.ckpt", chars, **settings))
    hf_model, hf_tokenizer = exported(ckpt, tmp_path / "hf")
    assert type(hf_model).__name__ == architecture  # loaded by transformers' own class, no remote code
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["architectures"] == [architecture]
    assert_same_logits(hf_model, ckpt, chars.encode(TEXT)[:32])
    prompt = "JULIET:"
    new_tokens = 32 - len(prompt)  # within block_size
    hf_ids = hf_model.generate(
        hf_tokenizer(prompt, return_tensors="pt").input_ids, max_new_tokens=new_tokens, do_sample=False
    )
    assert hf_tokenizer.decode(hf_ids[0]) == greedy_sample(ckpt, prompt, new_tokens, tmp_path / "sample.txt")


def gpt2_made_with_transformers(folder: Path, bpe: BPETokenizer, **settings) -> Path:
    """A small GPT-2 as transformers makes one (GELU's tanh approximation, tied weights, an
    end-of-text token), saved with its tokenizer by save_pretrained."""
    torch.manual_seed(0)
    config = transformers.GPT2Config(
        vocab_size=bpe.vocab_size,
        n_positions=32,
        n_embd=48,
        n_layer=2,
        n_head=3,
        bos_token_id=0,
        eos_token_id=0,
    )
    for key, value in settings.items():
        setattr(config, key, value)
    transformers.GPT2LMHeadModel(config).save_pretrained(folder)
    transformers.PreTrainedTokenizerFast(tokenizer_object=bpe.tokenizer).save_pretrained(folder)
    return folder


def test_a_gpt2_made_with_transformers_imports_exactly_then_samples_evaluates_and_fine_tunes(
    tmp_path: Path, bpe: BPETokenizer
) -> None:
    hf_dir = gpt2_made_with_transformers(tmp_path / "gpt2", bpe)
    ckpt = tmp_path / "imported.ckpt"
    convert.main(["from_hf", str(hf_dir), str(ckpt)])
    model, tokenizer = model_from_checkpoint(load_checkpoint(ckpt))
    assert model.config.activation == "gelu_tanh" and model.config.tie_weights
    assert isinstance(tokenizer, BPETokenizer)
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(hf_dir).eval()
    assert_same_logits(hf_model, ckpt, tokenizer.encode(TEXT)[:32])

    assert run_here("sample", f"ckpt_path={ckpt}", "max_new_tokens=8").returncode == 0
    excerpt = tmp_path / "excerpt.txt"
    excerpt.write_text(SHAKESPEARE.read_text()[:20_000])
    scored = run_here("eval", f"ckpt_path={ckpt}", f"data.path={excerpt}")
    assert scored.returncode == 0, scored.stderr
    tuned = train_here(
        tmp_path / "tuned",
        "experiment=finetune",
        f"init_from={ckpt}",
        "trainer.max_steps=4",
        "trainer.val_check_interval=4",
        "data.val_tokens=512",
        "callbacks.text_samples=null",
        "logger=csv",
    )
    assert tuned.returncode == 0, tuned.stderr[-3000:]
    assert json.loads((tmp_path / "tuned" / "summary.json").read_text())["steps"] == 4


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"residual": False}, "model.residual=False has no transformers equivalent"),
        ({"norm": "none"}, "model.norm=none with learned positions has no transformers equivalent: GPT-2"),
        ({"causal": False}, "model.causal=False has no transformers equivalent"),
        ({"arch": "bigram"}, "model.arch=bigram has no transformers equivalent"),
        ({"logit_softcap": 15.0}, "model.logit_softcap=15.0 has no transformers equivalent (none of GPT-2"),
        ({"qk_norm": True}, "model.qk_norm=True with learned positions has no transformers equivalent"),
        ({"mlp": "swiglu"}, "model.mlp=swiglu with learned positions has no transformers equivalent"),
        (
            {**LLAMA, "norm": "layernorm"},
            "model.mlp=swiglu with model.position=rope and model.norm=layernorm",
        ),
        (
            {"position": "rope", "qk_norm": True},
            "model.qk_norm=True with model.position=rope and model.norm=layernorm",
        ),
        (
            {**LLAMA, "norm": "none"},
            "model.norm=none with model.position=rope has no transformers equivalent",
        ),
        ({**LLAMA, "mlp": "gpt"}, "model.mlp=gpt with model.position=rope has no transformers equivalent"),
        ({**QWEN3, "bias": True}, "model.qk_norm=True with model.bias=True has no transformers equivalent"),
        ({**QWEN3, "attention": "heads"}, "model.qk_norm=True with model.attention=heads has no"),
    ],
)
def test_a_model_no_transformers_class_computes_is_refused_in_one_line_and_nothing_is_written(
    tmp_path: Path, chars: CharTokenizer, settings: dict, message: str
) -> None:
    ckpt = saved_checkpoint(tmp_path / "model.ckpt", chars, **settings)
    result = run_here("convert", "to_hf", str(ckpt), str(tmp_path / "hf"))
    line = result.stderr.strip()
    assert result.returncode == 1 and line.startswith(f"error: {message}") and "\n" not in line, line
    assert not (tmp_path / "hf").exists()


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"scale_attn_by_inverse_layer_idx": True}, "scale_attn_by_inverse_layer_idx=True is not something"),
        ({"reorder_and_upcast_attn": True}, "reorder_and_upcast_attn=True is not something"),
        ({"add_cross_attention": True}, "add_cross_attention=True is not something"),
        ({"layer_norm_epsilon": 1e-6}, "layer_norm_epsilon=1e-06: gptlab's LayerNorms use 1e-05"),
        ({"n_inner": 100}, "n_inner=100: gptlab's MLP is 4 * n_embd = 192 wide"),
        ({"activation_function": "silu"}, "activation_function=silu is not one gptlab has"),
        ("no tokenizer", "has no tokenizer (tokenizer.json, or GPT-2's vocab.json and merges.txt)"),
    ],
)
def test_a_model_gptlab_cannot_import_is_refused_in_one_line(
    tmp_path: Path, bpe: BPETokenizer, settings, message: str
) -> None:
    hf_dir = gpt2_made_with_transformers(
        tmp_path / "gpt2", bpe, **(settings if isinstance(settings, dict) else {})
    )
    if settings == "no tokenizer":
        for name in ("tokenizer.json", "tokenizer_config.json"):
            (hf_dir / name).unlink()
    result = run_here("convert", "from_hf", str(hf_dir), str(tmp_path / "out.ckpt"))
    assert result.returncode == 1
    line = result.stderr.strip()
    assert line.startswith("error: ") and message in line and "\n" not in line, line
    assert not (tmp_path / "out.ckpt").exists()


def test_without_the_hf_extra_the_conversion_says_what_to_install(
    tmp_path: Path, chars: CharTokenizer, monkeypatch: pytest.MonkeyPatch
) -> None:
    ckpt = saved_checkpoint(tmp_path / "model.ckpt", chars)
    monkeypatch.setitem(sys.modules, "transformers", None)  # as in an environment without it
    result = run_here("convert", "to_hf", str(ckpt), str(tmp_path / "hf"))
    assert result.returncode == 1
    needs = "converting to or from Hugging Face needs transformers and safetensors"
    assert result.stderr.strip() == f"error: {needs}: pip install 'gptlab[hf]'"
    assert not (tmp_path / "hf").exists()
