"""Speed figures: `python -m gptlab.bench [experiment=... model.*=... bench.*=...]`, and muP's
coordinate check (bench.parts=[coord]).

Each figure is measured side by side with what it is compared to, alternating in rounds so
that the machine's noise falls on both; the median round is reported.

- train: a training step through gptlab (the Trainer, data module and module that
  `python -m gptlab.train` builds, with the run's loggers, callbacks and checkpoints) against
  the same model and batches in a bare PyTorch loop (batch, forward, backward, clip, AdamW
  step); batch production as a share of the step; tokens/s, peak memory, and on a GPU the
  model FLOPs utilisation (MFU).
- startup: process start to the first training step of `python -m gptlab.train`, and gptlab's
  share of it: what comes after `import torch, lightning` in the same process.
- generate: tokens/s with and without the KV cache.
- bare: the bare loop alone (what `grow` runs).
- grow: the bare step's time and memory for each value of bench.grow, each in a fresh process
  (so that one size's memory does not hide in the next one's).
- corpus: data.path repeated into corpora of bench.corpus.sizes_mb, each prepared by
  `python -m gptlab.prepare` in a fresh process with each tokenizer (seconds, MB/s, peak
  memory); then start-up to the first step and peak memory of `python -m gptlab.train` on
  the largest corpus against data.path itself, runs alternating.
- precision: trainer.precision=auto on a CPU against the two precisions it chooses from, a
  training step of the run's model in each, timed side by side over bench.rounds rounds.
- coord: muP's coordinate check (Tensor Programs V; the mup package's "coord check"): the mean
  absolute value of each layer's output after bench.coord.steps AdamW steps at optim.lr, at each
  of bench.coord.widths, under sp and under mup (model.base_width). Under mup the sizes stay flat
  across widths; under sp the updates grow with the width, and so do the outputs. A table and a plot.
"""

import json
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig
from rich.console import Console

from gptlab import cli
from gptlab.bench.coord import bench_coord, coordinate_table
from gptlab.bench.generate import bench_generate, generation_table
from gptlab.bench.processes import bench_corpus, bench_grow, bench_startup, corpus_table, growth_table
from gptlab.bench.step import (
    bench_bare,
    bench_precision,
    bench_train,
    precision_table,
    prepared_datamodule,
    train_table,
)
from gptlab.config import check_bench_settings, model_settings
from gptlab.model import GPTConfig
from gptlab.training import build


def print_tables(results: dict[str, Any], console: Console) -> None:
    if train := results.get("train"):
        console.print(train_table(train))
    if startup := results.get("startup"):
        console.print(
            f"start-up to the first step: {startup['seconds']:.2f} s "
            f"(`import torch, lightning`: {startup['torch_lightning_seconds']:.2f} s; "
            f"gptlab's share, after it: {startup['gptlab_seconds']:.2f} s)"
        )
    if precision := results.get("precision"):
        console.print(precision_table(precision))
    if generation := results.get("generate"):
        console.print(generation_table(generation))
    rows = results.get("grow") or (
        [{"setting": "", "value": ""} | results["bare"]] if "bare" in results else []
    )
    if rows:
        console.print(growth_table(rows))
    if coord := results.get("coord"):
        console.print(coordinate_table(coord))
    if corpus := results.get("corpus"):
        console.print(corpus_table(corpus))
        small, large = corpus["startup"]["data.path"], corpus["startup"]["largest"]
        extra_mb = large["peak_mb"] - small["peak_mb"]
        console.print(
            f"start-up to the first step: {small['seconds']:.2f} s on data.path, {large['seconds']:.2f} s on "
            f"{corpus['largest_mb']:,} MB ({large['seconds'] / small['seconds']:.2f}x); peak memory "
            f"{small['peak_mb']:,.0f} MB and {large['peak_mb']:,.0f} MB ({extra_mb:+,.0f} MB)"
        )


@hydra.main(version_base="1.3", config_path="pkg://gptlab.conf", config_name="bench")
def main(cfg: DictConfig) -> None:
    out_dir = Path(HydraConfig.get().runtime.output_dir)
    measure = {
        "train": bench_train,
        "bare": bench_bare,
        "startup": lambda cfg: bench_startup(cfg, out_dir),
        "generate": bench_generate,
        "grow": lambda cfg: bench_grow(cfg, out_dir),
        "corpus": lambda cfg: bench_corpus(cfg, out_dir),
        "coord": lambda cfg: bench_coord(cfg, out_dir),
        "precision": lambda cfg: bench_precision(cfg, asked),
    }
    results: dict[str, Any] = {"overrides": list(HydraConfig.get().overrides.task)}
    with cli.errors_in_one_line():
        check_bench_settings(cfg)
        # the train part's run lasts its rounds; trainer.precision=auto is decided as gptlab.train does
        cfg.trainer.max_steps = cfg.bench.warmup_steps + cfg.bench.rounds * cfg.bench.steps_per_round + 1
        asked = cfg.trainer.precision
        if asked == "auto":  # (measured with the model, whose vocabulary the corpus gives)
            vocab_size = prepared_datamodule(cfg).tokenizer.vocab_size
            build.choose_precision(cfg, GPTConfig(**model_settings(cfg), vocab_size=vocab_size))
        for part in cfg.bench.parts:
            results[part] = measure[part](cfg)
    print_tables(results, Console())
    out = out_dir / "bench.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out}")
