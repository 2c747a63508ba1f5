"""Checkpoints people can trust: found from a run directory, loaded as plain data only.

A gptlab checkpoint is a Lightning checkpoint whose `hyper_parameters` hold the model config
(`model`), the optimizer settings (`optim`) and the tokenizer (`tokenizer`, with its type), and whose
`state_dict` holds the weights under `model.`. Everything in it is plain data, so it loads with
torch.load(weights_only=True), which refuses any other pickled object instead of running it.
"""

import json
import os
import pickle
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from gptlab.model import GPTConfig, LanguageModel, create_model
from gptlab.tokenizer import CharTokenizer, Tokenizer, tokenizer_from_dict


def find_checkpoint(path: str | Path) -> Path:
    """A checkpoint file as given, or the best checkpoint of a run directory."""
    path = Path(path)
    if not path.is_dir():
        return path
    summary = path / "summary.json"
    if summary.exists() and (best := json.loads(summary.read_text()).get("best_ckpt")):
        return Path(best)
    # the best checkpoint (named by its step and val_loss) before last.ckpt
    candidates = sorted((path / "checkpoints").glob("*.ckpt"), key=lambda c: (c.name == "last.ckpt", c.name))
    if not candidates:
        raise FileNotFoundError(f"no checkpoint in run directory {path}: expected {path}/checkpoints/*.ckpt")
    return candidates[0]


def load_plain(path: str | Path) -> Any:
    """torch.load with weights_only=True, and one clear error for a file it cannot read."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} not found")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several kinds; each means "not a checkpoint we load"
        if "GLOBAL" in str(err):  # weights_only met a pickled class or function
            raise ValueError(
                f"refusing to load {path}: it holds pickled objects other than plain data "
                "(tensors, dicts, lists, strings, numbers), which could run code"
            ) from None
        raise ValueError(f"{path} is not a readable checkpoint (truncated, or not a PyTorch file)") from None


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """A gptlab checkpoint's contents, read as plain data."""
    checkpoint = load_plain(path)
    if not isinstance(checkpoint, dict) or not {"state_dict", "hyper_parameters"} <= checkpoint.keys():
        raise ValueError(f"{path} is not a gptlab checkpoint: it has no state_dict and hyper_parameters")
    return checkpoint


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint writer, made atomic on every file system: the checkpoint is written
    to a partial file beside its target, then renamed over it, so a kill mid-write leaves the
    previous checkpoint whole. (Lightning's own writer stages in the system's temp directory,
    which is a copy, not a rename, when that is another file system.)"""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
        torch.save(checkpoint, partial)
        os.replace(partial, path)


def model_from_checkpoint(checkpoint: dict[str, Any]) -> tuple[LanguageModel, Tokenizer]:
    """Rebuilds the model and its tokenizer from a checkpoint alone."""
    hparams = checkpoint["hyper_parameters"]
    model = create_model(GPTConfig(**hparams["model"]))
    weights = {
        k.removeprefix("model."): v for k, v in checkpoint["state_dict"].items() if k.startswith("model.")
    }
    model.load_state_dict(weights)
    return model, tokenizer_from_dict(hparams["tokenizer"])


def gptlab_checkpoint(model: LanguageModel, tokenizer: Tokenizer, global_step: int = 0) -> dict[str, Any]:
    """The smallest checkpoint gptlab reads (gptlab.sample, init_from): weights, model config and
    vocabulary, all plain data."""
    return {
        "state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
        "hyper_parameters": {"model": asdict(model.config), "tokenizer": tokenizer.to_dict()},
        "global_step": global_step,
    }


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
}


class PlainDataUnpickler(pickle.Unpickler):
    """Unpickles dicts, lists, strings and numbers only: any class or function is refused."""

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}: only plain data is allowed")


def from_nanogpt(ckpt_path: str | Path, meta_path: str | Path) -> dict[str, Any]:
    """A gptlab checkpoint from nanoGPT's ckpt.pt and meta.pkl (character-level models)."""
    nano = load_plain(ckpt_path)
    if not isinstance(nano, dict) or not {"model", "model_args"} <= nano.keys():
        raise ValueError(f"{ckpt_path} is not a nanoGPT checkpoint: it has no model and model_args")
    with open(meta_path, "rb") as f:
        try:
            meta = PlainDataUnpickler(f).load()
        except pickle.UnpicklingError as err:
            raise ValueError(f"{meta_path}: {err}") from None
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
        raise ValueError(
            f"this checkpoint's tokenizer is {tokenizer.to_dict()['type']}: nanoGPT's meta.pkl holds a "
            "character vocabulary, so only char checkpoints convert (data/tokenizer=char)"
        )
    config = model.config
    if differs := {k: getattr(config, k) for k, v in NANOGPT_GPT.items() if getattr(config, k) != v}:
        raise ValueError(f"nanoGPT's model has {NANOGPT_GPT}: this checkpoint's differs in {differs}")
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
