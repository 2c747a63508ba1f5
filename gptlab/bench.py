"""Speed figures: `python -m gptlab.bench [experiment=... model.*=...]`.

Generation tokens/s with and without the KV cache, measured side by side (runs alternate, so
the machine's noise falls on both) and reported as medians with their ratio.
"""

import json
import statistics
import time
from pathlib import Path

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig
from rich.console import Console
from rich.table import Table

from gptlab.model import GPTConfig, create_model


def generation_seconds(
    model: torch.nn.Module, new_tokens: int, use_cache: bool, device: torch.device
) -> float:
    prompt = torch.zeros((1, 1), dtype=torch.long, device=device)
    start = time.perf_counter()
    model.generate(prompt, new_tokens, use_cache=use_cache)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


@hydra.main(version_base="1.3", config_path="../conf", config_name="bench")
def main(cfg: DictConfig) -> None:
    device = torch.device(cfg.bench.device)
    torch.manual_seed(cfg.seed)
    model = create_model(GPTConfig(**cfg.model)).to(device).eval()
    results = []
    for tokens in cfg.bench.generate_tokens:
        tokens = tokens or model.config.block_size - 1
        seconds: dict[bool, list[float]] = {True: [], False: []}
        for _ in range(cfg.bench.repeats):
            for use_cache in (True, False):
                seconds[use_cache].append(generation_seconds(model, tokens, use_cache, device))
        cached, uncached = (tokens / statistics.median(seconds[c]) for c in (True, False))
        results.append(
            {"new_tokens": tokens, "cached_tokens_per_s": cached, "uncached_tokens_per_s": uncached}
        )

    config = model.config
    table = Table(
        title=f"generation, {model.num_parameters():,} parameters, block_size {config.block_size}, {device}"
    )
    for column in ("new tokens", "KV cache tok/s", "no cache tok/s", "speed-up"):
        table.add_column(column, justify="right")
    for r in results:
        speedup = r["cached_tokens_per_s"] / r["uncached_tokens_per_s"]
        table.add_row(
            str(r["new_tokens"]),
            f"{r['cached_tokens_per_s']:.0f}",
            f"{r['uncached_tokens_per_s']:.1f}",
            f"{speedup:.1f}x",
        )
    Console().print(table)
    out = Path(HydraConfig.get().runtime.output_dir) / "bench.json"
    out.write_text(json.dumps({"params": model.num_parameters(), "generation": results}, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
