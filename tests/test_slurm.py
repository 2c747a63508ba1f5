"""hydra/launcher=slurm against a real SLURM cluster on this machine (tests/slurm/): sweeps whose
jobs' srun tasks are the DDP ranks, settings a node cannot give, and jobs signalled, preempted,
requeued, cancelled and killed the way SLURM does it, each compared with the same job left alone.

The node has 2 CPUs and no GPUs: each job here asks for one CPU a task, so two single-task jobs
run side by side and a two-task (DDP) job has the node to itself."""

import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from tests.conftest import (
    REPO_ROOT,
    SHAKESPEARE,
    TINY,
    offline_env,
    read_summary,
    run_here,
    started,
    train_command,
    train_here,
    wait_until,
)
from tests.slurm.cluster import SlurmCluster
from tests.test_cluster import validation_rows
from tests.test_wandb import wandb_summary

# one cluster, one test at a time: all of them on the same pytest-xdist worker
pytestmark = pytest.mark.xdist_group("slurm")

CPU_NODE = [
    "hydra/launcher=slurm",
    "hydra.launcher.partition=debug",
    "hydra.launcher.gpus_per_node=null",
    "hydra.launcher.cpus_per_task=1",
    "hydra.launcher.mem_gb=2",
]
ONE_TASK = ["hydra.launcher.tasks_per_node=1"]
TWO_TASKS = ["hydra.launcher.tasks_per_node=2", "trainer.devices=2"]
CPU_RUN = [*TINY, "trainer.accelerator=cpu", "logger=csv"]
# a run that validates and saves at step 200 and ends at 400 (dropout: a resume that lost the
# random state would end elsewhere)
LONG_RUN = [
    *CPU_RUN,
    "trainer.max_steps=400",
    "trainer.val_check_interval=200",
    "model.dropout=0.1",
    "logger=[csv,wandb]",
]


def start_sweep(
    slurm: SlurmCluster, sweep_dir: Path, *overrides: str, nice: bool = False
) -> subprocess.Popen:
    """`python -m gptlab.train -m hydra/launcher=slurm ...` on the test cluster, CPU settings;
    nice: the sweep and its jobs at the lowest priority."""
    command = [
        *(["nice", "-n", "19"] if nice else []),
        sys.executable,
        "-m",
        "gptlab.train",
        "-m",
        f"hydra.sweep.dir={sweep_dir}",
        *CPU_NODE,
        *overrides,
        f"data.path={SHAKESPEARE}",
    ]
    return started(command, slurm.env)


def start_training(run_dir: Path, *overrides: str) -> subprocess.Popen:
    """`python -m gptlab.train` on this machine, outside the cluster, started now."""
    return started(train_command(run_dir, *overrides))


def ended(process: subprocess.Popen, timeout: float = 600) -> subprocess.CompletedProcess:
    stdout, stderr = process.communicate(timeout=timeout)
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def wait_for(path: Path, process: subprocess.Popen, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if process.poll() is not None:
            raise AssertionError(
                f"the sweep ended before {path} was written: {ended(process).stderr[-3000:]}"
            )
        assert time.monotonic() < deadline, f"no {path} in {timeout} s"
        time.sleep(0.2)


def job_ids(sweep_dir: Path) -> list[str]:
    """The SLURM job id of each job of the sweep, in job order (from submitit's folders)."""
    folders = [p.parent.name for p in (sweep_dir / ".submitit").glob("*/*_submitted.pkl")]
    return sorted(folders, key=lambda name: int(name.split("_")[-1]) if "_" in name else 0)


def restarts(slurm: SlurmCluster, job_id: str) -> int:
    shown = slurm.run("scontrol", "show", "job", job_id).stdout
    return int(re.search(r"Restarts=(\d+)", shown).group(1))


def task_process(job_id: str, rank: int) -> psutil.Process:
    """The process of task `rank` of a running SLURM job (submitit's, which runs the job)."""
    array_job, _, array_task = job_id.partition("_")
    for process in psutil.process_iter(["cmdline"]):
        try:
            env = process.environ()
        except (psutil.AccessDenied, psutil.NoSuchProcess):
            continue
        ids = (env.get("SLURM_ARRAY_JOB_ID"), env.get("SLURM_ARRAY_TASK_ID")) if array_task else None
        if (
            "submitit.core._submit" in " ".join(process.info["cmdline"] or [])
            and (ids == (array_job, array_task) if array_task else env.get("SLURM_JOB_ID") == job_id)
            and env.get("SLURM_PROCID") == str(rank)
        ):
            return process
    raise AssertionError(f"no task {rank} of SLURM job {job_id} running")


def left_on_the_cluster(slurm: SlurmCluster) -> list[str]:
    """The jobs still pending or running a minute after the sweep ended (a job that has handed
    over its result takes a few seconds more to exit)."""
    deadline = time.monotonic() + 60
    while (jobs := slurm.jobs("PENDING", "RUNNING")) and time.monotonic() < deadline:
        time.sleep(1)
    return jobs


def submitit_log(sweep_dir: Path, job_id: str, rank: int = 0) -> str:
    return (sweep_dir / ".submitit" / job_id / f"{job_id}_{rank}_log.out").read_text()


def wandb_parts(run_dir: Path) -> list[dict]:
    """The offline wandb runs of a run directory (one for each process that logged), in order."""
    return [wandb_summary(part) for part in sorted((run_dir / "wandb").glob("offline-run-*"))]


def assert_ends_as_left_alone(run_dir: Path, left_alone: Path) -> None:
    resumed, alone = read_summary(run_dir), read_summary(left_alone)
    assert resumed["steps"] == alone["steps"]
    assert resumed["best_val_loss"] == pytest.approx(alone["best_val_loss"], abs=1e-4)
    assert resumed["final_val_loss"] == pytest.approx(alone["final_val_loss"], abs=1e-4)
    rows = [(int(r["step"]), round(float(r["val_loss"]), 4)) for r in validation_rows(run_dir)]
    assert rows == [(int(r["step"]), round(float(r["val_loss"]), 4)) for r in validation_rows(left_alone)]
    assert [step + 1 for step, _ in rows] == [alone["steps"] // 2, alone["steps"]]  # each validation once


def assert_one_wandb_run_preempted_then_finished(run_dir: Path) -> None:
    first, second = wandb_parts(run_dir)  # a part for each start of the job
    assert first["run_id"] == second["run_id"]  # one wandb run, continued
    assert first["exit_code"] == 143 and first["state"] != "finished"  # preempted, not crashed
    assert second["exit_code"] == 0 and second["state"] == "finished"
    assert second["summary"]["best_val_loss"] == pytest.approx(read_summary(run_dir)["best_val_loss"])


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        # the defaults are a GPU node's
        (
            [],
            "hydra.launcher.tasks_per_node=1 x cpus_per_task=8 asks a node for 8 CPUs, which has 2; "
            "hydra.launcher.mem_gb=64 asks a node for 65536 MB of memory, which has",
        ),
        ([*CPU_NODE[2:], "trainer.num_nodes=2"], "hydra.launcher.nodes=2 asks for more nodes than the 1"),
        (["hydra.launcher.partition=nosuch"], "hydra.launcher.partition=nosuch: no such partition here"),
        (
            [*CPU_NODE[2:], "trainer.devices=1,2"],
            "trainer.devices=2 and trainer.num_nodes=1 (job #1) do not match hydra.launcher.tasks_per_node=1",
        ),
        # what sbatch itself refuses
        (
            [*CPU_NODE[2:], "hydra.launcher.constraint=nosuch"],
            "sbatch refused the jobs: Batch job submission",
        ),
    ],
)
def test_settings_a_node_cannot_give_stop_the_sweep_in_one_line_before_anything_is_queued(
    tmp_path: Path, shakespeare: Path, slurm: SlurmCluster, settings: list[str], message: str
) -> None:
    # the driver runs in this process (what it decides needs no process of its own); sinfo and
    # sbatch are the cluster's
    overrides = ["hydra/launcher=slurm", "hydra.launcher.partition=debug", *settings, *CPU_RUN]
    done = run_here("train", "-m", f"hydra.sweep.dir={tmp_path}", *overrides, env=slurm.env)
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    line = done.stderr.strip().splitlines()[-1]
    assert line.startswith("error: ") and message in line, done.stderr[-3000:]
    if not settings:
        assert "gpus_per_node=1 asks a node for 1 GPUs, which has 0" in line
    assert left_on_the_cluster(slurm) == []


@pytest.mark.slow
def test_a_job_signalled_to_its_steps_saves_is_requeued_once_and_ends_as_the_job_left_alone(
    tmp_path: Path, shakespeare: Path, slurm: SlurmCluster
) -> None:
    # two jobs alike, side by side: the first is signalled as SLURM signals before preemption or
    # its time limit (--signal=USR2 to every process of its steps, wandb's service included)
    sweep_dir = tmp_path / "sweep"
    sweep = start_sweep(slurm, sweep_dir, *LONG_RUN, *ONE_TASK, "seed=1,1")
    wait_for(sweep_dir / "0" / "checkpoints" / "last.ckpt", sweep)
    signalled, left_alone = job_ids(sweep_dir)
    slurm.run("scancel", "--signal=USR2", signalled)
    done = ended(sweep)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "failed" not in done.stdout, done.stdout  # the driver waited for the requeued job
    assert_ends_as_left_alone(sweep_dir / "0", sweep_dir / "1")
    assert_one_wandb_run_preempted_then_finished(sweep_dir / "0")
    # requeued once, by submitit (gptlab stopped the run first and handed over to it)
    assert restarts(slurm, signalled) == 1 and restarts(slurm, left_alone) == 0
    log = submitit_log(sweep_dir, signalled)
    assert len(re.findall(r"^submitit INFO .* - Requeued job", log, re.MULTILINE)) == 1
    assert log.index("SIGUSR2: training stops at the end of this step") < log.index("Requeued job")
    assert re.search(r"stopped by a signal at step \d+, saved in .*: the SLURM job is requeued", log)


@pytest.mark.slow
def test_a_sweep_s_ddp_jobs_signalled_through_the_batch_shell_or_one_rank_alone_requeue_and_resume(
    tmp_path: Path, shakespeare: Path, slurm: SlurmCluster
) -> None:
    # a sweep of two jobs, one per run, each job's two srun tasks the ranks of its DDP; the same
    # run on two local processes, meanwhile, is what both must end as
    left_alone = start_training(tmp_path / "alone", *LONG_RUN, "trainer.devices=2")
    # job 0: a signal for the batch shell alone (scancel --batch, as --signal=B:USR2@N sends it),
    # which it passes on to both tasks; job 1: SIGUSR1 (Lightning's requeue signal) to rank 1 alone
    sweep_dir = tmp_path / "sweep"
    sweep = start_sweep(slurm, sweep_dir, *LONG_RUN, *TWO_TASKS, "seed=1337,1337")
    wait_for(sweep_dir / "0" / "checkpoints" / "last.ckpt", sweep)
    through_batch, alone = job_ids(sweep_dir)
    slurm.run("scancel", "--batch", "--signal=USR2", through_batch)
    wait_for(sweep_dir / "1" / "checkpoints" / "last.ckpt", sweep)
    task_process(alone, rank=1).send_signal(signal.SIGUSR1)
    done = ended(sweep)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (left := ended(left_alone)).returncode == 0, left.stderr[-3000:]
    assert sorted(p.name for p in sweep_dir.iterdir() if p.name.isdigit()) == ["0", "1"]  # one dir a job
    for num, job_id in enumerate((through_batch, alone)):
        summary = read_summary(sweep_dir / str(num))
        assert summary["world_size"] == 2 and summary["tokens"] == 400 * 2 * 8 * 16  # both ranks' batches
        # the second srun task is rank 1 of the job's DDP, not a rank the first one spawned
        assert "Initializing distributed: GLOBAL_RANK: 1, MEMBER: 2/2" in submitit_log(sweep_dir, job_id, 1)
        assert not (sweep_dir / str(num) / "1").exists()
        assert_ends_as_left_alone(sweep_dir / str(num), tmp_path / "alone")
        assert_one_wandb_run_preempted_then_finished(sweep_dir / str(num))
        assert restarts(slurm, job_id) == 1
    assert f"{read_summary(sweep_dir / '1')['best_val_loss']:.4f}" in done.stdout  # the end-of-sweep table
    assert "SIGUSR2: training stops" in submitit_log(sweep_dir, through_batch, rank=1)
    # rank 1 got the signal, rank 0 (which alone requeues) learnt it at the step's end
    assert "SIGUSR1: training stops" in submitit_log(sweep_dir, alone, rank=1)
    assert "SIGUSR1: training stops" not in submitit_log(sweep_dir, alone, rank=0)
    assert "requeued SLURM job" in submitit_log(sweep_dir, alone, rank=0)


@pytest.mark.slow
def test_a_job_preempted_by_a_higher_priority_one_saves_in_its_grace_time_requeues_and_resumes(
    tmp_path: Path, shakespeare: Path, slurm: SlurmCluster
) -> None:
    # SLURM may take seconds to act on the urgent job, and the tiny model's steps take
    # milliseconds: the urgent job comes as soon as ours trains (its first metrics are on disk at
    # step 100), with thousands of steps to go
    run = [*LONG_RUN, "trainer.max_steps=4000", "trainer.val_check_interval=2000"]
    sweep_dir = tmp_path / "sweep"
    sweep = start_sweep(slurm, sweep_dir, *run, *ONE_TASK)
    wait_for(sweep_dir / "0" / "csv" / "metrics.csv", sweep)
    (preempted,) = job_ids(sweep_dir)
    # a job of the urgent partition needs the whole node: SLURM sends ours SIGTERM (every
    # process of its steps) and grants it GraceTime; a job that ends then has failed, unless it
    # requeues itself (PreemptMode=REQUEUE requeues only a job still running when it is over)
    slurm.run(
        "sbatch",
        "--partition=urgent",
        "--cpus-per-task=2",
        f"--output={tmp_path}/urgent.out",
        "--wrap=sleep 1",
    )
    left_alone = train_here(tmp_path / "alone", *run)  # meanwhile, beside the cluster
    assert left_alone.returncode == 0, left_alone.stderr[-3000:]
    done = ended(sweep)
    assert done.returncode == 0, done.stderr[-3000:]
    assert_ends_as_left_alone(sweep_dir / "0", tmp_path / "alone")
    assert_one_wandb_run_preempted_then_finished(sweep_dir / "0")
    assert restarts(slurm, preempted) == 1
    log = submitit_log(sweep_dir, preempted)
    assert "SIGTERM: training stops at the end of this step" in log
    assert "requeued SLURM job" in log and "Requeued job" not in log  # by gptlab, not submitit


@pytest.mark.slow
def test_a_job_that_ends_without_a_result_ends_the_wait_as_failed_with_its_reason(
    tmp_path: Path, shakespeare: Path, slurm: SlurmCluster
) -> None:
    sweep_dir = tmp_path / "sweep"
    endless = [*CPU_RUN, "trainer.max_steps=100000", "trainer.val_check_interval=200"]
    sweep = start_sweep(slurm, sweep_dir, *endless, *ONE_TASK, "seed=1,2")
    for num in (0, 1):
        wait_for(sweep_dir / str(num) / "checkpoints" / "last.ckpt", sweep)
    cancelled, killed = job_ids(sweep_dir)
    slurm.run("scancel", cancelled)  # no accounting here: only squeue can tell the job has gone
    task_process(killed, rank=0).kill()  # SIGKILL, as the kernel's out-of-memory killer sends it
    done = ended(sweep)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"SLURM job {cancelled} ended CANCELLED without a result" in read_summary(sweep_dir / "0")["error"]
    assert f"SLURM job {killed} ended FAILED without a result" in read_summary(sweep_dir / "1")["error"]
    assert done.stdout.count("failed") >= 2  # both listed as failed in the end-of-sweep table
    assert left_on_the_cluster(slurm) == []


@pytest.mark.slow
def test_a_job_past_its_time_limit_is_requeued_until_it_finishes_or_runs_out_of_requeues(
    tmp_path: Path, shakespeare: Path, slurm: SlurmCluster
) -> None:
    # SLURM counts limits in whole minutes and signals up to a minute early: a 2-minute limit,
    # SIGUSR2 30 to 90 s before it, so 30 to 90 s into each start. A run of 100 s of training
    # (Lightning's clock, which a resume continues) is signalled at least once; an endless one is
    # signalled before it could finish. The two run side by side, one CPU each, at the lowest
    # priority (the cluster's tasks take the nice value of the sweep that submitted them): they
    # wait for SLURM's clock, and the other tests need the cores more. (wandb left out: a run
    # requeued this way, by submitit after SLURM's SIGUSR2 to every process of its steps,
    # continues its wandb run, as test_a_job_signalled_to_its_steps... shows.)
    run = [*CPU_RUN, "model.dropout=0.1", "trainer.val_check_interval=1000"]
    limit = [*ONE_TASK, "hydra.launcher.timeout_min=2", "hydra.launcher.signal_delay_s=30"]
    requeued = start_sweep(
        slurm,
        tmp_path / "requeued",
        *run,
        "trainer.max_steps=-1",
        "optim.decay_steps=1000000",
        "trainer.max_time=00:00:01:40",
        *limit,
        "hydra.launcher.max_num_timeout=5",
        nice=True,
    )
    out_of_requeues = start_sweep(
        slurm,
        tmp_path / "failed",
        *run,
        "trainer.max_steps=1000000",
        *limit,
        "hydra.launcher.max_num_timeout=0",
        nice=True,
    )
    done, failed = ended(requeued, timeout=1200), ended(out_of_requeues, timeout=1200)
    assert done.returncode == 0, done.stderr[-3000:]
    (job_id,) = job_ids(tmp_path / "requeued")
    assert restarts(slurm, job_id) >= 1
    # it went on where it stopped, to the end of its time, each validation once and the last at
    # its last step. (That a run requeued this way ends with the same numbers as the run left
    # alone, test_a_job_signalled_to_its_steps... shows: the same signal, handed to submitit the
    # same way.)
    run_dir = tmp_path / "requeued" / "0"
    steps = read_summary(run_dir)["steps"]
    validated = [int(row["step"]) + 1 for row in validation_rows(run_dir)]
    assert validated == [*range(1000, steps, 1000), steps]
    assert "stopped by a signal at step" in submitit_log(tmp_path / "requeued", job_id)
    assert failed.returncode == 0, failed.stderr[-3000:]
    error = read_summary(tmp_path / "failed" / "0")["error"]
    assert "Job not requeued because: timed-out too many times" in error
    assert (tmp_path / "failed" / "0" / "checkpoints" / "last.ckpt").is_file()  # saved all the same


@pytest.mark.slow
def test_a_sweep_launched_again_waits_for_its_jobs_on_the_cluster_and_ctrl_c_stops_them_saved(
    tmp_path: Path, shakespeare: Path, slurm: SlurmCluster
) -> None:
    """Three jobs of one task on the two-CPU node (two run, the third queues). The driver is
    killed; its relaunch waits for the three jobs instead of submitting them again, and is
    stopped by Ctrl-C, which cancels them (the running ones save); the next relaunch submits them,
    two resuming, and ends the sweep as if nothing had stopped it; one more trains nothing.
    (SLURM suspends and holds the jobs while the relaunch starts, so none ends before it looks.)"""
    sweep_dir = tmp_path / "sweep"
    runs = [*LONG_RUN, "trainer.max_steps=1000", "trainer.val_check_interval=250", *ONE_TASK, "seed=1,2,3"]
    sweep = start_sweep(slurm, sweep_dir, *runs)
    wait_for(sweep_dir / "1" / "checkpoints" / "last.ckpt", sweep)
    sweep.kill()  # the driver, SIGKILL: its jobs stay on the cluster
    sweep.communicate()
    first = job_ids(sweep_dir)
    # as they are until the relaunch has seen them: two running jobs suspended, one queued held
    for job_id in first[:2]:
        slurm.run("scontrol", "suspend", job_id)
    slurm.run("scontrol", "hold", first[2])

    log = tmp_path / "relaunch.log"
    relaunch = [sys.executable, "-m", "gptlab.train", "-m", f"resume={sweep_dir}"]
    with log.open("w") as output:
        relaunched = subprocess.Popen(
            relaunch, cwd=REPO_ROOT, env=offline_env() | slurm.env, stdout=output, stderr=subprocess.STDOUT
        )
        waited = [f"#{n} is still queued or running as SLURM job {first[n]}: waited for" for n in range(3)]
        wait_until(lambda: all(line in log.read_text() for line in waited), relaunched)
        for job_id in first[:2]:
            slurm.run("scontrol", "resume", job_id)
        relaunched.send_signal(signal.SIGINT)
        assert relaunched.wait(timeout=300) == 130, log.read_text()[-3000:]
    assert log.read_text().strip().splitlines()[-1] == (
        "stopped by Ctrl-C, its SLURM jobs cancelled (a running one saved first): continue the sweep "
        f"with `python -m gptlab.train -m resume={sweep_dir}`"
    )
    assert job_ids(sweep_dir) == first  # nothing submitted twice
    assert not any((sweep_dir / str(n) / "summary.json").exists() for n in range(3))  # stopped, not failed

    # the relaunches that nothing stops run their driver in this process
    done = run_here("train", *relaunch[3:], env=slurm.env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert len(job_ids(sweep_dir)) == 6  # each job submitted once more
    for num in range(3):
        assert read_summary(sweep_dir / str(num))["steps"] == 1000
        validated = [int(row["step"]) + 1 for row in validation_rows(sweep_dir / str(num))]
        assert validated == [250, 500, 750, 1000]  # each once
    assert "Restored all states from the checkpoint" in (sweep_dir / "1" / "train.log").read_text()
    assert left_on_the_cluster(slurm) == []

    finished = run_here("train", *relaunch[3:], env=slurm.env)  # a finished sweep: nothing queued
    assert finished.returncode == 0, finished.stderr[-3000:]
    assert len(job_ids(sweep_dir)) == 6
