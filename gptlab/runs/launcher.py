"""`hydra/launcher=parallel`: a sweep's jobs side by side on one machine, each pinned to its own
devices. `hydra.launcher.devices` is the pool (default: every GPU visible here); each job takes
`trainer.devices` of them, as many jobs run at once as the pool allows, and the next job starts
as soon as a finished one frees enough devices.

Built on hydra-submitit-launcher's local launcher: submitit's LocalExecutor starts each job in a
fresh Python process with CUDA_VISIBLE_DEVICES set to the GPUs it is given (`visible_gpus`), so
CUDA never starts with another job's devices, and it keeps each job's output under
.submitit/ in the sweep directory. (hydra-joblib-launcher's workers are reused from job to job,
so a worker keeps the GPUs its CUDA started with.) What this adds is only the device pool: which job starts
when, on which devices, with a distinct MASTER_PORT for each job's own DDP and (unless
OMP_NUM_THREADS is set) each device's process its share of the CPU cores. Ctrl-C reaches the jobs
(they save and stop) and the launcher, which starts no further job and says how to continue.
"""

import logging
import os
import signal
import sys
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, filter_overrides
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import LocalLauncher
from omegaconf import open_dict

from gptlab import cli
from gptlab.cli import setting_error
from gptlab.runs import run_directory, sweep_directory

log = logging.getLogger(__name__)

POLL_SECONDS = 0.5


@dataclass
class Job:
    num: int
    overrides: list[str]
    devices_needed: int
    run_dir: Path


class DevicePoolLauncher(LocalLauncher):
    def __init__(self, devices: Sequence[int] | None = None, **params: Any) -> None:
        super().__init__(**params)
        self.devices = list(devices) if devices is not None else None

    def device_pool(self) -> list[int]:
        if self.devices is not None:
            if not self.devices or not all(isinstance(d, int) and d >= 0 for d in self.devices):
                raise setting_error(
                    f"hydra.launcher.devices={self.devices}", "give device numbers, e.g. [0,1]"
                )
            return self.devices
        import torch

        if torch.cuda.device_count() == 0:
            raise setting_error(
                "hydra.launcher.devices=null takes every visible GPU, and there is none here: give the "
                "slots to share, e.g. hydra.launcher.devices=[0,1]"
            )
        return list(range(torch.cuda.device_count()))

    @staticmethod
    def devices_needed(devices: Any) -> int:
        """A job's trainer.devices as a count ("auto": one)."""
        if devices == "auto":
            return 1
        if isinstance(devices, bool) or not isinstance(devices, int) or devices < 1:
            raise setting_error(
                f"trainer.devices={devices} is not allowed with hydra/launcher=parallel: give a number of "
                "devices (the launcher picks which), or auto for one"
            )
        return devices

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        """Hydra's interface: a batch of jobs, as many at once as the devices allow."""
        pool = self.device_pool()
        # every job fits the pool, before any starts
        waiting = deque(self.job(initial_job_idx + i, list(o), pool) for i, o in enumerate(job_overrides))
        returns: dict[int, JobReturn] = {}
        self.run_jobs(
            lambda: waiting.popleft() if waiting else None, returns.__setitem__, max(1, len(waiting)), pool
        )
        return [returns[initial_job_idx + i] for i in range(len(job_overrides))]

    def launch_as_ready(
        self,
        next_job: Callable[[], tuple[int, list[str]] | None],
        ended: Callable[[int, JobReturn], None],
        at_once: int,
    ) -> None:
        """Runs jobs until next_job has none left while none runs, asking for the next (its number
        and overrides) only when fewer than at_once run and the last one asked for has started:
        an Optuna sweeper asks for a trial as soon as one ends, seeing every result before. Each
        job that ends is handed to ended."""
        pool = self.device_pool()

        def next_ready() -> Job | None:
            asked = next_job()
            return None if asked is None else self.job(*asked, pool)

        self.run_jobs(next_ready, ended, at_once, pool)

    def run_jobs(
        self,
        next_job: Callable[[], Job | None],
        ended: Callable[[int, JobReturn], None],
        at_once: int,
        pool: list[int],
    ) -> None:
        import submitit

        assert self.config is not None
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        log.info(f"Parallel launcher: jobs on devices {pool}, sweep output dir: {sweep_dir}")
        executor = submitit.LocalExecutor(folder=self.params["submitit_folder"])
        executor.update_parameters(
            timeout_min=self.params["timeout_min"], stderr_to_stdout=self.params["stderr_to_stdout"]
        )

        threads = max(1, (os.cpu_count() or 1) // len(pool))  # for each device's process
        free = list(pool)
        running: dict[int, tuple[Any, list[int], Job]] = {}
        pending: Job | None = None  # asked for, waiting for devices
        asking = True
        try:
            while asking or pending or running:
                if cli.CtrlC.held and (asking or pending):  # the running jobs got it too: they save and stop
                    log.info("Ctrl-C: no further job starts; the running ones save and stop")
                    asking, pending = False, None
                while True:
                    if asking and pending is None and len(running) < at_once:
                        pending = next_job()
                        asking = pending is not None
                        if pending is not None and (earlier := self.ended_before(pending)):
                            ended(pending.num, earlier)  # no process to start
                            pending = None
                            continue
                    # a job that needs more devices than are free waits for them
                    if pending is None or pending.devices_needed > len(free):
                        break
                    devices, free = free[: pending.devices_needed], free[pending.devices_needed :]
                    submitted = self.start(executor, pending, devices, threads)
                    running[pending.num] = (submitted, devices, pending)
                    pending = None
                time.sleep(POLL_SECONDS)
                for num, (submitted, devices, job) in list(running.items()):
                    if submitted.done():
                        del running[num]
                        free = sorted(free + devices)
                        ended(num, self.job_return(submitted, job))
                        asking = not cli.CtrlC.held  # what ended may have more to ask for (a retry)
        except BaseException:
            for submitted, _, _ in running.values():  # Ctrl-C or a failure here: no job left behind
                submitted.cancel(check=False)
            raise
        if cli.CtrlC.held:
            print(
                f"stopped by Ctrl-C, its jobs saved: continue the sweep with "
                f"`python -m gptlab.train -m resume={sweep_dir}`",
                file=sys.stderr,
            )
            sys.exit(cli.STOPPED_BY_CTRL_C)

    def job(self, num: int, overrides: list[str], pool: list[int]) -> Job:
        """A job of the sweep, its config composed as the job will compose it."""
        assert self.hydra_context is not None and self.config is not None
        config = self.hydra_context.config_loader.load_sweep_config(self.config, overrides)
        job = Job(num, overrides, self.devices_needed(config.trainer.devices), run_dir_of(config, num))
        if job.devices_needed > len(pool):
            raise setting_error(
                f"trainer.devices={job.devices_needed} (job #{num}) is more than the {len(pool)} devices "
                f"of hydra.launcher.devices={pool}"
            )
        return job

    def ended_before(self, job: Job) -> JobReturn | None:
        """The result of a job that ended in an earlier launch of this sweep (finished, or failed
        unless retry_failed=true), read from its run directory; None when it is to run (a job
        still running from a killed driver's launch is run, and waits for it)."""
        assert self.config is not None
        if not sweep_directory.relaunchable(self.config.hydra):
            return None
        if not (ended := sweep_directory.ended_before(job.run_dir, self.config.retry_failed)):
            return None
        log.info(f"\t#{job.num} {ended[1]}")
        return JobReturn(overrides=job.overrides, status=JobStatus.COMPLETED, _return_value=ended[0])

    def start(self, executor: Any, job: Job, devices: list[int], threads: int) -> Any:
        # Lightning here, not at the top: Hydra imports this module in every entry point
        from lightning.fabric.plugins.environments.lightning import find_free_network_port

        log.info(f"\t#{job.num} : {' '.join(filter_overrides(job.overrides))} (devices {devices})")
        # each job's own DDP gets its own port: jobs starting together would otherwise race for one
        setup = [f"export MASTER_PORT={find_free_network_port()}"]
        if "OMP_NUM_THREADS" not in os.environ:
            # each process its share of the CPU cores: jobs side by side that each use all of
            # them thrash (on a CPU machine, many times slower than one job at a time)
            setup.append(f"export OMP_NUM_THREADS={threads}")
        executor.update_parameters(visible_gpus=devices, gpus_per_node=len(devices), setup=setup)
        # the job's submitit controller is started ignoring Ctrl-C, which it would pass on to the
        # job and then, a second later, SIGKILL it while it saves; the run sets its own handler
        handler = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            state, job_id = Singleton.get_state(), f"job_id_for_{job.num}"
            return executor.submit(self, job.overrides, "hydra.sweep.dir", job.num, job_id, state)
        finally:
            signal.signal(signal.SIGINT, handler)

    def job_return(self, submitted: Any, job: Job) -> JobReturn:
        """The job's own JobReturn; for a process that died without one (killed, out of memory), a
        failed run that names its log, unless it had saved where it stopped (Ctrl-C, SIGTERM, or
        killed after a checkpoint) or was stopped by Ctrl-C before its first step: launching the
        sweep again resumes or runs it."""
        try:
            return submitted.result()
        except Exception as err:  # submitit's UncompletedJobError/FailedJobError
            run_dir = job.run_dir
            saved = sweep_directory.stopped_job(run_dir)
            if saved or (cli.CtrlC.held and not (run_dir / "summary.json").exists()):
                how = "saved in " + str(run_dir) if saved else "by Ctrl-C before its first step"
                log.info(f"#{job.num} stopped, {how}: launching the sweep again runs it on")
                return JobReturn(
                    overrides=job.overrides, status=JobStatus.COMPLETED, _return_value=run_directory.NO_SCORE
                )
            reason = f"{type(err).__name__} (log: {submitted.paths.stdout})"
            return failed_job(self, job.num, job.overrides, f"the job's process died: {reason}")


def job_dir(launcher: Any, num: int, overrides: list[str]) -> Path:
    """The run directory of a sweep's job, as the job names it (launcher: a launcher or sweeper
    Hydra has set up)."""
    return run_dir_of(launcher.hydra_context.config_loader.load_sweep_config(launcher.config, overrides), num)


def run_dir_of(config: Any, num: int) -> Path:
    """The run directory of job num, from its composed config."""
    with open_dict(config.hydra.job):
        config.hydra.job.num = num
    return Path(str(config.hydra.sweep.dir)) / str(config.hydra.sweep.subdir)


def failed_job(launcher: Any, num: int, overrides: list[str], reason: str) -> JobReturn:
    """What a job that ended without a result of its own returns to the sweeper, as a run that
    failed does (gptlab.train): the worst score, its reason in its run directory's summary.json
    (unless the run wrote one), so the end-of-sweep table and gptlab.compare list it as failed."""
    log.error(f"#{num} failed: {reason}")
    run_dir = job_dir(launcher, num, overrides)
    if not (run_dir / "summary.json").exists():
        run_directory.record_failure(run_dir, reason)
    return JobReturn(overrides=overrides, status=JobStatus.COMPLETED, _return_value=run_directory.NO_SCORE)


def register_with_hydra() -> None:
    """Hydra finds launchers and sweepers by scanning the hydra_plugins package, where the wheel
    installs ours (hydra_plugins.gptlab); an editable install's import hook hides it from that scan."""
    from hydra.core.plugins import Plugins
    from hydra_plugins.gptlab import OptunaSweeper, ParallelLauncher, SlurmLauncher

    for plugin in (ParallelLauncher, SlurmLauncher, OptunaSweeper):
        Plugins.instance().register(plugin)
