"""Generate text from a checkpoint: `python -m gptlab.sample ckpt_path=<file or run dir>`.

Needs the checkpoint alone: model config and tokenizer travel inside it. Text streams to
stdout as it is sampled.
"""

import os
import sys
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig

from gptlab.callbacks import check_sampling
from gptlab.checkpoint import find_checkpoint, load_checkpoint, model_from_checkpoint
from gptlab.model import is_count


def pick_device(name: str) -> torch.device:
    """The device named (auto: cuda when there is one), checked to be there."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise ValueError(f"device={name!r} is not a device: use auto, cpu, cuda, cuda:N or mps") from None
    available = {
        "cpu": True,
        "cuda": torch.cuda.is_available() and (device.index or 0) < torch.cuda.device_count(),
        "mps": torch.backends.mps.is_available(),
    }
    if not available.get(device.type, False):
        raise ValueError(f"device={name} is not available on this machine: use device=auto or device=cpu")
    return device


@hydra.main(version_base="1.3", config_path="pkg://gptlab.conf", config_name="sample")
def main(cfg: DictConfig) -> None:
    try:
        check_sampling("", cfg.prompt, cfg.max_new_tokens, cfg.temperature, cfg.top_k)
        if not is_count(cfg.num_samples) or cfg.num_samples < 1:
            raise ValueError(f"num_samples={cfg.num_samples!r} is not allowed: use a positive integer")
        if not is_count(cfg.seed):
            raise ValueError(f"seed={cfg.seed!r} is not allowed: use an integer")
        if not isinstance(cfg.use_cache, bool):
            raise ValueError(f"use_cache={cfg.use_cache!r} is not allowed: use true or false")
        device = pick_device(cfg.device)
        path = find_checkpoint(cfg.ckpt_path)
        model, tokenizer = model_from_checkpoint(load_checkpoint(path))
        prompt = tokenizer.encode(cfg.prompt)
        out_file = open(cfg.out_file, "w") if cfg.out_file else None  # noqa: SIM115 (written while streaming)
    except (ValueError, OSError) as err:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        sys.exit("error: " + " ".join(str(err).split()))

    model.to(device).eval()
    torch.manual_seed(cfg.seed)
    try:
        for i in range(cfg.num_samples):
            if i:
                write("\n---------------\n", out_file)
            write(cfg.prompt, out_file)
            idx = torch.tensor([prompt], dtype=torch.long, device=device)
            decode = tokenizer.stream()  # a character of several byte tokens comes out whole
            for token in model.stream(idx, cfg.max_new_tokens, cfg.temperature, cfg.top_k, cfg.use_cache):
                write(decode(int(token[0, 0])), out_file)
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
