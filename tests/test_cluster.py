"""Cluster launchers are the ranks (torchrun workers, on this machine's loopback), and a preempted
run saves where it stopped and goes on from there. SLURM has its own tests, against a real
cluster (tests/test_slurm.py); torchrun's two "nodes" here are two processes of this one machine,
the one way to have two nodes on it."""

import csv
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gptlab.checkpoint import load_checkpoint
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

CPU_RANK = [*TINY, "logger=csv", "trainer.accelerator=cpu", f"data.path={SHAKESPEARE}"]


def start_all(
    commands: list[tuple[list[str], dict[str, str]]], cwd: Path
) -> list[subprocess.CompletedProcess]:
    """Starts every (command, environment) at once, as a launcher does, and waits for all."""
    processes = [
        subprocess.Popen(
            command,
            cwd=cwd,
            env=offline_env() | env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for command, env in commands
    ]
    try:
        outputs = [p.communicate(timeout=300)[0] for p in processes]
    finally:  # after a timeout, no rank is left holding the job's port for the next test run
        for process in processes:
            process.kill()
    return [
        subprocess.CompletedProcess(p.args, p.returncode, out, "")
        for p, out in zip(processes, outputs, strict=True)
    ]


def slurm_task(node: int) -> dict[str, str]:
    """The environment SLURM gives the task on `node` of a two-node job, one task a node (the two
    "nodes" being this machine)."""
    return {
        "SLURM_JOB_ID": "4242",
        "SLURM_JOB_NAME": "gptlab",
        "SLURM_NTASKS": "2",
        "SLURM_NTASKS_PER_NODE": "1",
        "SLURM_NNODES": "2",
        "SLURM_NODELIST": "127.0.0.1",
        "SLURM_PROCID": str(node),
        "SLURM_LOCALID": "0",
        "SLURM_NODEID": str(node),
    }


def run_dirs(folder: Path) -> list[Path]:
    return sorted(p.parent for p in folder.rglob("train.log"))


@pytest.mark.slow
def test_slurm_tasks_on_two_nodes_are_one_sweep_job_s_ranks_with_one_run_directory(
    tmp_path: Path, shakespeare: Path
) -> None:
    """Simulated: one machine cannot be two nodes of a SLURM cluster (tests/test_slurm.py runs on
    a real one-node cluster all that one node can), so two processes get the environment SLURM
    gives the two tasks of a two-node job, one task a node, and each runs the sweep as `srun
    python -m gptlab.train -m ...` would."""
    command = [sys.executable, "-m", "gptlab.train", "-m", *CPU_RANK, "trainer.num_nodes=2"]
    done = start_all([(command, slurm_task(node)) for node in (0, 1)], cwd=tmp_path)
    for result in done:
        assert result.returncode == 0, result.stdout[-3000:]
    (job,) = sorted(p.parent for p in (tmp_path / "outputs").rglob("train.log"))  # one directory
    assert job.name == "0"
    assert read_summary(job)["world_size"] == 2
    assert read_summary(job)["tokens"] == 30 * 2 * 8 * 16  # both nodes' batches
    assert "Initializing distributed: GLOBAL_RANK: 1, MEMBER: 2/2" in done[1].stdout


# a rank of a job a launcher started: the start time from rank 0, then DDP's own store on the
# same port (torch.distributed.init_process_group, as Lightning calls it), and a barrier
HANDSHAKE_THEN_DDP = """
import sys
from datetime import timedelta
import torch.distributed as dist
from gptlab.runs import cluster
print(cluster.agreed_start_time())
dist.init_process_group("gloo", rank=int(sys.argv[1]), world_size=2, timeout=timedelta(seconds=60))
dist.barrier()
dist.destroy_process_group()
"""


def test_a_rank_quicker_to_ddp_than_rank_0_joins_its_process_group() -> None:
    """Rank 1 sets up DDP right after it has read rank 0's start time, while rank 0 is still
    coming from handing it out: the store rank 0 handed it out with must still be serving then
    (once, the two-node test's rank 1 connected to it as it closed and failed with "Failed to
    recv, got 0 bytes")."""
    # a port of its own, not the one SLURM's job id gives (the two-node test's, which may be running)
    address = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port())}
    done = start_all(
        [
            ([sys.executable, "-c", HANDSHAKE_THEN_DDP, str(node)], slurm_task(node) | address)
            for node in (0, 1)
        ],
        cwd=REPO_ROOT,
    )
    for result in done:
        assert result.returncode == 0, result.stdout[-3000:]
    assert done[0].stdout.splitlines()[0] == done[1].stdout.splitlines()[0]  # rank 0's time on both


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_torchrun_nodes_whose_clocks_disagree_share_rank_0s_run_directory(
    tmp_path: Path, shakespeare: Path
) -> None:
    # two "nodes" of one process each on loopback; the second's clock reads 9 hours later
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc-per-node=1"]
    rendezvous = ["--master-addr=127.0.0.1", f"--master-port={free_port()}"]
    train = ["-m", "gptlab.train", *CPU_RANK, "trainer.num_nodes=2", "trainer.devices=1"]
    done = start_all(
        [
            ([*torchrun, f"--node-rank={node}", *rendezvous, *train], {"TZ": zone})
            for node, zone in ((0, "UTC"), (1, "Asia/Tokyo"))
        ],
        cwd=tmp_path,
    )
    for rank, result in enumerate(done):
        assert result.returncode == 0, result.stdout[-3000:]
        assert f"GLOBAL_RANK: {rank}, MEMBER: {rank + 1}/2" in result.stdout
        # batches are drawn by (seed, rank, step): each node its own windows
        assert (
            f"rank {rank}: training windows drawn by (seed=1337, rank={rank}, step) from step 0"
            in result.stdout
        )
    (run,) = [p for p in (tmp_path / "outputs").glob("*/*") if p.is_dir()]  # no second directory
    assert run_dirs(tmp_path / "outputs") == [run]
    assert (run / ".hydra" / "config.yaml").is_file()
    summary = read_summary(run)
    assert summary["world_size"] == 2 and summary["steps"] == 30
    assert len(list(run.glob("checkpoints/*.ckpt"))) == 2  # one set (best, last): rank 0's


PREEMPTED = [
    *TINY,
    "trainer.max_steps=400",
    "trainer.val_check_interval=200",
    "model.dropout=0.1",
    "logger=csv",
]


def stopped_after_first_checkpoint(
    run_dir: Path,
    signum: signal.Signals,
    *overrides: str,
    env: dict[str, str] | None = None,
    twice: bool = False,
) -> subprocess.CompletedProcess:
    """Runs `python -m gptlab.train`, sends it signum once it has written last.ckpt at step 200."""
    return stopped_once_saved(train_command(run_dir, *PREEMPTED, *overrides), run_dir, signum, env, twice)


def stopped_once_saved(
    command: list[str],
    run_dir: Path,
    signum: signal.Signals,
    env: dict[str, str] | None = None,
    twice: bool = False,
) -> subprocess.CompletedProcess:
    """Starts command, sends its process signum once run_dir has a last.ckpt (twice: and again
    10 ms later), waits for it."""
    process = started(command, env)
    wait_until(lambda: (run_dir / "checkpoints" / "last.ckpt").exists(), process)
    process.send_signal(signum)
    if twice:
        time.sleep(0.01)
        process.send_signal(signum)
    stdout, stderr = process.communicate(timeout=120)  # Lightning's own SIGTERM handling hangs DDP here
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def stopped_step(result: subprocess.CompletedProcess) -> int:
    line = result.stderr.strip().splitlines()[-1]
    match = re.fullmatch(r"stopped by a signal at step (\d+), saved in (\S+): (.*)", line)
    assert match, result.stderr[-3000:]
    return int(match.group(1))


@pytest.mark.slow
def test_a_preempted_run_saves_the_step_it_reached_and_resumes_to_the_same_val_loss(
    tmp_path: Path, shakespeare: Path
) -> None:
    left_alone = train_here(tmp_path / "left_alone", *PREEMPTED)  # the run the signals interrupt
    assert left_alone.returncode == 0, left_alone.stderr
    expected = read_summary(left_alone.run_dir)["final_val_loss"]

    # SIGTERM, as Kubernetes or SLURM send it: saved, non-zero, one line saying how to go on
    run = tmp_path / "terminated"
    result = stopped_after_first_checkpoint(run, signal.SIGTERM)
    assert result.returncode == 143, result.stderr[-3000:]
    step = stopped_step(result)
    assert 200 <= step < 400
    assert load_checkpoint(run / "checkpoints" / "last.ckpt")["global_step"] == step
    assert not (run / "summary.json").exists()  # not finished
    assert f"resume with `python -m gptlab.train ckpt_path={run}`" in result.stderr
    resumed = run_here("train", f"ckpt_path={run}")
    assert resumed.returncode == 0, resumed.stderr
    assert read_summary(run)["final_val_loss"] == pytest.approx(expected, abs=1e-4)
    assert read_summary(run)["steps"] == 400

    # Ctrl-C, twice (the second while the first is being saved): a stop like SIGTERM's
    run = tmp_path / "interrupted"
    result = stopped_after_first_checkpoint(run, signal.SIGINT, twice=True)
    assert result.returncode == 130, result.stderr[-3000:]
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith("stopped by Ctrl-C at step ")
    assert line.endswith(f"resume with `python -m gptlab.train ckpt_path={run}`")
    assert "KeyboardInterrupt" not in result.stderr
    resumed = run_here("train", f"ckpt_path={run}")
    assert resumed.returncode == 0, resumed.stderr
    assert read_summary(run)["final_val_loss"] == pytest.approx(expected, abs=1e-4)


@pytest.mark.slow
def test_ctrl_c_before_the_first_step_stops_at_once_and_leaves_nothing(
    tmp_path: Path, shakespeare: Path
) -> None:
    # the sanity check runs the whole validation split: Ctrl-C comes before or during it
    run = tmp_path / "run"
    slow_start = ["trainer.num_sanity_val_steps=-1", "data.val_tokens=null"]
    process = started(train_command(run, *PREEMPTED, *slow_start))
    wait_until(lambda: (run / ".hydra" / "config.yaml").exists(), process)
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr[-3000:]
    assert stderr.strip().splitlines()[-1] == "stopped by Ctrl-C before the first step: nothing saved"
    assert "Traceback" not in stderr
    assert not run.exists()


def validation_rows(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "csv" / "metrics.csv", newline="") as f:
        return [row for row in csv.DictReader(f) if row.get("val_loss")]


@pytest.mark.slow
def test_sigterm_to_the_first_process_of_ddp_stops_every_rank_at_one_step_saved(
    tmp_path: Path, shakespeare: Path
) -> None:
    ddp = ["trainer.devices=2", "trainer.accelerator=cpu", "trainer.max_steps=3000"]
    # a run: Lightning started rank 1 by running the command again; only rank 0 gets the signal
    run = tmp_path / "run"
    result = stopped_after_first_checkpoint(run, signal.SIGTERM, *ddp)
    assert result.returncode == 143, result.stderr[-3000:]
    assert load_checkpoint(run / "checkpoints" / "last.ckpt")["global_step"] == stopped_step(result) > 200

    # DDP inside a sweep: the job's process spawned both ranks, and passes the signal on
    sweep_dir = tmp_path / "sweep"
    command = train_command(sweep_dir, *PREEMPTED, *ddp, "seed=1,2")
    command[3:4] = ["-m", f"hydra.sweep.dir={sweep_dir}"]
    result = stopped_once_saved(command, sweep_dir / "0", signal.SIGTERM)
    assert result.returncode == 143, result.stderr[-3000:]
    assert f"saved in {sweep_dir / '0' / 'checkpoints' / 'last.ckpt'}" in result.stderr.splitlines()[-1]
    assert load_checkpoint(sweep_dir / "0" / "checkpoints" / "last.ckpt")["global_step"] > 200
    assert not (sweep_dir / "1").exists()  # the sweep stopped with its job
