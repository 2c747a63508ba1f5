"""Generate text from a checkpoint: `python -m gptlab.sample ckpt_path=<file or run dir>`.

Needs the checkpoint alone: model config and vocabulary travel inside it. Text streams to
stdout as it is sampled.
"""

import os
import sys
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig

from gptlab.checkpoint import find_checkpoint, load_checkpoint, model_from_checkpoint


def pick_device(name: str) -> torch.device:
    if name != "auto":
        return torch.device(name)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@hydra.main(version_base="1.3", config_path="../conf", config_name="sample")
def main(cfg: DictConfig) -> None:
    try:
        path = find_checkpoint(cfg.ckpt_path)
        model, tokenizer = model_from_checkpoint(load_checkpoint(path))
        prompt = tokenizer.encode(cfg.prompt)
        if not prompt:
            raise ValueError("prompt is empty: give at least one character, e.g. prompt='ROMEO:'")
        if cfg.temperature <= 0:
            raise ValueError(f"temperature={cfg.temperature} is not allowed: use a positive number")
    except (ValueError, OSError) as err:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        sys.exit("error: " + " ".join(str(err).split()))

    device = pick_device(cfg.device)
    model.to(device).eval()
    torch.manual_seed(cfg.seed)
    out_file = open(cfg.out_file, "w") if cfg.out_file else None  # noqa: SIM115 (written while streaming)
    try:
        for i in range(cfg.num_samples):
            if i:
                write("\n---------------\n", out_file)
            write(cfg.prompt, out_file)
            idx = torch.tensor([prompt], dtype=torch.long, device=device)
            for token in model.stream(idx, cfg.max_new_tokens, cfg.temperature, cfg.top_k, cfg.use_cache):
                write(tokenizer.decode(token[0].tolist()), out_file)
        write("\n", out_file)
    finally:
        if out_file:
            out_file.close()
            print(f"samples written to {Path(cfg.out_file).resolve()}", file=sys.stderr)


def write(text: str, out_file) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()
    if out_file:
        out_file.write(text)


if __name__ == "__main__":
    main()
