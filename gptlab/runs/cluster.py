"""What a cluster launcher says about this process: whether it is one rank of a job whose ranks
the launcher started (SLURM tasks, torchrun workers, LSF, MPI: the Lightning cluster environments
that detect themselves), whether the job was restarted (a SLURM requeue, a torchrun restart), and
the one start time all ranks of a job agree on, so that they agree on one run directory
(`${gptlab.now:...}` in conf/hydra/default.yaml).
"""

import functools
import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import datetime, timedelta

from lightning.fabric.plugins.environments import (
    ClusterEnvironment,
    LSFEnvironment,
    MPIEnvironment,
    SLURMEnvironment,
    TorchElasticEnvironment,
)
from omegaconf import OmegaConf
from torch.distributed import TCPStore

log = logging.getLogger(__name__)

# how long the ranks of a job wait for rank 0 to hand out a value (its start time, say)
RANK_ZERO_TIMEOUT = timedelta(minutes=5)
START_TIME_KEY = "gptlab/start_time"
# where the agreed start time is kept, for this process and those it starts
START_TIME_VARIABLE = "GPTLAB_START_TIME"


def launcher_environment() -> ClusterEnvironment | None:
    """The cluster environment that started this process as one rank of several, if any. A SLURM
    job with one task is not one: its process starts the ranks itself (Lightning does the same)."""
    if TorchElasticEnvironment.detect():
        return TorchElasticEnvironment()
    # (detect() warns on every machine with srun but no SLURM job, a login node say)
    if int(os.environ.get("SLURM_NTASKS", 1)) > 1 and SLURMEnvironment.detect():
        return SLURMEnvironment()
    for environment in (LSFEnvironment, MPIEnvironment):
        if environment.detect():
            return environment()
    return None


def global_rank() -> int:
    """This process's rank in its job: 0 when no launcher started it."""
    environment = launcher_environment()
    return environment.global_rank() if environment is not None else 0


def is_rank_zero() -> bool:
    """Whether this process is rank 0 of its job: not a rank a cluster launcher started as
    another, nor one Lightning's DDP started by running the command line again (LOCAL_RANK,
    NODE_RANK)."""
    started_by_lightning = any(int(os.environ.get(name, 0)) > 0 for name in ("LOCAL_RANK", "NODE_RANK"))
    return global_rank() == 0 and not started_by_lightning


def restarted() -> bool:
    """Whether the job running here was started before and stopped: requeued by SLURM (after
    preemption, or by Lightning or submitit before a time limit), or restarted by torchrun."""
    return (
        int(os.environ.get("SLURM_RESTART_COUNT", 0)) > 0
        or int(os.environ.get("TORCHELASTIC_RESTART_COUNT", 0)) > 0
    )


def shield_wandb_service() -> None:
    """In a SLURM job, wandb's service process (wandb-core, which collects the run's records)
    is started detached from this process, where the signals SLURM sends to a job's steps
    (`--signal`, `scancel --signal`, the SIGTERM of a requeue) do not reach it. Started by wandb
    itself it would be this process's child, which SLURM signals as well wherever it tracks
    processes by their parents (proctrack/linuxproc), and wandb-core ends on SIGTERM: the run's
    records would be lost just when it saves and stops. Processes started here connect to it
    through WANDB_SERVICE; it ends a minute after the last of them has gone."""
    if "SLURM_JOB_ID" not in os.environ or "WANDB_SERVICE" in os.environ:
        return
    try:
        started = subprocess.run(
            [sys.executable, "-m", "wandb", "beta", "core", "start", "--idle-timeout", "1m"],
            capture_output=True,
            text=True,
            check=True,
        )
    except (OSError, subprocess.CalledProcessError) as err:
        log.warning("wandb's service could not be started detached (%s): SLURM's signals may end it", err)
        return
    os.environ["WANDB_SERVICE"] = started.stdout.strip()


def agreed_start_time() -> str:
    """Rank 0's local time (ISO format) on every rank of a job a launcher started, whatever each
    node's clock or time zone says."""
    return from_rank_zero(START_TIME_KEY, lambda: datetime.now().isoformat())


def from_rank_zero(key: str, value: Callable[[], str]) -> str:
    """value() as rank 0 computes it, on every rank of a job a launcher started (computed here
    when no launcher did). Rank 0 hands it out through a TCPStore at the job's main address
    (torchrun's own store, which its agent keeps; for other launchers rank 0's, see job_store)
    and waits until every rank has read it, so that a rank 0 that fails right after leaves no
    rank waiting for it."""
    environment = launcher_environment()
    if environment is None or environment.world_size() == 1:
        return value()
    rank, world_size = environment.global_rank(), environment.world_size()
    agent_store = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
    store = job_store(environment.main_address, environment.main_port, rank, world_size, agent_store)
    # the first value set wins: a torchrun restart reads the one of the job's first start
    agreed = store.compare_set(key, "", value()).decode() if rank == 0 else store.get(key).decode()
    if not agent_store:
        store.add(f"{key}/read", 1)
        while rank == 0 and store.add(f"{key}/read", 0) < world_size:
            time.sleep(0.05)
    return agreed


@functools.cache
def job_store(address: str, port: int, rank: int, world_size: int, agent_store: bool) -> TCPStore:
    """The job's store at its main address: under torchrun a client of its agent's; otherwise
    rank 0 serves it, open for the life of the process and multi-tenant, so that DDP's own store
    on that port (torch's init_process_group makes it multi-tenant too) shares its server. Were it
    closed instead, a rank quicker to DDP's set-up than rank 0 could connect to a server on its
    way out and fail ("Connection reset by peer")."""
    return TCPStore(
        address,
        port,
        world_size=None if agent_store else world_size,
        is_master=rank == 0 and not agent_store,
        timeout=RANK_ZERO_TIMEOUT,
        wait_for_workers=False,
        multi_tenant=True,
    )


def agree_on_start_time() -> None:
    """Called by the entry point before Hydra names the run directory: every process started from
    here (a sweep's jobs, SLURM jobs submitted from here, requeued ones) inherits the time."""
    if START_TIME_VARIABLE not in os.environ:
        os.environ[START_TIME_VARIABLE] = agreed_start_time()


def now(pattern: str) -> str:
    """`${gptlab.now:%Y-%m-%d}`: Hydra's `${now:...}`, formatting the job's agreed start time."""
    started = os.environ.get(START_TIME_VARIABLE)
    return (datetime.fromisoformat(started) if started else datetime.now()).strftime(pattern)


OmegaConf.register_new_resolver("gptlab.now", now, use_cache=True)
