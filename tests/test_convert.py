"""nanoGPT interop: a model survives the round trip through nanoGPT's checkpoint format."""

import pickle
from pathlib import Path

import pytest
import torch

from gptlab.checkpoint import gptlab_checkpoint, load_checkpoint, model_from_checkpoint
from gptlab.data.tokenizer import BPETokenizer, CharTokenizer
from gptlab.model import GPT, GPTConfig
from tests.conftest import Result, run_here

CHARS = "".join(sorted(set("\n !$&',-.3:;?ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")))


def convert(*args: str) -> Result:
    """`python -m gptlab.convert` (in this process: see tests.conftest.run_here)."""
    return run_here("convert", *args)


@pytest.mark.parametrize("bias", [True, False])
def test_round_trip_through_nanogpt_keeps_the_logits(tmp_path: Path, bias: bool) -> None:
    torch.manual_seed(0)
    config = GPTConfig(
        block_size=32, vocab_size=len(CHARS), n_layer=2, n_head=4, n_embd=64, bias=bias, tie_weights=True
    )
    model = GPT(config).eval()
    ours = tmp_path / "ours.ckpt"
    torch.save(gptlab_checkpoint(model, CharTokenizer(CHARS), global_step=7), ours)

    nano_ckpt, meta = tmp_path / "nano" / "ckpt.pt", tmp_path / "nano" / "meta.pkl"
    proc = convert("to_nanogpt", str(ours), str(nano_ckpt), str(meta))
    assert proc.returncode == 0, proc.stderr
    nano = torch.load(nano_ckpt, weights_only=True)
    args = {"n_layer": 2, "n_head": 4, "n_embd": 64, "block_size": 32, "bias": bias, "vocab_size": 65}
    assert nano["model_args"] == args | {"dropout": 0.0}
    expected = {
        "transformer.wte.weight",
        "transformer.wpe.weight",
        "lm_head.weight",
        "transformer.ln_f.weight",
    }
    for i in range(2):
        for layer in ("ln_1", "attn.c_attn", "attn.c_proj", "ln_2", "mlp.c_fc", "mlp.c_proj"):
            expected.add(f"transformer.h.{i}.{layer}.weight")
    if bias:
        expected |= {name.replace(".weight", ".bias") for name in expected if ".h." in name or "ln_f" in name}
    assert set(nano["model"]) == expected
    with open(meta, "rb") as f:
        vocabulary = pickle.load(f)
    assert (
        vocabulary["vocab_size"] == 65
        and vocabulary["itos"][0] == "\n"
        and vocabulary["stoi"]["a"] == CHARS.index("a")
    )

    # what a torch.compile'd nanoGPT with the manual attention saves: prefixed names, the mask buffer
    nano["model"] = {f"_orig_mod.{k}": v for k, v in nano["model"].items()}
    nano["model"]["_orig_mod.transformer.h.0.attn.bias"] = torch.tril(torch.ones(32, 32)).view(1, 1, 32, 32)
    torch.save(nano, nano_ckpt)

    back = tmp_path / "back.ckpt"
    proc = convert("from_nanogpt", str(nano_ckpt), str(meta), str(back))
    assert proc.returncode == 0, proc.stderr
    checkpoint = load_checkpoint(back)
    converted, tokenizer = model_from_checkpoint(checkpoint)
    assert tokenizer.chars == CHARS and checkpoint["global_step"] == 7
    idx = torch.randint(65, (2, 32))
    torch.testing.assert_close(converted.eval()(idx)[0], model(idx)[0], rtol=0, atol=0)


@pytest.mark.parametrize(
    ("settings", "differs"),
    [
        ({"activation": "relu"}, "'activation': 'relu'"),
        ({"position": "rope"}, "'position': 'rope'"),
        ({"norm": "rmsnorm"}, "'norm': 'rmsnorm'"),
        ({"qk_norm": True}, "'qk_norm': True"),
        ({"mlp": "swiglu"}, "'mlp': 'swiglu'"),
        ({"logit_softcap": 15.0}, "'logit_softcap': 15.0"),
    ],
)
def test_only_nanogpts_model_converts_to_it(tmp_path: Path, settings: dict, differs: str) -> None:
    ours = tmp_path / "ours.ckpt"
    model = GPT(GPTConfig(vocab_size=65, n_layer=1, n_embd=32, **settings))
    torch.save(gptlab_checkpoint(model, CharTokenizer(CHARS)), ours)
    proc = convert("to_nanogpt", str(ours), str(tmp_path / "ckpt.pt"), str(tmp_path / "meta.pkl"))
    assert proc.returncode == 1 and "\n" not in proc.stderr.strip()
    assert proc.stderr.startswith("error: nanoGPT's model has") and differs in proc.stderr
    assert "'tie_weights': False" in proc.stderr
    assert not (tmp_path / "ckpt.pt").exists()


def test_a_bpe_checkpoint_does_not_convert_to_nanogpt(tmp_path: Path) -> None:
    ours = tmp_path / "ours.ckpt"
    tokenizer = BPETokenizer.train(["To be, or not to be: that is the question. " * 50], vocab_size=270)
    torch.save(gptlab_checkpoint(GPT(GPTConfig(vocab_size=270, n_layer=1, n_embd=32)), tokenizer), ours)
    proc = convert("to_nanogpt", str(ours), str(tmp_path / "ckpt.pt"), str(tmp_path / "meta.pkl"))
    assert proc.returncode == 1 and not (tmp_path / "ckpt.pt").exists()
    assert proc.stderr.strip() == (
        "error: this checkpoint's tokenizer is bpe: nanoGPT's meta.pkl holds a character vocabulary, "
        "so only char checkpoints convert (data/tokenizer=char)"
    )


def test_meta_with_code_in_it_is_refused(tmp_path: Path) -> None:
    class RunsCode:
        def __reduce__(self):
            return (print, ("code ran",))

    meta = tmp_path / "meta.pkl"
    meta.write_bytes(pickle.dumps({"vocab_size": 65, "itos": RunsCode()}))
    torch.save({"model": {}, "model_args": {}}, tmp_path / "ckpt.pt")
    proc = convert("from_nanogpt", str(tmp_path / "ckpt.pt"), str(meta), str(tmp_path / "out.ckpt"))
    assert proc.returncode == 1 and "code ran" not in proc.stdout
    assert (
        proc.stderr.strip() == f"error: {meta}: refusing to load builtins.print: only plain data is allowed"
    )
