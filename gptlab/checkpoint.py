"""Checkpoints people can trust: found from a run directory, loaded as plain data only.

A gptlab checkpoint is a Lightning checkpoint whose `hyper_parameters` hold the model config
(`model`), the optimizer settings (`optim`) and the vocabulary (`tokenizer`), and whose
`state_dict` holds the weights under `model.`. Everything in it is plain data, so it loads with
torch.load(weights_only=True), which refuses any other pickled object instead of running it.
"""

import json
from pathlib import Path
from typing import Any

import torch

from gptlab.data import CharTokenizer
from gptlab.model import GPTConfig, LanguageModel, create_model


def find_checkpoint(path: str | Path) -> Path:
    """A checkpoint file as given, or the best checkpoint of a run directory."""
    path = Path(path)
    if not path.is_dir():
        return path
    summary = path / "summary.json"
    if summary.exists() and (best := json.loads(summary.read_text()).get("best_ckpt")):
        return Path(best)
    candidates = sorted((path / "checkpoints").glob("*.ckpt"))
    best_first = [c for c in candidates if c.name != "last.ckpt"] + [
        c for c in candidates if c.name == "last.ckpt"
    ]
    if not best_first:
        raise FileNotFoundError(f"no checkpoint in run directory {path}: expected {path}/checkpoints/*.ckpt")
    return best_first[0]


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """The checkpoint's contents, read as plain data; one clear error for anything else."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} not found")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several kinds; each means "not a checkpoint we load"
        if "GLOBAL" in str(err):  # weights_only met a pickled class or function
            raise ValueError(
                f"refusing to load {path}: it holds pickled objects other than plain data "
                "(tensors, dicts, lists, strings, numbers), which could run code"
            ) from None
        raise ValueError(f"{path} is not a readable checkpoint (truncated, or not a PyTorch file)") from None
    if not isinstance(checkpoint, dict) or not {"state_dict", "hyper_parameters"} <= checkpoint.keys():
        raise ValueError(f"{path} is not a gptlab checkpoint: it has no state_dict and hyper_parameters")
    return checkpoint


def model_from_checkpoint(checkpoint: dict[str, Any]) -> tuple[LanguageModel, CharTokenizer]:
    """Rebuilds the model and its tokenizer from a checkpoint alone."""
    hparams = checkpoint["hyper_parameters"]
    model = create_model(GPTConfig(**hparams["model"]))
    weights = {
        k.removeprefix("model."): v for k, v in checkpoint["state_dict"].items() if k.startswith("model.")
    }
    model.load_state_dict(weights)
    return model, CharTokenizer.from_dict(hparams["tokenizer"])
