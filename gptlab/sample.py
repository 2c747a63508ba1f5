"""Generate text from a checkpoint: `python -m gptlab.sample ckpt_path=<file or run dir>`.

Needs the checkpoint alone: model config and tokenizer travel inside it. num_samples samples
are drawn as one batch; one sample streams to stdout as it is sampled. The speed goes to
stderr at the end.
"""

import sys
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig

from gptlab import cli
from gptlab.checkpoint import find_checkpoint, load_checkpoint, model_from_checkpoint
from gptlab.config import check_sample_settings
from gptlab.data.tokenizer import Tokenizer
from gptlab.generation import generate_samples
from gptlab.model import LanguageModel, use_decoding_layout
from gptlab.training.precision import inference_dtype, pick_device


def load(cfg: DictConfig) -> tuple[LanguageModel, Tokenizer, torch.device, torch.dtype]:
    """The checkpoint's model and tokenizer, and where and in what it samples: every setting is
    checked here, before anything is sampled."""
    check_sample_settings(cfg)
    device = pick_device(cfg.device)
    dtype = inference_dtype(cfg.dtype)
    model, tokenizer = model_from_checkpoint(load_checkpoint(find_checkpoint(cfg.ckpt_path)))
    tokenizer.encode(cfg.prompt)  # a prompt outside a char model's vocabulary fails here
    return model, tokenizer, device, dtype


@hydra.main(version_base="1.3", config_path="pkg://gptlab.conf", config_name="sample")
def main(cfg: DictConfig) -> None:
    with cli.errors_in_one_line():
        model, tokenizer, device, dtype = load(cfg)
        if cfg.out_file:
            Path(cfg.out_file).parent.mkdir(parents=True, exist_ok=True)
        out_file = open(cfg.out_file, "w") if cfg.out_file else None  # noqa: SIM115 (written while streaming)
    use_decoding_layout(model.to(device, dtype).eval())
    torch.manual_seed(cfg.seed)
    try:
        seconds = generate_samples(
            model,
            tokenizer,
            cfg.prompt,
            cfg.num_samples,
            cfg.max_new_tokens,
            cfg.temperature,
            cfg.top_k,
            cfg.use_cache,
            lambda text: write(text, out_file),
        )
    finally:
        if out_file:
            out_file.close()
            print(f"samples written to {Path(cfg.out_file).resolve()}", file=sys.stderr)
    tokens = cfg.num_samples * cfg.max_new_tokens
    samples = f"{cfg.num_samples} samples as one batch" if cfg.num_samples > 1 else "1 sample"
    how = f"on {device} in {str(dtype).removeprefix('torch.')}, KV cache {'on' if cfg.use_cache else 'off'}"
    print(
        f"{tokens:,} tokens in {seconds:.2f} s: {tokens / seconds:,.0f} tokens/s ({samples} {how})",
        file=sys.stderr,
    )


def write(text: str, out_file) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()
    if out_file:
        out_file.write(text)


if __name__ == "__main__":
    main()
