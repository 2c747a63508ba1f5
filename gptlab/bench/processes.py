"""Figures that need processes of their own: start-up to the first step (startup), the bare step's
time and memory as a setting grows (grow), corpus preparation and start-up on large corpora
(corpus)."""

import json
import shutil
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig
from rich.table import Table

from gptlab.bench.memory import run_measured
from gptlab.data.corpus import character_start
from gptlab.faults import SettingError


def task_overrides(leave_out: tuple[str, ...] = ()) -> list[str]:
    """This command's overrides, for the child processes, less those of bench.* keys given."""
    return [
        o for o in HydraConfig.get().overrides.task if not o.split("=")[0].lstrip("+~").startswith(leave_out)
    ]


def run_child(command: list[str]) -> None:
    proc = subprocess.run(command, capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"{' '.join(command)} failed:\n{proc.stderr[-3000:]}")


# `python -m gptlab.train` that first imports torch and Lightning and writes, to the file its first
# argument names, when that was done (seconds after the process started): what the run's start-up
# takes beyond that is gptlab's share (its own imports, composing, building, the loggers' start)
TRAIN_AFTER_TORCH_AND_LIGHTNING = """
import json, sys, time
import torch, lightning
imported = time.time()
import runpy
from gptlab.runs.run_directory import process_started
with open(sys.argv.pop(1), "w") as f:
    json.dump({"torch_lightning_seconds": imported - process_started()}, f)
sys.argv[0] = "gptlab.train"
runpy.run_module("gptlab.train", run_name="__main__")
"""


def bench_startup(cfg: DictConfig, out_dir: Path) -> dict[str, Any]:
    """`python -m gptlab.train` with this command's overrides, stopped after one step: from
    process start to its first step (summary.json's startup_seconds), and how much of that came
    after `import torch, lightning` in the same process (gptlab's share)."""
    overrides = task_overrides(leave_out=("bench.",))
    startups, torch_lightning = [], []
    for run in range(cfg.bench.startup_runs):
        run_dir = out_dir / "startup" / str(run)
        imported = out_dir / "startup" / f"{run}.imported.json"
        imported.parent.mkdir(parents=True, exist_ok=True)
        command = [sys.executable, "-c", TRAIN_AFTER_TORCH_AND_LIGHTNING, str(imported), *overrides]
        run_child([*command, "trainer.max_steps=1", f"hydra.run.dir={run_dir}"])
        startups.append(json.loads((run_dir / "summary.json").read_text())["startup_seconds"])
        torch_lightning.append(json.loads(imported.read_text())["torch_lightning_seconds"])
    return {
        "seconds": statistics.median(startups),
        "torch_lightning_seconds": statistics.median(torch_lightning),
        "gptlab_seconds": statistics.median(s - t for s, t in zip(startups, torch_lightning, strict=True)),
        "runs": startups,
    }


def bench_grow(cfg: DictConfig, out_dir: Path) -> list[dict[str, Any]]:
    """The bare loop for each value of each bench.grow key, each in a fresh process, all in the
    precision this process runs in (trainer.precision=auto decided here): a child that timed the
    precisions itself would do so before its bare loop, whose memory would then reuse what those
    steps freed, and the rows would not all be in one precision."""
    leave_out = ("bench.parts", "bench.grow", "trainer.precision", *cfg.bench.grow)
    overrides = [*task_overrides(leave_out), f"trainer.precision={cfg.trainer.precision}"]
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
