"""Generation's speed, with and without the KV cache (bench.parts=[generate])."""

import statistics
import time
from typing import Any

import torch
from omegaconf import DictConfig
from rich.table import Table

from gptlab.bench.memory import synchronize
from gptlab.config import model_settings
from gptlab.model import GPTConfig, create_model, use_decoding_layout
from gptlab.training.precision import inference_dtype, pick_device


def bench_generate(cfg: DictConfig) -> list[dict[str, Any]]:
    """Tokens/s from a 1-token prompt, with and without the KV cache, runs alternating."""
    device = pick_device(cfg.trainer.accelerator, key="trainer.accelerator")
    dtype = inference_dtype(cfg.bench.generate_dtype)
    torch.manual_seed(cfg.seed)
    model = use_decoding_layout(create_model(GPTConfig(**model_settings(cfg))).to(device, dtype).eval())
    results = []
    for tokens in cfg.bench.generate_tokens:
        tokens = tokens or model.config.block_size - 1
        seconds: dict[bool, list[float]] = {True: [], False: []}
        for _ in range(cfg.bench.generate_repeats):
            for use_cache in (True, False):
                prompt = torch.zeros((1, 1), dtype=torch.long, device=device)
                synchronize(device)
                start = time.perf_counter()
                model.generate(prompt, tokens, use_cache=use_cache)
                synchronize(device)
                seconds[use_cache].append(time.perf_counter() - start)
        cached, uncached = (tokens / statistics.median(seconds[c]) for c in (True, False))
        results.append(
            {
                "new_tokens": tokens,
                "dtype": str(dtype).removeprefix("torch."),
                "cached_tokens_per_s": cached,
                "uncached_tokens_per_s": uncached,
            }
        )
    return results


def generation_table(generation: list[dict[str, Any]]) -> Table:
    table = Table(title=f"generation, weights in {generation[0]['dtype']}")
    for column in ("new tokens", "KV cache tok/s", "no cache tok/s", "speed-up"):
        table.add_column(column, justify="right")
    for r in generation:
        speedup = r["cached_tokens_per_s"] / r["uncached_tokens_per_s"]
        table.add_row(
            str(r["new_tokens"]),
            f"{r['cached_tokens_per_s']:.0f}",
            f"{r['uncached_tokens_per_s']:.1f}",
            f"{speedup:.1f}x",
        )
    return table
