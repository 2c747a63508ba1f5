"""Score a checkpoint: `python -m gptlab.eval ckpt_path=<file or run dir> [data.path=...]`.

By default on the validation set its run was scored on (the same span of the same corpus, every
token once: val_loss here is the run's own), or on every token of other text (a file or a
directory). Prints val_loss, perplexity and bits per character (comparable across tokenizers),
and writes them as JSON with out_file=. Scores in the precision its run validated in (bf16
autocast for a bf16-mixed run), so that the figures are the run's own.
"""

import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import torch
from omegaconf import DictConfig

from gptlab import cli
from gptlab.checkpoint import find_checkpoint, load_checkpoint, model_from_checkpoint
from gptlab.config import check_eval_settings
from gptlab.data.corpus import read_pieces, source_files
from gptlab.data.datamodule import TextDataModule, ValidationBatches
from gptlab.data.tokenizer import Tokenizer, UnknownCharacters
from gptlab.faults import SettingError
from gptlab.model import LanguageModel
from gptlab.training.precision import autocast, pick_device


def scoring_span(
    cfg: DictConfig, checkpoint: dict[str, Any], tokenizer: Tokenizer
) -> tuple[np.ndarray, int, str]:
    """The tokens to score (each but the first is predicted once), the characters those
    targets stand for, and what they are."""
    if cfg.data.path is None:
        data = checkpoint.get("datamodule_hyper_parameters")
        if not data:
            raise SettingError(
                "this checkpoint does not record the data it was trained on (written by an older gptlab): "
                "give data.path=<text file>"
            )
        paths = [data["path"]] if isinstance(data["path"], str) else data["path"]
        if missing := [p for p in paths if not Path(p).exists()]:
            raise FileNotFoundError(
                f"the checkpoint's data {missing[0]} is not there (a relative path is relative to "
                "where the run was started): run from there, or give data.path=<text file>"
            )
        datamodule = TextDataModule(**data)
        datamodule.tokenizer = tokenizer  # the corpus as this model reads it
        datamodule.setup("validate")
        return datamodule.val_span, datamodule.val_characters, f"the validation set of {datamodule.path}"
    path = Path(cfg.data.path)
    if not path.exists():
        raise FileNotFoundError(f"data.path={path} not found: give a text file or a directory")
    ids = []
    for file, piece, _ in read_pieces(source_files(path, cfg.data.glob), separator="\n", train_bytes=0):
        try:
            ids.append(tokenizer.encode_bytes(piece))
        except UnknownCharacters as err:
            raise UnknownCharacters(err.unknown, where=f"data file {file}") from None
    span = np.concatenate(ids)
    if len(span) < 2:
        raise SettingError(f"data {path} has {len(span)} tokens: scoring needs at least 2")
    return span, len(tokenizer.decode(span[1:].tolist())), f"all of {path}"


PRECISIONS = ("32-true", "bf16-mixed")  # of AUTOCAST_DTYPES, as a run's checkpoint names them


@torch.inference_mode()
def total_nats(
    model: LanguageModel, batches: ValidationBatches, device: torch.device, precision: str
) -> float:
    """The summed cross-entropy (in nats) of every target in the batches."""
    total = 0.0
    for x, y in batches:
        # as Lightning's bf16-mixed runs the validation step
        with autocast(device.type, precision):
            _, loss = model(x.to(device), y.to(device))
        total += loss.item() * y.numel()
    return total


@dataclass(frozen=True)
class Scoring:
    """What gptlab.eval scores, how, and with what."""

    path: Path  # the checkpoint
    step: int | None
    model: LanguageModel
    device: torch.device
    precision: str
    span: np.ndarray  # the tokens: each but the first is a target
    characters: int  # that the targets stand for
    described: str


def load(cfg: DictConfig) -> Scoring:
    """The checkpoint's model and the tokens it is scored on: every setting is checked here."""
    check_eval_settings(cfg)
    device = pick_device(cfg.device)
    path = find_checkpoint(cfg.ckpt_path)
    checkpoint = load_checkpoint(path)
    model, tokenizer = model_from_checkpoint(checkpoint)
    precision = cfg.precision or checkpoint.get("precision", "32-true")  # 32-true before it was kept
    if precision not in PRECISIONS:
        raise SettingError(
            f"precision={precision!r}", f"use null (the run's own) or one of {list(PRECISIONS)}"
        )
    span, characters, described = scoring_span(cfg, checkpoint, tokenizer)
    return Scoring(path, checkpoint.get("global_step"), model, device, precision, span, characters, described)


def score(scoring: Scoring, batch_size: int) -> dict[str, Any]:
    model = scoring.model.to(scoring.device).eval()
    batches = ValidationBatches(scoring.span, model.config.block_size, batch_size)
    nats, tokens = total_nats(model, batches, scoring.device, scoring.precision), len(scoring.span) - 1
    return {
        "val_loss": nats / tokens,
        "perplexity": math.exp(nats / tokens),
        "bits_per_char": nats / scoring.characters / math.log(2),
        "tokens": tokens,
        "characters": scoring.characters,
        "checkpoint": str(scoring.path),
        "step": scoring.step,
        "precision": scoring.precision,
        "scored": scoring.described,
    }


@hydra.main(version_base="1.3", config_path="pkg://gptlab.conf", config_name="eval")
def main(cfg: DictConfig) -> None:
    with cli.errors_in_one_line():
        scoring = load(cfg)
    result = score(scoring, cfg.batch_size)
    print(
        f"{result['checkpoint']} (step {result['step']}) on {result['scored']}: "
        f"{result['tokens']:,} tokens, {result['characters']:,} characters, in {result['precision']}"
    )
    for key in ("val_loss", "perplexity", "bits_per_char"):
        print(f"{key} {result[key]:.4f}")
    if cfg.out_file:
        out_file = Path(cfg.out_file)
        out_file.parent.mkdir(parents=True, exist_ok=True)
        out_file.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {out_file}", file=sys.stderr)


if __name__ == "__main__":
    main()
