"""Score a checkpoint: `python -m gptlab.eval ckpt_path=<file or run dir> [data.path=...]`.

By default on the validation set its run was scored on (the same span of the same text, every
token once: val_loss here is the run's own), or on every token of another text file. Prints
val_loss, perplexity and bits per character, and writes them as JSON with out_file=.
"""

import json
import math
import os
import sys
from pathlib import Path
from typing import Any

import hydra
import torch
from omegaconf import DictConfig

from gptlab.checkpoint import find_checkpoint, load_checkpoint, model_from_checkpoint
from gptlab.data import (
    Batches,
    CharDataModule,
    CharTokenizer,
    describe_unknown,
    read_text,
    validation_batches,
)
from gptlab.model import LanguageModel, is_count
from gptlab.sample import pick_device


def scoring_span(
    cfg: DictConfig, checkpoint: dict[str, Any], tokenizer: CharTokenizer
) -> tuple[torch.Tensor, str]:
    """The tokens to score (each but the first is predicted once) and what they are."""
    if cfg.data.path is None:
        data = checkpoint.get("datamodule_hyper_parameters")
        if not data:
            raise ValueError(
                "this checkpoint does not record the data it was trained on (written by an older gptlab): "
                "give data.path=<text file>"
            )
        if not Path(data["path"]).is_file():
            raise FileNotFoundError(
                f"the checkpoint's data file {data['path']} is not there (a relative path is relative to "
                "where the run was started): run from there, or give data.path=<text file>"
            )
        datamodule = CharDataModule(**data)
        datamodule.tokenizer = tokenizer
        datamodule.setup("validate")
        return datamodule.val_span, f"the validation set of {datamodule.path}"
    path = Path(cfg.data.path)
    if not path.exists():
        raise FileNotFoundError(f"data.path={path} not found: give a text file")
    text = read_text(path)
    if unknown := tokenizer.unknown_chars(text):
        raise ValueError(f"data file {path} has {describe_unknown(unknown)}")
    if len(text) < 2:
        raise ValueError(f"data file {path} has {len(text)} characters: scoring needs at least 2")
    return torch.tensor(tokenizer.encode(text)), f"all of {path}"


@torch.inference_mode()
def total_nats(model: LanguageModel, batches: Batches, device: torch.device) -> float:
    """The summed cross-entropy (in nats) of every target in the batches."""
    total = 0.0
    for x, y in batches:
        _, loss = model(x.to(device), y.to(device))
        total += loss.item() * y.numel()
    return total


@hydra.main(version_base="1.3", config_path="pkg://gptlab.conf", config_name="eval")
def main(cfg: DictConfig) -> None:
    try:
        if not is_count(cfg.batch_size) or cfg.batch_size < 1:
            raise ValueError(f"batch_size={cfg.batch_size!r} is not allowed: use a positive integer")
        device = pick_device(cfg.device)
        path = find_checkpoint(cfg.ckpt_path)
        checkpoint = load_checkpoint(path)
        model, tokenizer = model_from_checkpoint(checkpoint)
        span, described = scoring_span(cfg, checkpoint, tokenizer)
        out_file = Path(cfg.out_file) if cfg.out_file else None
        if out_file is not None and out_file.is_dir():
            raise ValueError(f"out_file={out_file} is a directory: give a file name, e.g. eval.json")
    except (ValueError, OSError) as err:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        sys.exit("error: " + " ".join(str(err).split()))

    model.to(device).eval()
    batches = validation_batches(span, model.config.block_size, cfg.batch_size)
    nats, tokens = total_nats(model, batches, device), len(span) - 1
    characters = len(tokenizer.decode(span[1:].tolist()))
    result = {
        "val_loss": nats / tokens,
        "perplexity": math.exp(nats / tokens),
        "bits_per_char": nats / characters / math.log(2),
        "tokens": tokens,
        "characters": characters,
        "checkpoint": str(path),
        "step": checkpoint.get("global_step"),
        "scored": described,
    }
    print(f"{path} (step {result['step']}) on {described}: {tokens:,} tokens, {characters:,} characters")
    for key in ("val_loss", "perplexity", "bits_per_char"):
        print(f"{key} {result[key]:.4f}")
    if out_file is not None:
        out_file.parent.mkdir(parents=True, exist_ok=True)
        out_file.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {out_file}", file=sys.stderr)


if __name__ == "__main__":
    main()
