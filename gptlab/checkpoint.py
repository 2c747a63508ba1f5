"""Checkpoints people can trust: found from a run directory, loaded as plain data only (with
torch alone: sampling, evaluating and converting need no Lightning; the Trainer writes them with
gptlab.training.checkpoint_io).

A gptlab checkpoint is a Lightning checkpoint whose `hyper_parameters` hold the model config
(`model`), the optimizer settings (`optim`) and the tokenizer (`tokenizer`, with its type), and whose
`state_dict` holds the weights under `model.`. Everything in it is plain data, so it loads with
torch.load(weights_only=True), which refuses any other pickled object instead of running it.
"""

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from gptlab.data.tokenizer import Tokenizer, tokenizer_from_dict
from gptlab.faults import SettingError
from gptlab.model import GPTConfig, LanguageModel, create_model


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
            raise SettingError(
                f"refusing to load {path}: it holds pickled objects other than plain data "
                "(tensors, dicts, lists, strings, numbers), which could run code"
            ) from None
        raise SettingError(
            f"{path} is not a readable checkpoint (truncated, or not a PyTorch file)"
        ) from None


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """A gptlab checkpoint's contents, read as plain data."""
    checkpoint = load_plain(path)
    if not isinstance(checkpoint, dict) or not {"state_dict", "hyper_parameters"} <= checkpoint.keys():
        raise SettingError(f"{path} is not a gptlab checkpoint: it has no state_dict and hyper_parameters")
    return checkpoint


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


def what_is_kept(run_dir: Path, name: str) -> str:
    """The checkpoints a stopped run leaves, in words (`name` says what they are to the reader)."""
    checkpoints = run_dir / "checkpoints"
    last = checkpoints / "last.ckpt"
    if not last.is_file():
        return "no checkpoint was saved before it"
    step = torch.load(last, map_location="cpu", weights_only=True, mmap=True)["global_step"]
    best = sorted(p.name for p in checkpoints.glob("*.ckpt") if p.name != "last.ckpt")
    return f"{name}: {last} (step {step})" + (f", and the best, {checkpoints / best[-1]}" if best else "")
