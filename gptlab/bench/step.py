"""A training step, measured: gptlab's (the Trainer, data module and module gptlab.train builds)
against a bare PyTorch loop over the same model and batches, alternating in rounds
(bench.parts=[train]); the bare loop alone (bare); and trainer.precision=auto against the
precisions it chooses from (precision)."""

import math
import statistics
import time
from typing import Any

import hydra
import lightning as L
import torch
from lightning.fabric.utilities.throughput import get_available_flops
from omegaconf import DictConfig, OmegaConf
from rich.table import Table

from gptlab.bench.memory import current_memory_mb, peak_memory_mb, reset_peak_memory, synchronize
from gptlab.config import OptimConfig, model_settings
from gptlab.data.datamodule import RandomWindows, TextDataModule
from gptlab.faults import SettingError
from gptlab.model import GPTConfig, LanguageModel, create_model
from gptlab.training import build
from gptlab.training.loggers import finish_wandb
from gptlab.training.module import GPTLitModule
from gptlab.training.optimizer import build_optimizer
from gptlab.training.precision import autocast, pick_device


class BareLoop:
    """nanoGPT's training loop and nothing else: batch, forward, backward, clip, optimizer step."""

    def __init__(
        self,
        model: LanguageModel,
        optim: OptimConfig,
        windows: RandomWindows,
        gradient_clip_val: float | None,
        precision: str,  # a Trainer precision of AUTOCAST_DTYPES (check_bench_settings)
        compile: bool,
    ):
        self.model = model
        self.forward = torch.compile(model) if compile else model
        self.optimizer = build_optimizer(model, optim)
        self.windows = windows
        self.gradient_clip_val = gradient_clip_val
        self.precision = precision
        self.device = next(model.parameters()).device
        self.step = 0

    def run(self, steps: int) -> float:
        """Seconds per step, on average over `steps` steps."""
        synchronize(self.device)
        start = time.perf_counter()
        for _ in range(steps):
            x, y = (t.to(self.device, non_blocking=True) for t in self.windows.batch(self.step))
            with autocast(self.device.type, self.precision):
                _, loss = self.forward(x, y)
            loss.backward()
            if self.gradient_clip_val:
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.gradient_clip_val)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            self.step += 1
        synchronize(self.device)
        return (time.perf_counter() - start) / steps


def bare_loop(cfg: DictConfig, model: LanguageModel, optim: OptimConfig, windows: RandomWindows) -> BareLoop:
    return BareLoop(
        model,
        optim,
        windows,
        cfg.trainer.gradient_clip_val,
        str(cfg.trainer.precision),
        cfg.model.compile,
    )


def prepared_datamodule(cfg: DictConfig) -> TextDataModule:
    """The run's data, prepared and set up for training, outside a Trainer."""
    datamodule: TextDataModule = hydra.utils.instantiate(cfg.data)
    datamodule.prepare_data()
    datamodule.setup("fit")
    return datamodule


def training_windows(datamodule: TextDataModule) -> RandomWindows:
    """The batches rank 0 of a run trains on, from its first step."""
    return RandomWindows(
        datamodule.train_data,
        datamodule.block_size,
        datamodule.batch_size,
        datamodule.seed,
        rank=0,
        start_step=0,
        release=datamodule.corpus.release,
    )


class AlternateWithBareLoop(L.Callback):
    """Times gptlab's steps in rounds from inside its own fit, and between two rounds runs a
    round of the bare loop and a round of batch production. A round of gptlab spans whole
    iterations of Lightning's loop (fetching the batch, every hook, logging, the progress
    bar), measured from one step's start to the start of the step after the round."""

    def __init__(self, cfg: DictConfig, datamodule: TextDataModule):
        self.cfg = cfg
        self.datamodule = datamodule
        self.warmup = cfg.bench.warmup_steps
        self.steps = cfg.bench.steps_per_round
        self.rounds = cfg.bench.rounds
        self.gptlab: list[float] = []  # seconds per step, one entry per round
        self.bare: list[float] = []
        self.batch: list[float] = []
        self.peak_mb = {"gptlab": 0.0, "bare": 0.0}
        self.round_start: float | None = None

    def on_train_start(self, trainer: L.Trainer, pl_module: GPTLitModule) -> None:
        self.device = pl_module.device
        model = create_model(pl_module.model.config).to(self.device)  # a copy, with its own optimizer
        model.load_state_dict(pl_module.model.state_dict())
        self.bare_loop = bare_loop(self.cfg, model, pl_module.optim, training_windows(self.datamodule))
        self.batches = iter(self.datamodule.train_dataloader())  # what fit draws from

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: GPTLitModule, batch: Any, batch_idx: int
    ) -> None:
        step = trainer.global_step
        if step < self.warmup or (step - self.warmup) % self.steps:
            return
        synchronize(self.device)
        if self.round_start is not None:
            self.gptlab.append((time.perf_counter() - self.round_start) / self.steps)
            self.peak_mb["gptlab"] = max(self.peak_mb["gptlab"], peak_memory_mb(self.device))
        if len(self.gptlab) == self.rounds:
            return
        reset_peak_memory(self.device)
        self.bare.append(self.bare_loop.run(self.steps))
        self.peak_mb["bare"] = max(self.peak_mb["bare"], peak_memory_mb(self.device))
        self.batch.append(self.time_batches())
        reset_peak_memory(self.device)
        synchronize(self.device)
        self.round_start = time.perf_counter()

    def time_batches(self) -> float:
        """Seconds per batch out of the training stream and onto the device."""
        start = time.perf_counter()
        for _ in range(self.steps):
            x, y = next(self.batches)
            x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
        synchronize(self.device)
        return (time.perf_counter() - start) / self.steps


def bench_train(cfg: DictConfig) -> dict[str, Any]:
    # the steps gptlab.train builds a run with, and the timer among the callbacks
    resolved = build.resolve(cfg)
    build.set_up(cfg)
    datamodule = build.datamodule(cfg, resolved)
    module = build.module(cfg, resolved, datamodule)
    timer = AlternateWithBareLoop(cfg, datamodule)
    callbacks = [*build.callbacks(cfg, resolved, datamodule.tokenizer), timer]
    trainer = build.trainer(cfg, resolved, callbacks, build.loggers(cfg, resolved))
    try:
        trainer.fit(module, datamodule=datamodule)
    finally:
        finish_wandb(trainer)
    gptlab, bare, batch = (statistics.median(t) for t in (timer.gptlab, timer.bare, timer.batch))
    config = module.model.config
    tokens_per_step = cfg.data.batch_size * config.block_size
    result = {
        "device": str(timer.device),
        "params": module.model.num_parameters(),
        "gptlab_ms": 1e3 * gptlab,
        "bare_ms": 1e3 * bare,
        "ratio": gptlab / bare,
        "batch_ms": 1e3 * batch,
        "batch_share": batch / gptlab,
        "tokens_per_second": tokens_per_step / gptlab,
        "peak_memory_mb": timer.peak_mb,
        "rounds_ms": {"gptlab": [1e3 * t for t in timer.gptlab], "bare": [1e3 * t for t in timer.bare]},
    }
    if timer.device.type == "cuda":
        # Lightning's table of peak FLOP/s by GPU (H100 SXM/PCIe/NVL, H200, A100, ...), for bf16
        peak = cfg.bench.peak_flops or get_available_flops(timer.device, torch.bfloat16)
        flops = module.model.training_flops_per_token() * tokens_per_step
        result["mfu"] = flops / gptlab / peak if peak else None
    return result


def bench_precision(cfg: DictConfig, asked: str) -> dict[str, Any]:
    """trainer.precision=auto against the two precisions it chooses from on a CPU: a training step
    of the run's model in each, timed side by side over bench.rounds rounds (auto itself times a
    few), and which one auto took (cached, as a run would find it)."""
    if asked != "auto" or pick_device(cfg.trainer.accelerator, key="trainer.accelerator").type != "cpu":
        raise SettingError(
            "bench.parts=[precision] measures trainer.precision=auto on a CPU: leave trainer.precision "
            "and trainer.accelerator at auto or cpu"
        )
    vocab_size = prepared_datamodule(cfg).tokenizer.vocab_size
    config = GPTConfig(**model_settings(cfg), vocab_size=vocab_size)
    optim = OptimConfig(**OmegaConf.to_container(cfg.optim, resolve=True))
    seconds = build.time_steps(
        config, optim, cfg.data.batch_size, rounds=cfg.bench.rounds, budget_seconds=math.inf
    )
    fastest = min(seconds.values())
    return {
        "params": create_model(config).num_parameters(),
        "ms": {precision: 1e3 * s for precision, s in seconds.items()},
        "auto": cfg.trainer.precision,
        "auto_over_fastest": seconds[cfg.trainer.precision] / fastest
        if cfg.trainer.precision in seconds
        else None,
    }


def bench_bare(cfg: DictConfig) -> dict[str, Any]:
    """The bare loop alone: step time, and the memory that training adds to the process
    (parameters, gradients, AdamW's state, activations)."""
    device = pick_device(cfg.trainer.accelerator, key="trainer.accelerator")
    datamodule = prepared_datamodule(cfg)
    config = GPTConfig(**model_settings(cfg), vocab_size=datamodule.tokenizer.vocab_size)
    before_mb = current_memory_mb(device)
    reset_peak_memory(device)
    torch.manual_seed(cfg.seed)
    model = create_model(config).to(device)
    optim = OptimConfig(**OmegaConf.to_container(cfg.optim, resolve=True))
    loop = bare_loop(cfg, model, optim, training_windows(datamodule))
    loop.run(cfg.bench.warmup_steps)
    seconds = statistics.median(loop.run(cfg.bench.steps_per_round) for _ in range(cfg.bench.rounds))
    return {
        "device": str(device),
        "params": model.num_parameters(),
        "bare_ms": 1e3 * seconds,
        "tokens_per_second": cfg.data.batch_size * config.block_size / seconds,
        "memory_mb": peak_memory_mb(device) - before_mb,
    }


def train_table(train: dict[str, Any]) -> Table:
    table = Table(title=f"training step: {train['params']:,} parameters on {train['device']}")
    for column in ("", "gptlab", "bare PyTorch", "gptlab / bare"):
        table.add_column(column, justify="right")
    table.add_row("ms/step", f"{train['gptlab_ms']:.2f}", f"{train['bare_ms']:.2f}", f"{train['ratio']:.3f}")
    table.add_row("tokens/s", f"{train['tokens_per_second']:,.0f}", "", "")
    peak = train["peak_memory_mb"]
    table.add_row("peak memory MB", f"{peak['gptlab']:,.0f}", f"{peak['bare']:,.0f}", "")
    table.add_row(
        "batch production", f"{train['batch_ms']:.3f} ms", f"{train['batch_share']:.2%} of a step", ""
    )
    if "mfu" in train:
        table.add_row("MFU (bf16 peak)", "n/a" if train["mfu"] is None else f"{train['mfu']:.1%}", "", "")
    return table


def precision_table(precision: dict[str, Any]) -> Table:
    table = Table(title=f"training step in each precision: {precision['params']:,} parameters on the CPU")
    for column in ("precision", "ms/step", "vs the faster", ""):
        table.add_column(column, justify="right")
    fastest = min(precision["ms"].values())
    for name, ms in precision["ms"].items():
        table.add_row(
            name, f"{ms:.2f}", f"{ms / fastest:.3f}", "auto's choice" if name == precision["auto"] else ""
        )
    return table
