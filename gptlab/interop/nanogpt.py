"""Checkpoints to and from nanoGPT (karpathy/nanoGPT): character-level models."""

import pickle
from pathlib import Path
from typing import Any

from gptlab.checkpoint import gptlab_checkpoint, load_plain, model_from_checkpoint
from gptlab.data.tokenizer import CharTokenizer
from gptlab.faults import SettingError
from gptlab.model import GPTConfig, create_model

# nanoGPT (karpathy/nanoGPT) saves ckpt.pt = dict(model=state_dict, model_args=..., iter_num,
# best_val_loss, config) and, for character data, meta.pkl = dict(vocab_size, itos, stoi). Its
# GPT has our parameter names, a GELU MLP, LayerNorms with optional bias and an lm_head tied to wte.
NANOGPT_MODEL_ARGS = ("n_layer", "n_head", "n_embd", "block_size", "bias", "vocab_size", "dropout")


NANOGPT_GPT = {  # the GPTConfig settings of nanoGPT's model, besides NANOGPT_MODEL_ARGS
    "arch": "gpt",
    "attention": "sdpa",
    "causal": True,
    "attn_proj": True,
    "mlp": "gpt",
    "activation": "gelu",
    "residual": True,
    "norm": "layernorm",
    "tie_weights": True,
    "position": "learned",
    "qk_norm": False,
    "logit_softcap": None,
    "mlp_hidden": None,
}


class PlainDataUnpickler(pickle.Unpickler):
    """Unpickles dicts, lists, strings and numbers only: any class or function is refused."""

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}: only plain data is allowed")


def from_nanogpt(ckpt_path: str | Path, meta_path: str | Path) -> dict[str, Any]:
    """A gptlab checkpoint from nanoGPT's ckpt.pt and meta.pkl (character-level models)."""
    nano = load_plain(ckpt_path)
    if not isinstance(nano, dict) or not {"model", "model_args"} <= nano.keys():
        raise SettingError(f"{ckpt_path} is not a nanoGPT checkpoint: it has no model and model_args")
    with open(meta_path, "rb") as f:
        try:
            meta = PlainDataUnpickler(f).load()
        except pickle.UnpicklingError as err:
            raise SettingError(f"{meta_path}: {err}") from None
    args = nano["model_args"]
    config = GPTConfig(**{k: args[k] for k in NANOGPT_MODEL_ARGS}, **NANOGPT_GPT)
    tokenizer = CharTokenizer("".join(meta["itos"][i] for i in range(meta["vocab_size"])))
    weights = {
        k.removeprefix("_orig_mod."): v  # torch.compile'd models prefix every name
        for k, v in nano["model"].items()
        if not k.endswith(".attn.bias")  # the causal mask nanoGPT keeps as a buffer
    }
    model = create_model(config)
    model.load_state_dict(weights)
    return gptlab_checkpoint(model, tokenizer, global_step=nano.get("iter_num", 0))


def to_nanogpt(checkpoint: dict[str, Any], dataset: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """nanoGPT's (ckpt.pt, meta.pkl) contents for a gptlab checkpoint of a standard GPT on characters."""
    model, tokenizer = model_from_checkpoint(checkpoint)
    if not isinstance(tokenizer, CharTokenizer):
        raise SettingError(
            f"this checkpoint's tokenizer is {tokenizer.to_dict()['type']}: nanoGPT's meta.pkl holds a "
            "character vocabulary, so only char checkpoints convert (data/tokenizer=char)"
        )
    config = model.config
    if config.width_multiplier != 1:
        raise SettingError(
            f"model.parametrization=mup at n_embd={config.n_embd}, base_width={config.base_width}: its "
            "logits are lm_head's divided by n_embd/base_width, which nanoGPT's lm_head, tied to the token "
            "embedding, cannot hold; convert it to_hf instead (an untied, scaled lm_head)"
        )
    if differs := {k: getattr(config, k) for k, v in NANOGPT_GPT.items() if getattr(config, k) != v}:
        raise SettingError(f"nanoGPT's model has {NANOGPT_GPT}: this checkpoint's differs in {differs}")
    state = dict(model.state_dict())  # with tied weights, both wte and lm_head, as nanoGPT has
    nano = {
        "model": state,
        "model_args": {k: getattr(config, k) for k in NANOGPT_MODEL_ARGS},
        "iter_num": checkpoint.get("global_step", 0),
        "best_val_loss": float("nan"),
        "config": {"dataset": dataset},
    }
    meta = {
        "vocab_size": tokenizer.vocab_size,
        "itos": dict(enumerate(tokenizer.chars)),
        "stoi": tokenizer.stoi,
    }
    return nano, meta
