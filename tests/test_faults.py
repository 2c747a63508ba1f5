"""Faults of the machine and of training, each injected for real: a small filesystem filled up,
a read-only mount, two processes in one run directory, a loss that is NaN, the text a resumed
checkpoint trained on changed. Each ends with one line and a non-zero exit status (or, in a
sweep, a failed job and the sweep going on), and loses nothing saved before: the checkpoints stay
whole and loadable, and no partial file is left. The mounts need root: without it those cases
are skipped, and fail under CI (CI=true), as the SLURM tests do."""

import json
import math
import os
import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch

from gptlab.checkpoint import load_checkpoint
from tests.conftest import TINY, read_summary, run_here, started, train_command, train_here, wait_until
from tests.test_runs import metric_rows, validations

RUN = [*TINY, "logger=csv", "checkpoint.every_n_steps=5"]


def mounted(kind: str) -> None:
    """Skips (fails under CI) where this process cannot mount filesystems."""
    reason = None
    if os.geteuid() != 0:
        reason = f"a {kind} for the test needs root, to mount it"
    elif shutil.which("mount") is None:
        reason = "mount is not installed"
    if reason is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI needs the {kind}: {reason}")
        pytest.skip(reason)


def mount(*arguments: str) -> None:
    result = subprocess.run(["mount", *arguments], capture_output=True, text=True)
    if result.returncode != 0:
        if os.environ.get("CI") == "true":
            pytest.fail(f"mount {' '.join(arguments)}: {result.stderr.strip()}")
        pytest.skip(f"mount is not allowed here: {result.stderr.strip()}")


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 2 MB tmpfs: a real filesystem that fills up."""
    mounted("small filesystem")
    disk = tmp_path / "disk"
    disk.mkdir()
    mount("-t", "tmpfs", "-o", "size=2m", "tmpfs", str(disk))
    yield disk
    subprocess.run(["umount", "-l", str(disk)], check=True)


class FillTheDisk(L.Callback):
    """After a step, fills the run directory's filesystem up to the last few kilobytes, as
    another program writing there would."""

    def __init__(self, after_step: int, leave_bytes: int = 4096):
        self.after_step, self.leave_bytes = after_step, leave_bytes

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        if trainer.global_step == self.after_step:
            run_dir = Path(trainer.default_root_dir)
            free = shutil.disk_usage(run_dir).free
            with open(run_dir.parent / "filler", "wb") as f:
                f.write(b"\0" * max(0, free - self.leave_bytes))


def callback(name: str, **arguments: Any) -> str:
    """A callback of this module for the run's config, as an override."""
    fields = ", ".join(f"{k}: {v}" for k, v in arguments.items())
    return f"+callbacks.{name}={{_target_: {__name__}.{type_name(name)}, {fields}}}"


def type_name(name: str) -> str:
    return "".join(part.capitalize() for part in name.split("_"))


def one_line(stderr: str) -> str:
    """The last line of stderr, which must be the error, and no traceback before it."""
    assert "Traceback" not in stderr, stderr[-3000:]
    return stderr.strip().splitlines()[-1]


def no_partial_files(run_dir: Path) -> bool:
    return not [p for p in run_dir.rglob("*.partial")]


def test_a_full_disk_while_a_checkpoint_is_written_ends_in_one_line_and_keeps_the_one_before(
    small_disk: Path, shakespeare: Path
) -> None:
    run_dir = small_disk / "run"
    result = train_here(run_dir, *RUN, callback("fill_the_disk", after_step=7))

    assert result.returncode == 1
    line = one_line(result.stderr)
    last = run_dir / "checkpoints" / "last.ckpt"
    assert line.startswith(f"error: could not write {run_dir}") and "No space left on device" in line
    assert f"what was saved before: {last} (step 5)" in line
    assert line.endswith(f"then resume with ckpt_path={run_dir}")
    assert load_checkpoint(last)["global_step"] == 5  # whole, and loadable
    assert no_partial_files(run_dir)


def test_a_read_only_run_directory_is_refused_in_one_line(tmp_path: Path, shakespeare: Path) -> None:
    mounted("read-only mount")
    writable, read_only = tmp_path / "writable", tmp_path / "read-only"
    writable.mkdir()
    read_only.mkdir()
    mount("--bind", str(writable), str(read_only))
    try:
        mount("-o", "remount,bind,ro", str(read_only))
        result = train_here(read_only / "run", *RUN)
    finally:
        subprocess.run(["umount", "-l", str(read_only)], check=True)

    assert result.returncode == 1
    line = one_line(result.stderr)
    assert line.startswith(f"error: could not write {read_only}/run") and "Read-only file system" in line
    assert list(writable.iterdir()) == []


def test_a_second_process_in_a_live_run_s_directory_is_refused_and_a_dead_one_s_is_taken_over(
    tmp_path: Path, shakespeare: Path
) -> None:
    run_dir = tmp_path / "run"
    long = [*RUN, "trainer.max_steps=3000", "trainer.val_check_interval=1000"]
    first = started(train_command(run_dir, *long))
    wait_until(lambda: (run_dir / "csv" / "metrics.csv").exists(), first)
    record = {p: p.read_bytes() for p in (run_dir / ".hydra").glob("*.yaml")}

    second = train_here(run_dir, *RUN)  # a process other than the first: this one
    assert second.returncode == 1
    line = one_line(second.stderr)
    assert line.startswith(f"error: {run_dir} is in use by another run (process {first.pid} on ")
    assert line.endswith("): wait for it to end, or give another hydra.run.dir")
    resumed = run_here("train", f"ckpt_path={run_dir}")  # a resume of the live run: the same
    assert resumed.returncode == 1 and f"in use by another run (process {first.pid} on " in resumed.stderr
    assert {p: p.read_bytes() for p in (run_dir / ".hydra").glob("*.yaml")} == record  # untouched

    last = run_dir / "checkpoints" / "last.ckpt"
    wait_until(last.exists, first)
    first.send_signal(signal.SIGKILL)  # its holder gone (a lost node, the OOM killer)
    first.wait()
    # taken over: the run goes on from where the first saved, a few steps (the rest are alike)
    ends_at = load_checkpoint(last)["global_step"] + 20
    taken_over = run_here("train", f"ckpt_path={run_dir}", f"trainer.max_steps={ends_at}")
    assert taken_over.returncode == 0, taken_over.stderr[-3000:]
    assert read_summary(run_dir)["steps"] == ends_at


class PoisonWeights(L.Callback):
    """Makes one weight NaN after a step's update, as an overflow would: the validation and the
    checkpoint of that step see a model that is not finite, the next step a NaN loss."""

    def __init__(self, after_step: int):
        self.after_step = after_step

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        if trainer.global_step == self.after_step:
            with torch.no_grad():
                pl_module.model.lm_head.weight[0, 0] = math.nan


@pytest.mark.parametrize(
    ("poisoned_after", "what"),
    [(12, "the loss is nan at step 13"), (15, "the weights are not finite after step 15")],
    ids=["nan-loss", "nan-weights-at-a-checkpoint"],
)
def test_a_run_that_diverges_stops_in_one_line_and_never_saves_over_its_last_finite_checkpoint(
    tmp_path: Path, shakespeare: Path, poisoned_after: int, what: str
) -> None:
    run_dir = tmp_path / "run"
    with_samples = [o for o in RUN if not o.startswith("callbacks.text_samples")]  # they must not crash
    result = train_here(run_dir, *with_samples, callback("poison_weights", after_step=poisoned_after))

    assert result.returncode == 1
    line = one_line(result.stderr)
    last = run_dir / "checkpoints" / "last.ckpt"
    assert line.startswith(f"error: {what} (lr ")
    assert "the run diverged; train again with a lower optim.lr" in line
    assert f"the last finite checkpoint: {last} (step 10)" in line
    saved = load_checkpoint(last)
    assert saved["global_step"] == 10
    assert all(torch.isfinite(t).all() for t in saved["state_dict"].values())
    assert read_summary(run_dir) == {"error": line.removeprefix("error: ")}
    if poisoned_after == 15:  # the sample after that step's validation was skipped, said in the log
        assert (
            "no sample at step 15: the model's logits are not finite" in (run_dir / "train.log").read_text()
        )


def test_a_sweep_job_that_diverges_fails_with_its_reason_and_the_sweep_goes_on(
    tmp_path: Path, shakespeare: Path
) -> None:
    sweep_dir = tmp_path / "sweep"
    result = run_here(
        "train",
        "-m",
        f"hydra.sweep.dir={sweep_dir}",
        *RUN,
        f"data.path={shakespeare}",
        "optim=adamw",
        "optim.lr=5e-3,1e3",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert read_summary(sweep_dir / "0")["steps"] == 30
    assert "the run diverged" in read_summary(sweep_dir / "1")["error"]
    compared = run_here("compare", str(sweep_dir), "--json")
    failed = [row for row in json.loads(compared.stdout) if row["error"]]
    assert len(failed) == 1 and "the run diverged" in failed[0]["error"]


def test_a_resume_on_text_that_changed_says_so_and_refuses_characters_its_vocabulary_lacks(
    tmp_path: Path, shakespeare: Path
) -> None:
    text = tmp_path / "text.txt"
    text.write_text(shakespeare.read_text()[:200_000])
    run_dir = tmp_path / "run"
    assert train_here(run_dir, *RUN, f"data.path={text}").returncode == 0
    before = {p: p.stat().st_mtime_ns for p in (run_dir / "checkpoints").iterdir()}

    text.write_text(text.read_text() + "café\n")  # a character the vocabulary has not
    refused = run_here("train", f"ckpt_path={run_dir}", "trainer.max_steps=45")
    assert refused.returncode == 1
    assert one_line(refused.stderr) == (
        f"error: data file {text} has 1 character not in the vocabulary of the checkpoint it resumes: 'é'; "
        "a resumed run keeps its checkpoint's vocabulary (to train on this text, start a new run)"
    )
    assert {p: p.stat().st_mtime_ns for p in (run_dir / "checkpoints").iterdir()} == before

    text.write_text(text.read_text().replace("é", "e"))  # other text, in the same vocabulary
    resumed = run_here("train", f"ckpt_path={run_dir}", "trainer.max_steps=45")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "the corpus changed since the checkpoint" in (run_dir / "train.log").read_text()
    assert list(validations(run_dir)) == [15, 30, 45] and len(metric_rows(run_dir)) > 0
