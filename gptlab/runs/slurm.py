"""`hydra/launcher=slurm`: a sweep submitted to SLURM, one job per run and one task per device,
built on hydra-submitit-launcher (each job runs the same Hydra job function, pickled by submitit).
What gptlab adds:

- a job whose tasks do not match its devices, that asks for more than a node of its partition
  has (GPUs on a CPU node, more cores or memory; SLURM would queue it for ever), for a partition
  that does not exist, or that sbatch refuses, stops the sweep before anything is queued, in one
  line naming the launcher settings to change;
- the batch shell passes on a signal meant for it alone (`--signal=B:USR2@90`, `scancel
  --batch`) to the tasks, where it stops, saves and requeues the run as a signal to the job's
  steps does (bash would otherwise die of it, or hold it until srun ends);
- the driver follows each job's state in squeue, which needs no accounting database: a requeued
  job is waited for (its result is the resumed run's), and a job that ends without a result
  (scancel, SIGKILL, out of memory, a node failure) ends the wait as failed, with SLURM's state
  as the reason in its summary.json;
- Ctrl-C cancels the sweep's jobs (a running one saves first, as SIGTERM makes it) and says how
  to continue; a sweep launched again into its directory waits for its jobs still on the cluster
  and submits only those that were stopped or never ran (earlier_launch).
"""

import json
import logging
import re
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, filter_overrides
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import BaseSubmititLauncher
from omegaconf import OmegaConf

from gptlab import cli
from gptlab.atomic import written_whole
from gptlab.cli import setting_error
from gptlab.runs import sweep_directory
from gptlab.runs.launcher import failed_job, job_dir

log = logging.getLogger(__name__)

POLL_SECONDS = 2.0
# SLURM states in which a job may still produce its result (a requeued job passes through
# COMPLETING or REQUEUED on its way back to PENDING)
ACTIVE_STATES = {
    "PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "REQUEUED", "REQUEUE_FED", "REQUEUE_HOLD",
    "RESIZING", "SUSPENDED", "STOPPED", "SIGNALING", "STAGE_OUT", "RESV_DEL_HOLD",
}  # fmt: skip
# a job seen out of those states (or no longer listed), with no result, for this long has ended
# without one: a state passed through on the way to a requeue does not end the wait
ENDED_AFTER_SECONDS = 10.0
# what the batch shell passes on to the tasks
FORWARDED_SIGNALS = ("USR1", "USR2", "TERM")


def device_count(devices: Any) -> Any:
    """`${gptlab.device_count:${trainer.devices}}`: how many tasks a job's devices take (auto: one)."""
    return 1 if devices == "auto" else devices


OmegaConf.register_new_resolver("gptlab.device_count", device_count)


def forwarding_lines() -> tuple[list[str], list[str]]:
    """The batch script's lines before and after srun, which runs in the background between them:
    bash runs a trap only once its foreground command has ended, but interrupts `wait` for one.
    srun passes the signal to every task of its step."""
    before = [
        f"trap 'kill -s {name} $GPTLAB_SRUN 2>/dev/null' {name}  # gptlab: a signal to the batch shell"
        for name in FORWARDED_SIGNALS
    ]
    after = [
        "GPTLAB_SRUN=$!",
        'while kill -0 "$GPTLAB_SRUN" 2>/dev/null; do wait "$GPTLAB_SRUN"; done',
        'wait "$GPTLAB_SRUN"',
    ]
    return before, after


def slurm_executor(folder: str, max_num_timeout: int) -> Any:
    """submitit's SlurmExecutor, with srun started in the background (see forwarding_lines)."""
    import submitit

    class BatchSignalForwardingExecutor(submitit.SlurmExecutor):
        @property
        def _submitit_command_str(self) -> str:
            return super()._submitit_command_str + " &"

    return BatchSignalForwardingExecutor(folder=folder, max_num_timeout=max_num_timeout)


def job_states(job_ids: Sequence[str]) -> dict[str, str]:
    """squeue's state of each job (array elements as `123_4`); a job squeue no longer lists is absent."""
    from submitit.slurm.slurm import read_job_id

    arrays = sorted({job_id.split("_")[0] for job_id in job_ids})
    result = subprocess.run(
        ["squeue", "--noheader", "--states=all", f"--jobs={','.join(arrays)}", "--format=%i %T"],
        capture_output=True,
        text=True,
    )
    states: dict[str, str] = {}
    if result.returncode != 0:  # squeue refuses ids it has forgotten: ask again one by one
        if len(arrays) > 1:
            for array in arrays:
                states |= job_states([array])
        return states
    for line in result.stdout.splitlines():
        listed, state = line.split()
        for main, *indices in read_job_id(listed):
            if not indices:
                states[main] = state
            else:
                for index in range(int(indices[0]), int(indices[-1]) + 1):
                    states[f"{main}_{index}"] = state
    return states


@dataclass
class NodeKind:
    """What each node of one kind in a partition has ("CPUs", "MB of memory", "GPUs"), as sinfo says."""

    count: int
    has: dict[str, int]


def partition_nodes() -> dict[str, list[NodeKind]]:
    """The kinds of node of each partition (the default partition's name ends with *)."""
    listed = subprocess.run(
        ["sinfo", "--noheader", "--format=%P|%c|%m|%G|%D"], capture_output=True, text=True, check=True
    ).stdout
    partitions: dict[str, list[NodeKind]] = {}
    for line in listed.splitlines():
        name, cpus, memory_mb, gres, count = line.split("|")
        gpus = sum(int(n) for n in re.findall(r"gpu(?::[^:,(]+)?:(\d+)", gres))
        has = {"CPUs": int(cpus.rstrip("+")), "MB of memory": int(memory_mb.rstrip("+")), "GPUs": gpus}
        partitions.setdefault(name, []).append(NodeKind(int(count), has))
    return partitions


def yaml_value(value: Any) -> str:
    """A setting as it is written on the command line (null, not None)."""
    return "null" if value is None else str(value)


class SlurmSweepLauncher(BaseSubmititLauncher):
    _EXECUTOR = "slurm"

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        from submitit.core.utils import FailedJobError

        assert self.config is not None and self.hydra_context is not None
        jobs = [(initial_job_idx + i, list(overrides)) for i, overrides in enumerate(job_overrides)]
        if shutil.which("sbatch") is None:
            raise setting_error(
                "hydra/launcher=slurm needs SLURM's sbatch: launch the sweep on a machine of the cluster"
            )
        for num, overrides in jobs:
            self.check_tasks_match_devices(num, overrides)
        self.check_a_node_has_what_a_job_asks()
        executor = self.executor()
        log.info(f"SLURM launcher: {len(jobs)} jobs, sweep output dir: {self.config.hydra.sweep.dir}")
        for num, overrides in jobs:
            log.info(f"\t#{num} : {' '.join(filter_overrides(overrides))}")
        still_running, ended_before = self.earlier_launch(jobs)
        to_submit = [(n, o) for n, o in jobs if n not in still_running and n not in ended_before]
        arguments = [
            (o, "hydra.sweep.dir", n, f"job_id_for_{n}", Singleton.get_state()) for n, o in to_submit
        ]
        try:
            submitted = executor.map_array(self, *zip(*arguments, strict=True)) if arguments else []
        except FailedJobError as err:
            raise setting_error(self.refusal(str(err))) from None
        slurm_jobs = still_running | {n: job for (n, _), job in zip(to_submit, submitted, strict=True)}
        self.record_job_ids({num: job.job_id for num, job in slurm_jobs.items()})
        if submitted:
            log.info(
                "submitted: " + ", ".join(f"#{n} is SLURM job {slurm_jobs[n].job_id}" for n, _ in to_submit)
            )
        ended = self.wait(list(slurm_jobs.values()))
        if cli.CtrlC.held:
            print(
                "stopped by Ctrl-C, its SLURM jobs cancelled (a running one saved first): continue the "
                f"sweep with `python -m gptlab.train -m resume={self.config.hydra.sweep.dir}`",
                file=sys.stderr,
            )
            sys.exit(cli.STOPPED_BY_CTRL_C)
        returns = ended_before | {
            num: self.job_return(slurm_jobs[num], ended.get(slurm_jobs[num].job_id), num, overrides)
            for num, overrides in jobs
            if num in slurm_jobs
        }
        return [returns[num] for num, _ in jobs]

    def earlier_launch(
        self, jobs: list[tuple[int, list[str]]]
    ) -> tuple[dict[int, Any], dict[int, JobReturn]]:
        """What an earlier launch of this sweep left of these jobs, by job number: the SLURM jobs
        of it still queued or running, to be waited for rather than submitted again; and the
        results of those that ended (finished, or failed unless retry_failed=true), read from
        their run directories rather than queued for. A job stopped, or never started, is neither:
        it is submitted (and resumes from its last.ckpt)."""
        import submitit

        assert self.config is not None
        recorded = self.recorded_job_ids()
        known = {num: recorded[str(num)] for num, _ in jobs if str(num) in recorded}
        states = job_states(list(known.values())) if known else {}
        still_running: dict[int, Any] = {}
        ended_before: dict[int, JobReturn] = {}
        for num, overrides in jobs:
            if states.get(known.get(num, ""), "gone") in ACTIVE_STATES:
                log.info(f"#{num} is still queued or running as SLURM job {known[num]}: waited for")
                still_running[num] = submitit.SlurmJob(
                    folder=self.params["submitit_folder"], job_id=known[num]
                )
                continue
            run_dir = job_dir(self, num, overrides)
            if (score := sweep_directory.earlier_outcome(run_dir, self.config.retry_failed)) is not None:
                ended_before[num] = JobReturn(
                    overrides=overrides, status=JobStatus.COMPLETED, _return_value=score
                )
        return still_running, ended_before

    def job_record(self) -> Path:
        """Which SLURM job each of the sweep's jobs is, for a relaunch to find them."""
        assert self.config is not None
        return Path(str(self.config.hydra.sweep.dir)) / ".submitit" / "slurm_jobs.json"

    def recorded_job_ids(self) -> dict[str, str]:
        record = self.job_record()
        return json.loads(record.read_text()) if record.is_file() else {}

    def record_job_ids(self, job_ids: dict[int, str]) -> None:
        recorded = self.recorded_job_ids() | {str(n): j for n, j in job_ids.items()}
        record = self.job_record()
        record.parent.mkdir(parents=True, exist_ok=True)
        with written_whole(record) as partial:
            partial.write_text(json.dumps(recorded, indent=1))

    def executor(self) -> Any:
        params = dict(self.params)
        executor = slurm_executor(params.pop("submitit_folder"), params.pop("max_num_timeout"))
        before, after = forwarding_lines()
        # each task's torch its share of the cores, as the parallel launcher gives (torch would
        # take every core of the node, whatever the job was given)
        threads = (
            '[ -n "$SLURM_CPUS_PER_TASK" ] && export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$SLURM_CPUS_PER_TASK}'
        )
        params["setup"] = [*(params.get("setup") or []), threads, *before]
        params["teardown"] = after
        executor.update_parameters(**executor._convert_parameters(params))
        return executor

    def check_tasks_match_devices(self, num: int, overrides: list[str]) -> None:
        """Lightning takes each SLURM task as one device's rank: a job must have as many tasks on
        each node as it has devices, on as many nodes."""
        assert self.hydra_context is not None and self.config is not None
        trainer = self.hydra_context.config_loader.load_sweep_config(self.config, overrides).trainer
        tasks, nodes = self.params.get("tasks_per_node"), self.params.get("nodes")
        if (device_count(trainer.devices), trainer.num_nodes) != (tasks, nodes):
            raise setting_error(
                f"trainer.devices={trainer.devices} and trainer.num_nodes={trainer.num_nodes} (job #{num}) "
                f"do not match hydra.launcher.tasks_per_node={yaml_value(tasks)} and "
                f"hydra.launcher.nodes={nodes}: SLURM starts one task per device, so set them alike"
            )

    def check_a_node_has_what_a_job_asks(self) -> None:
        """SLURM queues a job that no node of its partition can hold, where it waits for ever:
        such a sweep stops here, naming the settings that ask too much."""
        p = self.params
        partitions = partition_nodes()
        default = next((name for name in partitions if name.endswith("*")), None)
        name = p.get("partition") or (default or "").rstrip("*")
        kinds = partitions.get(name) or partitions.get(f"{name}*")
        if kinds is None:
            listed = ", ".join(n.rstrip("*") for n in partitions)
            raise setting_error(
                f"hydra.launcher.partition={yaml_value(p.get('partition'))}: no such partition here "
                f"(sinfo lists: {listed})"
            )
        settings = {
            "CPUs": f"tasks_per_node={p['tasks_per_node']} x "
            f"cpus_per_task={yaml_value(p.get('cpus_per_task'))}",
            "MB of memory": f"mem_gb={yaml_value(p.get('mem_gb'))}",
            "GPUs": f"gpus_per_node={yaml_value(p.get('gpus_per_node'))}",
        }
        needs = {
            "CPUs": p["tasks_per_node"] * (p.get("cpus_per_task") or 1),
            "MB of memory": (p.get("mem_gb") or 0) * 1024,
            "GPUs": p.get("gpus_per_node") or 0,
        }
        largest = {what: max(kind.has[what] for kind in kinds) for what in needs}
        too_much = [
            f"hydra.launcher.{settings[what]} asks a node for {needs[what]} {what}, which has {largest[what]}"
            for what in needs
            if needs[what] > largest[what]
        ]
        fitting = sum(k.count for k in kinds if all(k.has[what] >= needs[what] for what in needs))
        if not too_much and fitting < p["nodes"]:
            too_much = [f"hydra.launcher.nodes={p['nodes']} asks for more nodes than the {fitting} that fit"]
        if too_much:
            gpus_asked = needs["GPUs"] > largest["GPUs"] == 0
            hint = " (nodes without GPUs: hydra.launcher.gpus_per_node=null)" if gpus_asked else ""
            raise setting_error(f"no node of partition {name} can hold a job: {'; '.join(too_much)}{hint}")

    def refusal(self, sbatch_error: str) -> str:
        """sbatch's own reason, in one line with the settings the jobs were submitted with."""
        lines = [line.removeprefix("sbatch: error: ") for line in sbatch_error.splitlines() if line.strip()]
        settings = ", ".join(
            f"{key}={yaml_value(value)}"
            for key, value in self.params.items()
            if key not in ("submitit_folder", "setup", "name") and value not in (None, {}, [])
        )
        reason = lines[-1] if lines else "no reason given"
        return f"sbatch refused the jobs: {reason} (hydra.launcher: {settings})"

    def wait(self, jobs: list[Any]) -> dict[str, str]:
        """Until every job has its result, or has ended without one. Returns the last state of
        each job that ended without a result."""
        waiting = {job.job_id: job for job in jobs}
        ended_since: dict[str, float] = {}
        ended: dict[str, str] = {}
        cancelled = False
        while waiting:
            if cli.CtrlC.held and not cancelled:
                # SIGTERM to each running job's tasks, which save and stop; queued ones never start
                log.info("Ctrl-C: the sweep's SLURM jobs are cancelled; a running one saves first")
                subprocess.run(["scancel", *waiting], check=False)
                cancelled = True
            states = job_states(list(waiting))
            now = time.monotonic()
            for job_id, job in list(waiting.items()):
                state = states.get(job_id, "gone")
                if job.task(0).paths.result_pickle.exists():  # the first task's, as Hydra's launcher reads
                    del waiting[job_id]
                elif state in ACTIVE_STATES:
                    ended_since.pop(job_id, None)
                elif now - ended_since.setdefault(job_id, now) >= ENDED_AFTER_SECONDS:
                    ended[job_id] = state
                    del waiting[job_id]
            if waiting:
                time.sleep(POLL_SECONDS)
        return ended

    def job_return(self, job: Any, ended_as: str | None, num: int, overrides: list[str]) -> JobReturn:
        """The job's own JobReturn, or for a job that failed outside the run (submitit's error,
        or no result at all) a failed run whose summary.json says why."""
        first_task = job.task(0)
        if ended_as is None:
            outcome, result = first_task._get_outcome_and_result()
            if outcome == "success" and result.status != JobStatus.FAILED:
                return result
            # submitit's traceback (its last line), or what the job function raised
            reason = result.strip().splitlines()[-1] if outcome == "error" else str(result._return_value)
        else:
            reason = f"SLURM job {job.job_id} ended {ended_as} without a result"
        return failed_job(
            self, num, overrides, f"{reason} (log: {shlex.quote(str(first_task.paths.stdout))})"
        )
