"""Speed figures: `python -m gptlab.bench [experiment=... model.*=... bench.*=...]`, and muP's
coordinate check (bench.parts=[coord]).

Each figure is measured side by side with what it is compared to, alternating in rounds so
that the machine's noise falls on both; the median round is reported.

- train: a training step through gptlab (the Trainer, data module and module that
  `python -m gptlab.train` builds, with the run's loggers, callbacks and checkpoints) against
  the same model and batches in a bare PyTorch loop (batch, forward, backward, clip, AdamW
  step); batch production as a share of the step; tokens/s, peak memory, and on a GPU the
  model FLOPs utilisation (MFU).
- startup: process start to the first training step of `python -m gptlab.train`, and how much
  of it is importing.
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
import math
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import psutil
import torch
from hydra.core.hydra_config import HydraConfig
from lightning.fabric.utilities.throughput import get_available_flops
from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.table import Table

from gptlab import cli
from gptlab.config import OptimConfig, check_bench_settings, model_settings
from gptlab.data.corpus import character_start
from gptlab.data.datamodule import RandomWindows, TextDataModule
from gptlab.faults import SettingError
from gptlab.model import GPTConfig, LanguageModel, create_model, use_decoding_layout
from gptlab.runs.results import pyplot
from gptlab.training import build
from gptlab.training.loggers import finish_wandb
from gptlab.training.module import GPTLitModule
from gptlab.training.optimizer import adamw, build_optimizer
from gptlab.training.precision import AUTOCAST_DTYPES, inference_dtype, pick_device

CLEAR_REFS = Path("/proc/self/clear_refs")
STATUS = Path("/proc/self/status")


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    elif CLEAR_REFS.exists():
        CLEAR_REFS.write_text("5")  # Linux: the resident set's high-water mark starts again from now


def peak_memory_mb(device: torch.device) -> float:
    """CUDA: peak memory allocated by tensors. CPU: the process's peak resident set size (since
    the last reset on Linux; since process start elsewhere). On Linux that is VmHWM, not
    getrusage's ru_maxrss: the latter also holds the peak of the process that started this one
    (a vfork shares its memory until the exec), a whole pytest worker's, say."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    if STATUS.exists():
        hwm = next(line for line in STATUS.read_text().splitlines() if line.startswith("VmHWM:"))
        return int(hwm.split()[1]) / 2**10  # kB
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**10 if sys.platform != "darwin" else peak / 2**20  # kB elsewhere, bytes on macOS


def precision_dtype(precision: Any) -> torch.dtype | None:
    """The autocast dtype of a Trainer precision the bare loop can mirror."""
    if str(precision) not in AUTOCAST_DTYPES:
        raise SettingError(f"trainer.precision={precision} is not benchmarked: use 32-true or bf16-mixed")
    return AUTOCAST_DTYPES[str(precision)]


class BareLoop:
    """nanoGPT's training loop and nothing else: batch, forward, backward, clip, optimizer step."""

    def __init__(
        self,
        model: LanguageModel,
        optim: OptimConfig,
        windows: RandomWindows,
        gradient_clip_val: float | None,
        autocast_dtype: torch.dtype | None,
        compile: bool,
    ):
        self.model = model
        self.forward = torch.compile(model) if compile else model
        self.optimizer = build_optimizer(model, optim)
        self.windows = windows
        self.gradient_clip_val = gradient_clip_val
        self.autocast_dtype = autocast_dtype
        self.device = next(model.parameters()).device
        self.step = 0

    def run(self, steps: int) -> float:
        """Seconds per step, on average over `steps` steps."""
        synchronize(self.device)
        start = time.perf_counter()
        for _ in range(steps):
            x, y = (t.to(self.device, non_blocking=True) for t in self.windows.batch(self.step))
            with torch.autocast(self.device.type, self.autocast_dtype, enabled=bool(self.autocast_dtype)):
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
        precision_dtype(cfg.trainer.precision),
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


def current_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.memory_allocated(device) / 2**20
    return psutil.Process().memory_info().rss / 2**20


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


def task_overrides(leave_out: tuple[str, ...] = ()) -> list[str]:
    """This command's overrides, for the child processes, less those of bench.* keys given."""
    return [
        o for o in HydraConfig.get().overrides.task if not o.split("=")[0].lstrip("+~").startswith(leave_out)
    ]


def run_child(command: list[str]) -> None:
    proc = subprocess.run(command, capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"{' '.join(command)} failed:\n{proc.stderr[-3000:]}")


def bench_startup(cfg: DictConfig, out_dir: Path) -> dict[str, Any]:
    """`python -m gptlab.train` with this command's overrides, stopped after one step, from
    process start to its first step (summary.json's startup_seconds); and the import alone."""
    overrides = task_overrides(leave_out=("bench.",))
    imports, startups = [], []
    for run in range(cfg.bench.startup_runs):
        start = time.perf_counter()
        run_child([sys.executable, "-c", "import gptlab.train"])
        imports.append(time.perf_counter() - start)
        run_dir = out_dir / "startup" / str(run)
        run_child(
            [
                sys.executable,
                "-m",
                "gptlab.train",
                *overrides,
                "trainer.max_steps=1",
                f"hydra.run.dir={run_dir}",
            ]
        )
        startups.append(json.loads((run_dir / "summary.json").read_text())["startup_seconds"])
    return {
        "seconds": statistics.median(startups),
        "import_seconds": statistics.median(imports),
        "runs": startups,
    }


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


def bench_grow(cfg: DictConfig, out_dir: Path) -> list[dict[str, Any]]:
    """The bare loop for each value of each bench.grow key, each in a fresh process."""
    overrides = task_overrides(leave_out=("bench.parts", "bench.grow", *cfg.bench.grow))
    rows = []
    for key, values in cfg.bench.grow.items():
        for value in values:
            run_dir = out_dir / "grow" / f"{key}_{value}"
            run_child(
                [
                    sys.executable,
                    "-m",
                    "gptlab.bench",
                    *overrides,
                    "bench.parts=[bare]",
                    f"{key}={value}",
                    f"hydra.run.dir={run_dir}",
                ]
            )
            bare = json.loads((run_dir / "bench.json").read_text())["bare"]
            rows.append({"setting": key, "value": value} | bare)
    return rows


def high_water_mb(pid: int) -> float | None:
    """A running process's peak resident memory so far (VmHWM, Linux), or None."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    hwm = [line for line in status.splitlines() if line.startswith("VmHWM:")]
    return int(hwm[0].split()[1]) / 2**10 if hwm else None


def run_measured(command: list[str]) -> tuple[float, float]:
    """Runs command; its wall-clock seconds and its own peak resident memory in MB. On Linux that
    is the child's VmHWM, read every 10 ms while it runs: the maxrss getrusage gives for a child
    also holds this process's peak (the child's memory was a copy of this process's until its
    exec), which would hide the child's own whenever that is smaller."""
    with tempfile.TemporaryFile() as stderr:
        start = time.perf_counter()
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=stderr)
        peaks = []
        while not (ended := os.wait4(process.pid, os.WNOHANG))[0]:
            if (peak := high_water_mb(process.pid)) is not None:
                peaks.append(peak)
            time.sleep(0.01)
        seconds = time.perf_counter() - start
        _, status, usage = ended
        if os.waitstatus_to_exitcode(status):
            stderr.seek(0)
            raise RuntimeError(
                f"{' '.join(command)} failed:\n{stderr.read()[-3000:].decode(errors='replace')}"
            )
    return seconds, max(peaks) if peaks else usage.ru_maxrss / 2**10  # kB where there is no /proc


def repeated_text(source: Path, target: Path, size_bytes: int) -> None:
    """target: source's text again and again, size_bytes long (cut at a character's start)."""
    text = source.read_bytes()
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target, "wb") as f:
        for _ in range(size_bytes // len(text)):
            f.write(text)
        f.write(text[: character_start(text, size_bytes % len(text))])


def bench_corpus(cfg: DictConfig, out_dir: Path) -> dict[str, Any]:
    """Preparing corpora of growing size, then starting to train on the largest."""
    source = Path(cfg.data.path)
    if not source.is_file():
        raise SettingError(f"data.path={source} is not a file: bench.parts=[corpus] repeats one text file")
    settings = cfg.bench.corpus
    overrides = task_overrides(leave_out=("bench.", "data.path", "data/tokenizer", "data.tokenizer"))
    corpora = out_dir / "corpus"
    rows, largest = [], source
    try:
        for size_mb in settings.sizes_mb:
            largest = corpora / f"{size_mb}MB.txt"
            repeated_text(source, largest, int(size_mb * 1e6))
            for tokenizer in settings.tokenizers:
                tokenizer_overrides = [f"data/tokenizer={tokenizer}"]
                if tokenizer == "bpe":
                    tokenizer_overrides.append(f"data.tokenizer.vocab_size={settings.bpe_vocab_size}")
                command = [sys.executable, "-m", "gptlab.prepare", *overrides, *tokenizer_overrides]
                seconds, peak_mb = run_measured([*command, f"data.path={largest}"])
                (manifest_file,) = (corpora / "gptlab-prepared").glob(
                    f"{largest.stem}-{tokenizer}*/manifest.json"
                )
                manifest = json.loads(manifest_file.read_text())
                rows.append(
                    {
                        "size_mb": size_mb,
                        "tokenizer": tokenizer,
                        "tokens": manifest["tokens"],
                        "tokenizer_seconds": manifest["seconds"]["tokenizer"],
                        "encoding_seconds": manifest["seconds"]["encoding"],
                        "mb_per_second": size_mb / sum(manifest["seconds"].values()),
                        "process_seconds": seconds,
                        "peak_memory_mb": peak_mb,
                    }
                )
        startup = startup_on(cfg, overrides, {"data.path": source, "largest": largest}, out_dir)
    finally:
        if not settings.keep:
            shutil.rmtree(corpora, ignore_errors=True)
    return {"prepare": rows, "startup": startup, "largest_mb": settings.sizes_mb[-1]}


def startup_on(
    cfg: DictConfig, overrides: list[str], texts: dict[str, Path], out_dir: Path
) -> dict[str, Any]:
    """Start-up to the first step (summary.json's startup_seconds) and peak memory of a one-step
    `python -m gptlab.train` on each (already prepared) text, runs alternating; medians."""
    figures: dict[str, dict[str, list[float]]] = {name: {"seconds": [], "peak_mb": []} for name in texts}
    for run in range(cfg.bench.startup_runs + 1):  # the first round prepares what is not yet prepared
        for name, text in texts.items():
            run_dir = out_dir / "corpus_startup" / f"{name}_{run}"
            command = [sys.executable, "-m", "gptlab.train", *overrides, f"data.path={text}"]
            _, peak_mb = run_measured(
                [*command, "trainer.max_steps=1", "logger=none", f"hydra.run.dir={run_dir}"]
            )
            if run:
                figures[name]["seconds"].append(
                    json.loads((run_dir / "summary.json").read_text())["startup_seconds"]
                )
                figures[name]["peak_mb"].append(peak_mb)
    return {name: {k: statistics.median(v) for k, v in f.items()} for name, f in figures.items()}


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


def growth_table(rows: list[dict[str, Any]]) -> Table:
    table = Table(title="bare training step as the model grows")
    for column in ("setting", "value", "parameters", "ms/step", "tokens/s", "memory MB"):
        table.add_column(column, justify="right")
    for r in rows:
        table.add_row(
            r["setting"],
            str(r["value"]),
            f"{r['params']:,}",
            f"{r['bare_ms']:.1f}",
            f"{r['tokens_per_second']:,.0f}",
            f"{r['memory_mb']:,.0f}",
        )
    return table


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


def corpus_table(corpus: dict[str, Any]) -> Table:
    table = Table(title="preparing a corpus (data.path repeated), each in a fresh process")
    columns = ("size MB", "tokenizer", "tokens", "tokenizer s", "encoding s", "MB/s", "peak memory MB")
    for column in columns:
        table.add_column(column, justify="right")
    for r in corpus["prepare"]:
        table.add_row(
            f"{r['size_mb']:,}",
            r["tokenizer"],
            f"{r['tokens']:,}",
            f"{r['tokenizer_seconds']:.1f}",
            f"{r['encoding_seconds']:.1f}",
            f"{r['mb_per_second']:.1f}",
            f"{r['peak_memory_mb']:,.0f}",
        )
    return table


def print_tables(results: dict[str, Any], console: Console) -> None:
    if train := results.get("train"):
        console.print(train_table(train))
    if startup := results.get("startup"):
        console.print(
            f"start-up to the first step: {startup['seconds']:.2f} s "
            f"(of which `import gptlab.train`: {startup['import_seconds']:.2f} s)"
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


if __name__ == "__main__":
    main()
