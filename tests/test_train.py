"""End to end: the real entry point, the real Trainer, real files in the run directory. Runs go
through the entry point's main() in this process (tests.conftest.run_here), except where the
process is the point: DDP ranks, which Lightning starts by running the command line again."""

import csv
import json
import math
import os

import pytest
import torch

from gptlab.data.tokenizer import tokenizer_from_dict
from gptlab.model import GPTConfig, create_model
from tests.conftest import TINY, read_summary, run_here, sweep, sweep_here, train


def validations(run_dir) -> list[dict[str, str]]:
    with open(run_dir / "csv" / "metrics.csv") as f:
        return [row for row in csv.DictReader(f) if row["val_loss"]]


def val_losses(run_dir) -> list[float]:
    return [float(row["val_loss"]) for row in validations(run_dir)]


def steps_validated(run_dir) -> list[int]:
    return [int(row["step"]) + 1 for row in validations(run_dir)]


@pytest.mark.slow
def test_training_run_learns_and_writes_a_complete_run_directory(run_train) -> None:
    result = run_train(*TINY, "trainer.max_steps=60", "optim.lr=1e-2")
    assert result.returncode == 0, result.stderr
    run = result.run_dir

    losses = val_losses(run)
    assert len(losses) == 4  # every 15 steps
    assert losses[-1] < losses[0] - 0.2
    assert losses[-1] < math.log(65) - 1.0  # far better than guessing uniformly

    summary = read_summary(run)
    assert summary["steps"] == 60
    assert summary["best_val_loss"] == pytest.approx(min(losses))
    assert summary["final_val_loss"] == pytest.approx(losses[-1])
    assert summary["params"] > 0 and summary["train_seconds"] > 0 and summary["tokens_per_second"] > 0
    assert 0 < summary["startup_seconds"] < result.seconds
    # tokens/s over the training steps alone: validations, samples and checkpoints are left out
    assert summary["tokens"] == 60 * 8 * 16
    assert summary["tokens_per_second"] > summary["tokens"] / summary["train_seconds"]
    # train_loss and lr are logged on the steps the loggers write, every log_every_n_steps (10)
    with open(run / "csv" / "metrics.csv") as f:
        logged = [int(row["step"]) for row in csv.DictReader(f) if row["train_loss"]]
    assert logged == [9, 19, 29, 39, 49, 59]
    assert (run / "checkpoints" / "last.ckpt").exists()
    assert summary["last_ckpt"] == str(run / "checkpoints" / "last.ckpt")
    assert os.path.exists(summary["best_ckpt"])
    last_line = result.stdout.strip().splitlines()[-1]
    assert last_line == f"best val_loss {summary['best_val_loss']:.4f}, checkpoint {summary['best_ckpt']}"
    assert (run / ".hydra" / "overrides.yaml").exists()

    # wandb went offline by itself (no credentials in this environment) and wrote its run files
    assert "no credentials found, logging offline" in result.stdout + result.stderr
    offline_runs = list((run / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(offline_runs) == 1 and offline_runs[0].stat().st_size > 0

    # the checkpoint alone rebuilds model and tokenizer, loaded as plain data
    checkpoint = torch.load(summary["best_ckpt"], weights_only=True)
    hparams = checkpoint["hyper_parameters"]
    tokenizer = tokenizer_from_dict(hparams["tokenizer"])
    assert tokenizer.vocab_size == hparams["model"]["vocab_size"] == 65
    model = create_model(GPTConfig(**hparams["model"]))
    weights = {k.removeprefix("model."): v for k, v in checkpoint["state_dict"].items()}
    model.load_state_dict(weights)
    out = model.generate(torch.tensor([tokenizer.encode("ROMEO:")]), max_new_tokens=20)
    assert tokenizer.decode(out[0].tolist()).startswith("ROMEO:")


@pytest.mark.slow
def test_fast_experiment_switches_work_on_cpu(tmp_path) -> None:
    """experiment=shakespeare_char_fast's GPU settings (bf16 autocast, fused AdamW, torch.compile)
    on a tiny model on CPU: it trains, checkpoints keep plain weight names, and the compiled
    forward is not recompiled step after step (only once, for validation's no-grad mode)."""
    result = train(  # in a process of its own: torch reads TORCH_LOGS when it is imported
        tmp_path / "run",
        "experiment=shakespeare_char_fast",
        *TINY,
        "model.dropout=0.1",
        timeout=600,
        # compiled in the one process: a pool of compile workers would each import torch first
        env={"TORCH_LOGS": "recompiles", "TORCHINDUCTOR_COMPILE_THREADS": "1"},
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("Recompiling function") <= 1, result.stderr
    summary = read_summary(result.run_dir)
    assert summary["steps"] == 30 and summary["best_val_loss"] < math.log(65)
    checkpoint = torch.load(summary["last_ckpt"], weights_only=True)
    assert all(k.startswith(("model.", "val_")) for k in checkpoint["state_dict"])
    assert checkpoint["hyper_parameters"]["compile"] is True


@pytest.mark.slow
def test_ddp_on_two_cpu_processes(tmp_path, shakespeare) -> None:
    # the README's headline example, shortened, on a copy of the text no process has prepared yet
    text = tmp_path / "data" / "input.txt"
    text.parent.mkdir()
    text.write_text(shakespeare.read_text())
    result = train(  # Lightning starts rank 1 by running the command line again: a process of its own
        tmp_path / "run",
        f"data.path={text}",
        "experiment=classic",  # AdamW under DDP here; Muon's: tests/test_optimizer.py
        "model.n_head=6",
        "trainer.devices=2",
        "trainer.accelerator=cpu",
        "trainer.max_steps=20",
        "trainer.val_check_interval=10",
        "data.val_tokens=256",
        "logger=csv",
    )
    assert result.returncode == 0, result.stderr
    summary = read_summary(result.run_dir)
    assert summary["world_size"] == 2 and summary["steps"] == 20
    # the corpus was prepared once, and both ranks memory-mapped that one token file
    (token_file,) = (tmp_path / "data" / "gptlab-prepared").glob("input-char-*/tokens.bin")
    mapped = [line.split("] - ")[-1] for line in result.stdout.splitlines() if "memory-mapped from" in line]
    assert sorted(mapped) == [
        f"rank 0: 1,115,394 tokens (prepared by this process) memory-mapped from {token_file}",
        f"rank 1: 1,115,394 tokens (prepared before) memory-mapped from {token_file}",
    ]
    assert len(val_losses(result.run_dir)) == 2
    # the two ranks scored the validation set between them, each token once: one process
    # scoring the final checkpoint alone gets the same val_loss
    proc = run_here("eval", f"ckpt_path={summary['last_ckpt']}", "batch_size=5")
    assert proc.returncode == 0, proc.stderr
    (line,) = [line for line in proc.stdout.splitlines() if line.startswith("val_loss ")]
    assert float(line.split()[1]) == pytest.approx(summary["final_val_loss"], abs=1e-4)
    checkpoints = {p.name for p in (result.run_dir / "checkpoints").iterdir()}
    assert checkpoints == {"last.ckpt", os.path.basename(summary["best_ckpt"])}
    assert result.stdout.count("best val_loss") == 1  # printed by rank 0 only


@pytest.mark.slow
def test_training_without_any_logger(run_train) -> None:
    result = run_train(*TINY, "logger=none")
    assert result.returncode == 0, result.stderr
    summary = read_summary(result.run_dir)
    assert summary["steps"] == 30 and summary["best_val_loss"] is not None
    assert not (result.run_dir / "csv").exists() and not (result.run_dir / "wandb").exists()


@pytest.mark.slow
def test_multirun_prints_the_table_of_its_runs(tmp_path, shakespeare) -> None:
    sweep_dir = tmp_path / "sweep"
    overrides = ["trainer.max_steps=20", "trainer.val_check_interval=10", "data.val_tokens=256", "logger=csv"]
    proc = sweep_here(sweep_dir, "experiment=ladder/bigram,ladder/single_head", *overrides)
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in sweep_dir.iterdir() if p.is_dir()) == ["0", "1"]
    rows = [
        line for line in proc.stdout.splitlines() if line.startswith("│") and "experiment=ladder/" in line
    ]
    assert len(rows) == 2 and "bigram" in rows[0] and "single_head" in rows[1]
    for row, job in zip(rows, ("0", "1"), strict=True):
        summary = read_summary(sweep_dir / job)
        assert f"{summary['best_val_loss']:.4f}" in row
    assert "2.49" in rows[0] and "2.40" in rows[1]  # the lecture's figures beside ours


@pytest.mark.slow
def test_text_samples_reach_the_console_and_a_wandb_table(run_train) -> None:
    overrides = [o for o in TINY if not o.startswith("callbacks.text_samples")]
    result = run_train(*overrides, "callbacks.text_samples.max_new_tokens=40")
    assert result.returncode == 0, result.stderr
    output = result.stdout + result.stderr
    assert "sample at step 15:" in output and "sample at step 30:" in output
    files = (result.run_dir / "wandb").glob("offline-run-*/files/media/table/samples_*.table.json")
    tables = sorted((json.loads(f.read_text()) for f in files), key=lambda table: table["data"][-1][0])
    assert [table["data"][-1][0] for table in tables] == [15, 30]  # the step of each validation
    assert tables[-1]["columns"] == ["step", "text"]
    text = tables[-1]["data"][-1][1]
    assert text.startswith("\n") and len(text) == 41


def table_rows(stdout: str) -> list[str]:
    return [line for line in stdout.splitlines() if line.startswith("│") and "model.n_head=" in line]


@pytest.mark.slow
def test_a_failing_job_does_not_end_the_sweep(tmp_path, shakespeare) -> None:
    proc = sweep_here(tmp_path / "sweep", "model.n_head=5,4", *TINY[2:], "logger=csv")
    assert proc.returncode == 0, proc.stderr
    failed = read_summary(tmp_path / "sweep" / "0")
    assert list(failed) == ["error"]
    assert failed["error"].startswith("model.n_embd=32 is not divisible by model.n_head=5")
    assert read_summary(tmp_path / "sweep" / "1")["steps"] == 30
    rows = table_rows(proc.stdout)
    assert len(rows) == 2 and "failed" in rows[0] and "not divisible" in rows[0]


@pytest.mark.slow
def test_ddp_inside_a_sweep_keeps_one_run_directory_per_job(tmp_path, shakespeare) -> None:
    overrides = [
        *TINY[2:],
        "trainer.devices=2",
        "trainer.accelerator=cpu",
        "logger=csv",
    ]
    proc = sweep(tmp_path / "sweep", "model.n_head=2,4", *overrides)
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in (tmp_path / "sweep").iterdir()) == ["0", "1", "multirun.yaml"]
    for job in ("0", "1"):
        summary = read_summary(tmp_path / "sweep" / job)
        assert summary["world_size"] == 2 and summary["steps"] == 30
    assert len(table_rows(proc.stdout)) == 2


@pytest.mark.slow
def test_grid_sweep_and_compare(tmp_path, shakespeare) -> None:
    sweep_dir = tmp_path / "sweep"
    proc = sweep_here(
        sweep_dir,
        "model.n_head=2,4",
        "model.n_layer=1,2",
        *TINY[2:],
        "logger=csv",
    )
    assert proc.returncode == 0, proc.stderr
    summaries = [read_summary(sweep_dir / str(job)) for job in range(4)]
    assert all(s["steps"] == 30 for s in summaries)
    # each job's start-up is its own, counted from its own start: the first job's imports and
    # training are not in the second's
    first, second = summaries[:2]
    assert second["started_at"] >= first["finished_at"]

    listed = run_here("compare", str(sweep_dir), "--json", "--plot", str(tmp_path / "runs.png"))
    assert listed.returncode == 0, listed.stderr
    runs = json.loads(listed.stdout)
    assert len(runs) == 4
    assert [r["best_val_loss"] for r in runs] == sorted(s["best_val_loss"] for s in summaries)  # best first
    assert {r["overrides"].split(" ")[0] + " " + r["overrides"].split(" ")[1] for r in runs} == {
        f"model.n_head={h} model.n_layer={n}" for h in (2, 4) for n in (1, 2)
    }
    assert (tmp_path / "runs.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    as_csv = run_here("compare", str(sweep_dir), "--csv")
    assert (
        as_csv.stdout.splitlines()[0].startswith("run_dir,overrides,")
        and len(as_csv.stdout.splitlines()) == 5
    )


@pytest.mark.slow
def test_a_job_crashing_mid_training_does_not_end_the_sweep(tmp_path, shakespeare) -> None:
    # early stopping on a metric nobody logs raises at the first validation, inside fit
    crash = [
        "+callbacks.stop._target_=lightning.pytorch.callbacks.EarlyStopping",
        "+callbacks.stop.monitor=nope,val_loss",
    ]
    proc = sweep_here(tmp_path / "sweep", *crash, *TINY, "logger=csv")
    assert proc.returncode == 0, proc.stderr
    crashed = read_summary(tmp_path / "sweep" / "0")
    assert crashed["error"].startswith("crashed: RuntimeError: Early stopping conditioned on metric `nope`")
    assert (
        "Traceback" in (tmp_path / "sweep" / "0" / "train.log").read_text()
    )  # the details, in the job's log
    assert read_summary(tmp_path / "sweep" / "1")["steps"] == 30
