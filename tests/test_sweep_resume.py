"""A grid sweep launched again into its own directory goes on where it stopped
(gptlab/runs/sweep_directory.py): stopped by Ctrl-C, SIGTERM or SIGKILL of its driver, with the
basic launcher (the jobs run in the driver) and the parallel one (each job a process of its own)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from gptlab.analysis import seeds
from tests.conftest import (
    TINY,
    read_summary,
    run_here,
    started,
    sweep_here,
    train_command,
    train_here,
    wait_until,
)
from tests.test_cluster import validation_rows
from tests.test_runs import metric_rows
from tests.test_slurm import wandb_parts

# three jobs of 400 steps, each validated and saved at step 200 (dropout: a resume that lost the
# random state would end elsewhere)
JOBS = [
    *TINY,
    "trainer.max_steps=400",
    "trainer.val_check_interval=200",
    "model.dropout=0.1",
    "logger=[csv,wandb]",
]
SEEDS = "seed=1,2,3"


def start_sweep(sweep_dir: Path, *overrides: str, new_session: bool = False) -> subprocess.Popen:
    """`python -m gptlab.train -m ...` into sweep_dir, started now (new_session: its processes
    a group of their own, which a test can kill at once)."""
    command = train_command(sweep_dir, *overrides)
    command[3:4] = ["-m", f"hydra.sweep.dir={sweep_dir}"]  # in place of hydra.run.dir
    return started(command, new_session=new_session)


def stopped(process: subprocess.Popen, signum: signal.Signals) -> subprocess.CompletedProcess:
    process.send_signal(signum)
    stdout, stderr = process.communicate(timeout=120)
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def wandb_service_gone(driver: subprocess.Popen, timeout: float = 60) -> None:
    """Waits for the wandb service of a killed process to notice and end: it goes on writing its
    log (wandb/.../logs/debug-core.log of the first run it served) for a few seconds."""
    deadline = time.monotonic() + timeout
    marker = ["--pid", str(driver.pid)]

    def serves_driver(process: psutil.Process) -> bool:
        try:
            command = process.cmdline()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            return False
        return any(command[i : i + 2] == marker for i in range(len(command)))

    while any(serves_driver(p) for p in psutil.process_iter()):
        assert time.monotonic() < deadline, f"the wandb service of process {driver.pid} did not end"
        time.sleep(0.2)


def file_times(run_dir: Path) -> dict[str, int]:
    """When each of a run's records was last written (what a job run again would change; Hydra
    writes its .hydra/ record and the job's log, train.log, for every launch)."""
    return {
        str(p.relative_to(run_dir)): p.stat().st_mtime_ns
        for p in run_dir.rglob("*")
        if p.is_file() and p.parts[len(run_dir.parts)] not in (".hydra", "train.log")
    }


def assert_ends_as_left_alone(run_dir: Path, alone: Path) -> None:
    expected = read_summary(alone)["final_val_loss"]
    assert read_summary(run_dir)["final_val_loss"] == pytest.approx(expected, abs=1e-4)
    steps = [int(row["step"]) + 1 for row in validation_rows(run_dir)]
    assert steps == [200, 400]  # each validation once


@pytest.mark.slow
def test_a_sweep_killed_then_stopped_by_ctrl_c_goes_on_where_it_stopped_each_time_it_is_launched_again(
    tmp_path: Path, shakespeare: Path
) -> None:
    # the basic launcher: the jobs run in the driver, one after another
    sweep_dir = tmp_path / "sweep"
    first = start_sweep(sweep_dir, *JOBS, SEEDS)
    wait_until(lambda: (sweep_dir / "1" / "csv").exists(), first)
    first.kill()  # SIGKILL, with job 1 started (and most likely not yet saved)
    first.communicate()
    wandb_service_gone(first)
    finished = file_times(sweep_dir / "0")
    assert read_summary(sweep_dir / "0")["steps"] == 400 and not (sweep_dir / "2").exists()

    # by its folder alone: job 0 is not trained again, job 1 starts again (or resumes, had it
    # saved), and Ctrl-C stops job 2 where it is, saved
    second = started([sys.executable, "-m", "gptlab.train", "-m", f"resume={sweep_dir}"])
    wait_until(lambda: (sweep_dir / "2" / "checkpoints" / "last.ckpt").exists(), second)
    result = stopped(second, signal.SIGINT)
    assert result.returncode == 130, result.stderr[-3000:]
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith("stopped by Ctrl-C at step ")
    assert line.endswith(f"continue the sweep with `python -m gptlab.train -m resume={sweep_dir}`")
    assert file_times(sweep_dir / "0") == finished
    assert read_summary(sweep_dir / "1")["steps"] == 400 and not (sweep_dir / "2" / "summary.json").exists()

    # the same command as the first: job 2 resumes
    third = sweep_here(sweep_dir, *JOBS, SEEDS)
    assert third.returncode == 0, third.stderr[-3000:]
    assert file_times(sweep_dir / "0") == finished
    assert sorted(p.name for p in sweep_dir.iterdir() if p.name.isdigit()) == ["0", "1", "2"]
    for num, seed in ((1, 2), (2, 3)):
        alone = train_here(tmp_path / f"alone{seed}", *JOBS, f"seed={seed}")
        assert alone.returncode == 0, alone.stderr
        assert_ends_as_left_alone(sweep_dir / str(num), alone.run_dir)
        logged = [int(row["step"]) for row in metric_rows(sweep_dir / str(num)) if row["train_loss"]]
        assert logged == list(range(9, 400, 10))  # each once: nothing left of a killed start
    first_part, second_part = wandb_parts(sweep_dir / "2")
    assert first_part["run_id"] == second_part["run_id"]  # one wandb run, continued
    # the end-of-sweep table: every job, those finished before included, as one row (the jobs
    # differ in their seed alone): the mean of their best val_loss with its 95% interval, and n
    losses = [read_summary(sweep_dir / str(num))["best_val_loss"] for num in range(3)]
    (row,) = [line for line in third.stdout.splitlines() if line.startswith("│ 0 1 2 ")]
    assert str(seeds.interval(losses)) in row and "│ 3 │" in row

    # launched once more, the finished sweep trains nothing
    done = {num: file_times(sweep_dir / str(num)) for num in range(3)}
    once_more = run_here("train", "-m", f"resume={sweep_dir}")
    assert once_more.returncode == 0, once_more.stderr[-3000:]
    for num in range(3):
        assert file_times(sweep_dir / str(num)) == done[num]


@pytest.mark.slow
def test_a_parallel_sweep_waits_for_jobs_its_killed_driver_left_running_and_resumes_after_ctrl_c(
    tmp_path: Path, shakespeare: Path
) -> None:
    # the parallel launcher's jobs are processes of their own, here two at a time
    parallel = ["hydra/launcher=parallel", "hydra.launcher.devices=[0,1]", *JOBS, "logger=csv"]

    # SIGKILL of the driver alone leaves its two jobs running: the relaunch waits for them
    left_running = tmp_path / "left_running"
    first = start_sweep(left_running, *parallel, "seed=1,2")
    wait_until(lambda: (left_running / "1" / "csv").exists(), first)
    first.kill()
    first.communicate()
    relaunched_at = time.time()
    # how it runs may change: this time, its jobs one after another in the driver
    again = run_here("train", "-m", f"resume={left_running}", "hydra/launcher=basic")
    assert again.returncode == 0, again.stderr[-3000:]
    for num in (0, 1):  # ended by the processes the first launch started, not trained again
        summary = read_summary(left_running / str(num))
        assert summary["steps"] == 400 and summary["started_at"] < relaunched_at

    # Ctrl-C in the terminal (SIGINT to every process of the sweep): the running jobs save and
    # stop, no further job starts (job 2 waits for a device), and the driver says how to go on
    interrupted = tmp_path / "interrupted"
    first = start_sweep(interrupted, *parallel, SEEDS, new_session=True)
    wait_until(lambda: (interrupted / "1" / "checkpoints" / "last.ckpt").exists(), first)
    interrupted_at = time.time()
    os.killpg(first.pid, signal.SIGINT)
    _, stderr = first.communicate(timeout=120)
    assert first.returncode == 130, stderr[-3000:]
    line = stderr.strip().splitlines()[-1]
    assert line.endswith(f"continue the sweep with `python -m gptlab.train -m resume={interrupted}`"), line
    assert not (interrupted / "1" / "summary.json").exists()
    # (job 2 started only had job 0 ended before the Ctrl-C, which seldom happens)
    job_2 = interrupted / "2" / ".hydra" / "config.yaml"
    assert not job_2.exists() or job_2.stat().st_mtime < interrupted_at
    again = run_here("train", "-m", f"resume={interrupted}", "hydra/launcher=basic")
    assert again.returncode == 0, again.stderr[-3000:]
    # job 1 of the first sweep is the same run (seed 2), left to run to its end
    assert_ends_as_left_alone(interrupted / "1", left_running / "1")
    assert read_summary(interrupted / "2")["steps"] == 400


@pytest.mark.slow
def test_a_failed_job_stays_failed_unless_the_relaunch_retries_it(tmp_path: Path, shakespeare: Path) -> None:
    corpus = tmp_path / "corpus.txt"  # missing at the first launch: both jobs fail
    sweep_dir = tmp_path / "sweep"
    jobs = [*TINY, "logger=csv", "seed=1,2", f"data.path={corpus}"]
    first = sweep_here(sweep_dir, *jobs)
    assert first.returncode == 0, first.stderr[-3000:]
    assert all("error" in read_summary(sweep_dir / str(num)) for num in (0, 1))
    corpus.write_text(shakespeare.read_text()[:200_000])
    kept = sweep_here(sweep_dir, *jobs)
    assert kept.returncode == 0 and "retry_failed=true" in kept.stderr + kept.stdout
    assert all("error" in read_summary(sweep_dir / str(num)) for num in (0, 1))
    retried = sweep_here(sweep_dir, *jobs, "retry_failed=true")
    assert retried.returncode == 0, retried.stderr[-3000:]
    assert all(read_summary(sweep_dir / str(num))["steps"] == 30 for num in (0, 1))


def test_a_relaunch_that_would_run_other_jobs_is_refused_and_changes_nothing(
    tmp_path: Path, shakespeare: Path
) -> None:
    sweep_dir = tmp_path / "sweep"
    jobs = [*TINY, "trainer.max_steps=2", "trainer.val_check_interval=2", "logger=none"]
    first = sweep_here(sweep_dir, *jobs, "model.n_layer=1,2")
    assert first.returncode == 0, first.stderr[-3000:]
    before = {str(p): p.stat().st_mtime_ns for p in sweep_dir.rglob("*")}
    for changed, reason in [
        (["model.n_layer=1,3"], "its job 1 was"),
        (["model.n_layer=1,2,3"], "it had 2 jobs, this launch has 3"),
    ]:
        refused = sweep_here(sweep_dir, *jobs, *changed)
        assert refused.returncode == 1
        line = refused.stderr.strip().splitlines()[-1]
        assert line.startswith(f"error: hydra.sweep.dir={sweep_dir} holds another sweep: {reason}"), line
    assert {str(p): p.stat().st_mtime_ns for p in sweep_dir.rglob("*")} == before
    # how it runs may change
    relaunched = sweep_here(
        sweep_dir, *jobs, "model.n_layer=1,2", "hydra/launcher=parallel", "hydra.launcher.devices=[0]"
    )
    assert relaunched.returncode == 0, relaunched.stderr[-3000:]
    # the jobs that finished are read back, not started again as processes
    assert "#1 finished in an earlier launch" in relaunched.stdout + relaunched.stderr
    assert not list(sweep_dir.glob(".submitit/**/*_log.out"))

    not_a_sweep = run_here("train", "-m", f"resume={tmp_path}")
    assert not_a_sweep.returncode == 1
    assert not_a_sweep.stderr.strip().splitlines()[-1] == (
        f"error: resume={tmp_path}: not a sweep directory (it has no multirun.yaml)"
    )
    assert json.loads((sweep_dir / "0" / "summary.json").read_text())["steps"] == 2
