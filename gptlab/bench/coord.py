"""muP's coordinate check (bench.parts=[coord]): each layer's output size after a few steps, across
widths, under sp and under mup."""

import statistics
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from rich.table import Table

from gptlab.analysis.results import pyplot
from gptlab.bench.step import prepared_datamodule, training_windows
from gptlab.config import OptimConfig, model_settings
from gptlab.data.datamodule import RandomWindows
from gptlab.model import GPTConfig, create_model
from gptlab.training.optimizer import adamw


def coordinate_sizes(
    config: GPTConfig, optim: OptimConfig, windows: RandomWindows, steps: int
) -> dict[str, float]:
    """The mean absolute value of the embeddings, each block's attention and MLP outputs and the
    logits, on the batch after `steps` AdamW steps at a constant optim.lr (no warmup, no decay)."""
    model = create_model(config)
    optimizer = adamw(model, optim)
    for step in range(steps):
        _, loss = model(*windows.batch(step))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    layers = {"embedding": model.transformer.drop}
    for i, block in enumerate(model.transformer.h):
        layers |= {f"h.{i}.attn": block.attn, f"h.{i}.mlp": block.mlp}
    sizes: dict[str, float] = {}
    hooks = [
        module.register_forward_hook(
            lambda _m, _i, out, name=name: sizes.__setitem__(name, out.abs().mean().item())
        )
        for name, module in layers.items()
        if module is not None
    ]
    model.eval()
    with torch.no_grad():
        logits, _ = model(windows.batch(steps)[0])
    for hook in hooks:
        hook.remove()
    return sizes | {"logits": logits.abs().mean().item()}


def bench_coord(cfg: DictConfig, out_dir: Path) -> list[dict[str, Any]]:
    """One row a parametrization and width: each layer's size, a mean over bench.coord.seeds."""
    datamodule = prepared_datamodule(cfg)
    windows = training_windows(datamodule)
    optim = OptimConfig(**OmegaConf.to_container(cfg.optim, resolve=True))
    settings = model_settings(cfg) | {"vocab_size": datamodule.tokenizer.vocab_size, "dropout": 0.0}
    rows = []
    for parametrization in ("sp", "mup"):
        for width in cfg.bench.coord.widths:
            config = GPTConfig(**settings | {"n_embd": width, "parametrization": parametrization})
            seeds = []
            for seed in range(cfg.bench.coord.seeds):
                torch.manual_seed(cfg.seed + seed)
                seeds.append(coordinate_sizes(config, optim, windows, cfg.bench.coord.steps))
            sizes = {name: statistics.fmean(s[name] for s in seeds) for name in seeds[0]}
            rows.append({"parametrization": parametrization, "width": width, "sizes": sizes})
    if cfg.bench.coord.plot:
        plot_coordinates(rows, out_dir / cfg.bench.coord.plot, cfg.bench.coord.steps)
    return rows


def plot_coordinates(rows: list[dict[str, Any]], path: Path, steps: int) -> None:
    plt = pyplot()
    fig, panels = plt.subplots(1, 2, figsize=(11, 4.5), sharey=True)
    for panel, parametrization in zip(panels, ("sp", "mup"), strict=True):
        chosen = [r for r in rows if r["parametrization"] == parametrization]
        for name in chosen[0]["sizes"]:
            panel.plot(
                [r["width"] for r in chosen], [r["sizes"][name] for r in chosen], marker="o", label=name
            )
        panel.set(
            xscale="log",
            yscale="log",
            xlabel="width (n_embd)",
            title=f"{parametrization}: after {steps} steps",
        )
    panels[0].set_ylabel("mean |activation|")
    panels[1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def coordinate_table(rows: list[dict[str, Any]]) -> Table:
    """Each layer's size at each width, and how much it grew from the narrowest to the widest."""
    widths = sorted({r["width"] for r in rows})
    table = Table(title="coordinate check: mean |activation| after a few steps, by width (n_embd)")
    for column in ("", "layer", *map(str, widths), f"{widths[-1]} / {widths[0]}"):
        table.add_column(column, justify="right")
    for parametrization in ("sp", "mup"):
        by_width = {r["width"]: r["sizes"] for r in rows if r["parametrization"] == parametrization}
        for name in by_width[widths[0]]:
            sizes = [by_width[w][name] for w in widths]
            table.add_row(parametrization, name, *(f"{v:.3g}" for v in sizes), f"{sizes[-1] / sizes[0]:.2f}x")
    return table
