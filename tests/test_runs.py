"""Runs you can trust: every run ends validated and saved, and a resumed run is the same run.
The runs killed with SIGKILL are processes of their own; the others run in this process
(tests.conftest.run_here)."""

import csv
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
import yaml

from gptlab.checkpoint import load_checkpoint
from tests.conftest import REPO_ROOT, TINY, offline_env, read_summary, run_here, train_command, train_here


def metric_rows(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "csv" / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def validations(run_dir: Path) -> dict[int, float]:
    """val_loss by the step it validated (metrics.csv counts steps from 0: step 49 is the 50th)."""
    return {int(r["step"]) + 1: float(r["val_loss"]) for r in metric_rows(run_dir) if r.get("val_loss")}


def last_step(run_dir: Path) -> int:
    return load_checkpoint(run_dir / "checkpoints" / "last.ckpt")["global_step"]


@pytest.mark.slow
def test_a_run_ends_validated_and_saved_at_its_last_step(tmp_path: Path, shakespeare: Path) -> None:
    result = train_here(
        tmp_path / "run", *TINY, "trainer.max_steps=130", "trainer.val_check_interval=50", "logger=csv"
    )
    assert result.returncode == 0, result.stderr
    run = result.run_dir
    assert list(validations(run)) == [50, 100, 130]  # 130 is not a multiple of 50: validated all the same
    assert last_step(run) == 130
    summary = read_summary(run)
    assert summary["steps"] == 130
    assert summary["final_val_loss"] == pytest.approx(validations(run)[130])
    assert summary["best_val_loss"] == pytest.approx(min(validations(run).values()))
    assert summary["tokens"] == 130 * 8 * 16
    # the run's own bits per character: val_loss in nats over ln 2, one character a token
    assert summary["final_val_bpc"] == pytest.approx(summary["final_val_loss"] / 0.6931471805599453)


@pytest.mark.slow
def test_a_run_stopped_by_max_time_ends_validated_and_saved(tmp_path: Path, shakespeare: Path) -> None:
    result = train_here(
        tmp_path / "run",
        *TINY,
        "trainer.max_steps=-1",  # no step limit: the clock stops it
        "optim.decay_steps=100000",
        "trainer.max_time=00:00:00:04",
        "trainer.val_check_interval=1000000",
        "logger=csv",
    )
    assert result.returncode == 0, result.stderr
    summary = read_summary(result.run_dir)
    assert summary["steps"] > 0
    assert list(validations(result.run_dir)) == [summary["steps"]]  # its only validation: the last step
    assert last_step(result.run_dir) == summary["steps"]


@pytest.mark.slow
def test_no_validation_at_all_still_saves_the_last_step(tmp_path: Path, shakespeare: Path) -> None:
    result = train_here(tmp_path / "run", *TINY, "trainer.limit_val_batches=0", "logger=csv")
    assert result.returncode == 0, result.stderr
    summary = read_summary(result.run_dir)
    assert summary["steps"] == 30 and summary["best_val_loss"] is None and summary["final_val_loss"] is None
    assert validations(result.run_dir) == {}
    assert last_step(result.run_dir) == 30
    compare = run_here("compare", str(result.run_dir))
    assert compare.returncode == 0 and "not validated" in compare.stdout, compare.stderr


def start(run_dir: Path, *overrides: str) -> subprocess.Popen:
    return subprocess.Popen(
        train_command(run_dir, *overrides),
        cwd=REPO_ROOT,
        env=offline_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def kill_when(proc: subprocess.Popen, condition: Callable[[], bool]) -> None:
    """SIGKILL proc as soon as condition() holds; it must not have finished first."""
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline:
        try:
            if condition():
                break
        except (OSError, RuntimeError, ValueError, KeyError):  # a file not there yet
            pass
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"


# big enough that a step takes a few milliseconds, so kills land where they are aimed
RESUMABLE = [
    "experiment=classic",  # AdamW's resume here; Muon's: tests/test_optimizer.py
    "model.n_layer=2",
    "model.n_head=2",
    "model.n_embd=64",
    "model.block_size=32",
    "model.dropout=0.1",  # dropout draws random numbers: resuming must draw the same ones
    "data.batch_size=16",
    "data.val_tokens=2048",
    "trainer.max_steps=200",
    "trainer.val_check_interval=50",
    "checkpoint.every_n_steps=10",
    "optim.warmup_steps=20",
    "callbacks.text_samples.max_new_tokens=20",
]


def resume(run_dir: Path) -> None:
    """`python -m gptlab.train ckpt_path=<run dir>`, nothing else: the run's own settings and
    directory (named relative to where the command runs, as people type it)."""
    result = run_here("train", f"ckpt_path={os.path.relpath(run_dir, REPO_ROOT)}")
    assert result.returncode == 0, result.stderr


@pytest.mark.slow
def test_a_run_killed_anywhere_and_resumed_by_its_directory_is_the_same_run(
    tmp_path: Path, shakespeare: Path
) -> None:
    # one batch a step, killed right after a validation (before or after its last.ckpt is written)
    once = [*RESUMABLE, "trainer.accumulate_grad_batches=1"]
    whole = train_here(tmp_path / "whole once", *once)
    assert whole.returncode == 0, whole.stderr
    killed_once = tmp_path / "killed once"
    kill_when(start(killed_once, *once), lambda: 100 in validations(killed_once))
    resume(killed_once)
    # two batches a step (so a kill may fall between a step's batches), killed between two
    # checkpoints, then once more between validations
    twice = [*RESUMABLE, "trainer.accumulate_grad_batches=2"]
    whole = train_here(tmp_path / "whole twice", *twice)
    assert whole.returncode == 0, whole.stderr
    killed_twice = tmp_path / "killed twice"
    kill_when(start(killed_twice, *twice), lambda: last_step(killed_twice) >= 30)
    killed_at = last_step(killed_twice)
    proc = subprocess.Popen(
        [sys.executable, "-m", "gptlab.train", f"ckpt_path={killed_twice}"],
        cwd=REPO_ROOT,
        env=offline_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    kill_when(proc, lambda: last_step(killed_twice) >= killed_at + 60)
    resume(killed_twice)

    for run, accumulate in ((killed_once, 1), (killed_twice, 2)):
        expected = read_summary(tmp_path / run.name.replace("killed", "whole"))
        summary = read_summary(run)
        assert summary["steps"] == 200
        assert summary["best_val_loss"] == pytest.approx(expected["best_val_loss"], abs=1e-4)
        assert summary["final_val_loss"] == pytest.approx(expected["final_val_loss"], abs=1e-4)
        assert summary["tokens"] == expected["tokens"] == 200 * accumulate * 16 * 32  # summed over the pieces
        assert summary["best_ckpt"] == str(run / "checkpoints" / Path(expected["best_ckpt"]).name)
        # the same validations, each once, in the one metrics.csv
        got, want = validations(run), validations(tmp_path / run.name.replace("killed", "whole"))
        assert list(got) == list(want) == [50, 100, 150, 200]
        assert list(got.values()) == pytest.approx(list(want.values()), abs=1e-4)
        logged = [int(r["step"]) for r in metric_rows(run) if r["train_loss"]]
        assert logged == list(range(9, 200, 10))
        # one wandb run, continued by each resume (offline: one folder per process, one run id)
        ids = {p.name.rsplit("-", 1)[1] for p in (run / "wandb").glob("offline-run-*")}
        assert len(ids) == 1 and len(list((run / "wandb").glob("offline-run-*"))) >= 2


class SignalDuringStep(L.Callback):
    """Sends this process SIGTERM during one step (0-based), as a scheduler would, once."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        if trainer.global_step == self.step + 1:  # the step's optimizer step is done
            os.kill(os.getpid(), signal.SIGTERM)


@pytest.mark.slow
def test_a_run_stopped_at_a_logging_step_keeps_that_step_s_row(tmp_path: Path, shakespeare: Path) -> None:
    # step 9 is a logging step (trainer.log_every_n_steps=10) without a validation: its train_loss
    # reaches the loggers after the callbacks' on_train_batch_end, where the stop is decided
    run, settings = tmp_path / "run", [*TINY, "logger=csv"]
    signalled = f"+callbacks.signal={{_target_: {__name__}.SignalDuringStep, step: 9}}"
    stopped = train_here(run, *settings, signalled)
    assert stopped.returncode == 143, stopped.stderr[-3000:]
    assert load_checkpoint(run / "checkpoints" / "last.ckpt")["global_step"] == 10
    assert [int(r["step"]) for r in metric_rows(run) if r.get("train_loss")] == [9]

    resumed = train_here(run, *settings, f"ckpt_path={run}")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert [int(r["step"]) for r in metric_rows(run) if r.get("train_loss")] == [9, 19, 29]  # each once


@pytest.mark.slow
def test_ckpt_path_last_in_a_given_run_directory(tmp_path: Path, shakespeare: Path) -> None:
    run = tmp_path / "run"
    first = train_here(run, *TINY, "ckpt_path=last", "logger=csv")  # nothing to resume yet: starts at step 0
    assert first.returncode == 0, first.stderr
    assert "ckpt_path=last: no" in first.stdout + first.stderr
    longer = run_here("train", f"hydra.run.dir={run}", "ckpt_path=last", "trainer.max_steps=45")  # extends it
    assert longer.returncode == 0, longer.stderr
    assert list(validations(run)) == [15, 30, 45]
    summary = read_summary(run)
    assert summary["steps"] == 45 and summary["tokens"] == 45 * 8 * 16
    assert last_step(run) == 45


@pytest.mark.slow
def test_a_resume_that_contradicts_the_checkpoint_is_refused_and_changes_nothing(
    tmp_path: Path, shakespeare: Path
) -> None:
    run = tmp_path / "run"
    assert train_here(run, *TINY, "logger=csv").returncode == 0

    def files() -> dict[Path, bytes]:  # but a refused resume's own Hydra record, set aside, and the
        # lock each resume held while it checked (it names its holder)
        return {
            p: p.read_bytes()
            for p in run.rglob("*")
            if p.is_file() and p.parent.name != "resume" and p.name != "launch.lock"
        }

    before = files()
    cases = {
        "model.n_layer=2": "model.n_layer=2 contradicts the checkpoint, trained with model.n_layer=1",
        "optim.lr=0.01": "optim.lr=0.01 contradicts the checkpoint, trained with optim.lr=0.0059",
        "data.batch_size=4": "data.batch_size=4 contradicts the checkpoint, trained with data.batch_size=8",
        "seed=7": "data.seed=7 contradicts the checkpoint",
        "trainer.max_steps=30": "is at step 30, and trainer.max_steps=30: give a larger trainer.max_steps",
    }
    for override, message in cases.items():
        result = run_here("train", f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}", override)
        assert result.returncode == 1, (override, result.stderr)
        assert result.stderr.strip().splitlines()[-1].startswith("error: ")
        assert message in result.stderr, (override, result.stderr)
    assert files() == before  # checkpoints, metrics.csv, summary.json and .hydra/ untouched


def test_without_periodic_validation_the_last_step_is_validated_and_saved(
    tmp_path: Path, shakespeare: Path
) -> None:
    result = train_here(
        tmp_path / "run", *TINY, "trainer.max_steps=20", "trainer.val_check_interval=null", "logger=none"
    )
    assert result.returncode == 0, result.stderr
    summary = read_summary(result.run_dir)
    assert summary["steps"] == 20 and summary["best_val_loss"] == summary["final_val_loss"]
    best = torch.load(summary["best_ckpt"], weights_only=True)["state_dict"]
    last = torch.load(summary["last_ckpt"], weights_only=True)["state_dict"]
    assert all(torch.equal(best[k], last[k]) for k in best)


@pytest.mark.slow
def test_a_run_from_before_the_default_recipe_resumes_as_it_was_composed(
    tmp_path: Path, shakespeare: Path
) -> None:
    """Runs composed before conf/experiment/default.yaml had no experiment: the classic recipe,
    which today is experiment=classic. Resumed by its directory alone, such a run composes as it
    did, not with today's default (Muon and rotary positions, which its checkpoint refuses)."""
    run = tmp_path / "old"
    assert train_here(run, *TINY, "~experiment", "logger=csv").returncode == 0
    overrides = run / ".hydra" / "overrides.yaml"  # as an old run's record has it: no experiment
    overrides.write_text(overrides.read_text().replace("- ~experiment\n", ""))
    assert "experiment" not in overrides.read_text()

    resumed = run_here("train", f"ckpt_path={run}", "trainer.max_steps=45")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert list(validations(run)) == [15, 30, 45]
    settings = yaml.safe_load((run / ".hydra" / "config.yaml").read_text())
    assert (settings["model"]["position"], settings["optim"]["name"]) == ("learned", "adamw")
