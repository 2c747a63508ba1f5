"""What a sweep directory is: the run directories of a multirun's jobs (or an Optuna study's
trials) side by side, with Hydra's multirun.yaml, a wandb/ folder linking every run's wandb
records, and the seed an Optuna study continues with.

A sweep launched again into its own directory (`hydra.sweep.dir=DIR` with the same overrides, or
`resume=DIR`) goes on where it stopped, with the job numbers and directories of its first launch:
each job looks at its directory as it starts (earlier_outcome). One that finished is not trained
again, its result read back; one that was stopped resumes from its last.ckpt (as a requeued
SLURM job does); one that started but saved nothing starts again, its partial records cleared;
one that failed stays failed unless the launch says retry_failed=true. How the sweep runs may
change (the launcher, hydra.sweeper.n_jobs), what it runs may not (RefuseAnotherSweep).
"""

import contextlib
import fcntl
import json
import logging
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from gptlab.runs import run_directory

log = logging.getLogger(__name__)


def study_seed(seed: int, storage: str | None, study_name: str) -> int:
    """The Optuna sampler's seed: the run's seed for a new study. A study kept in a database
    and launched again gets the seed moved on by the trials it already holds: with the same
    seed the sampler would propose the very trials it proposed before."""
    if not storage:
        return seed
    import optuna

    try:
        trials = optuna.load_study(study_name=study_name, storage=storage).trials
    except Exception:  # no such study yet, or a storage the sweeper refuses, in one line, next
        return seed
    return seed + len(trials)


OmegaConf.register_new_resolver("gptlab.study_seed", study_seed)


def sweep_dir_of(config: DictConfig) -> Path | None:
    """The sweep the job of this config belongs to: its own, or for a resumed run of a sweep,
    the one whose folder holds its run directory (and Hydra's multirun.yaml, or an Optuna study's
    optimization_results.yaml once it has ended)."""
    if config.hydra.mode == RunMode.MULTIRUN:
        return Path(config.hydra.sweep.dir)
    parent = Path(config.hydra.runtime.output_dir).parent
    records = ("multirun.yaml", "optimization_results.yaml")
    return parent if any((parent / name).is_file() for name in records) else None


class LinkWandbRunsIntoSweep(Callback):
    """Hydra callback: when a job of a sweep ends (or a run of one resumes and ends), its wandb
    run folders are linked into the sweep's own wandb/ folder, so that `wandb leet SWEEP/wandb`
    shows the whole sweep and `wandb sync SWEEP/wandb/offline-run-*` uploads it; each run
    directory keeps its own."""

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        run_dir = Path(config.hydra.runtime.output_dir)
        sweep_dir = sweep_dir_of(config)
        if sweep_dir is None:
            return
        for run in sorted((run_dir / "wandb").glob("*run-*")):
            link = sweep_dir / "wandb" / run.name
            link.parent.mkdir(exist_ok=True)
            with contextlib.suppress(FileExistsError):  # linked already, by this job's other ranks
                link.symlink_to(os.path.relpath(run, link.parent), target_is_directory=True)


def relaunch_arguments(arguments: list[str]) -> list[str]:
    """`resume=DIR`: the command line the sweep in DIR was launched with (from its
    multirun.yaml), less what the arguments given now replace (another launcher replaces the
    first one's settings too), then those arguments (retry_failed=true, a launcher setting)."""
    given = [a for a in arguments if a.startswith("resume=")]
    if not given:
        return arguments
    sweep_dir = Path(given[-1].split("=", 1)[1])
    record = sweep_dir / "multirun.yaml"
    if (sweep_dir / "optimization_results.yaml").is_file():
        raise SystemExit(
            f"error: resume={sweep_dir} is an Optuna search: it goes on through its study, launched "
            "again with the same hydra.sweeper.storage and hydra.sweeper.study_name"
        )
    if not record.is_file():
        raise SystemExit(f"error: resume={sweep_dir}: not a sweep directory (it has no multirun.yaml)")
    overrides = OmegaConf.load(record).hydra.overrides
    rest = [a for a in arguments if not a.startswith("resume=") and a not in ("-m", "--multirun")]
    given = {run_directory.override_key(a) for a in rest} | {"hydra.mode", "hydra.sweep.dir"}
    if "hydra/launcher" in given:  # another launcher: the first one's settings are not its own
        given.add("hydra.launcher")

    def replaced(override: str) -> bool:
        key = run_directory.override_key(override)
        return any(key == g or key.startswith(f"{g}.") for g in given)

    launched = [o for o in [*overrides.hydra, *overrides.task] if not replaced(o)]
    return ["-m", *launched, f"hydra.sweep.dir={sweep_dir}", *rest]


def jobs_of(config: DictConfig) -> list[list[str]] | None:
    """The jobs of a grid sweep (Hydra's basic sweeper), each its overrides; None for another
    sweeper, whose jobs are decided as it runs."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper

    if not str(config.hydra.sweeper.get("_target_", "")).endswith("BasicSweeper"):
        return None
    params = [f"{k}={v}" for k, v in (config.hydra.sweeper.get("params") or {}).items()]
    # retry_failed says how a relaunch treats its jobs, not which jobs they are
    task = [o for o in config.hydra.overrides.task if run_directory.override_key(o) != "retry_failed"]
    overrides = OverridesParser.create().parse_overrides(params + task)
    (jobs,) = BasicSweeper.split_arguments(overrides, max_batch_size=None)
    return [sorted(job) for job in jobs]


def difference(before: DictConfig, now: DictConfig) -> str | None:
    """How a relaunch's jobs differ from those its sweep directory was launched with, in words;
    None when they are the same. (Only grid sweeps write multirun.yaml, which holds the first.)"""
    jobs_before, jobs_now = jobs_of(before), jobs_of(now)
    if jobs_before is None or jobs_now is None:
        return "one of them is not a grid sweep (an Optuna search goes on through its study's storage)"
    if len(jobs_before) != len(jobs_now):
        return f"it had {len(jobs_before)} jobs, this launch has {len(jobs_now)}"
    for num, (was, is_now) in enumerate(zip(jobs_before, jobs_now, strict=True)):
        if was != is_now:
            return f"its job {num} was `{' '.join(was)}`, this launch's is `{' '.join(is_now)}`"
    return None


class RefuseAnotherSweep(Callback):
    """Hydra callback: a sweep launched into a directory that holds another sweep (other
    overrides, other values, another search space) is refused in one line before anything is
    written; the same sweep launched again goes on (see the module's docstring)."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        record = sweep_dir / "multirun.yaml"
        if not record.is_file() or not any((p / ".hydra").is_dir() for p in sweep_dir.iterdir()):
            return  # no sweep there, or one refused before any job started
        if str(config.hydra.launcher._target_).endswith("SlurmLauncher"):
            # its jobs may still be queued or running: they would be submitted twice
            raise SystemExit(
                f"error: hydra.sweep.dir={sweep_dir} holds a sweep already, and a SLURM sweep cannot "
                "be launched again into its directory yet: resume a stopped job with "
                "`python -m gptlab.train ckpt_path=DIR/N`, or give another hydra.sweep.dir"
            )
        if reason := difference(OmegaConf.load(record), config):
            raise SystemExit(
                f"error: hydra.sweep.dir={sweep_dir} holds another sweep: {reason}. Launch it again "
                "with its own overrides (`resume=DIR` does), changing only how it runs "
                "(hydra.launcher.*, hydra.sweeper.n_jobs), or give another hydra.sweep.dir"
            )
        log.info("sweep %s launched again: its jobs go on where they stopped", sweep_dir)


@contextlib.contextmanager
def run_by_this_launch(run_dir: Path) -> Iterator[None]:
    """A grid sweep's job runs in one launch at a time: one still running from an earlier launch
    (its driver killed, its own process left running, as the parallel launcher's may be) is
    waited for, and its outcome read once it has ended. The lock goes with the process that
    holds it, however that ends."""
    lock_file = run_dir / ".hydra" / "launch.lock"
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_file, "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("this job is still running from an earlier launch: waiting for it to end")
            fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def earlier_outcome(run_dir: Path, retry_failed: bool) -> float | None:
    """What a grid sweep's job did in an earlier launch, if it ended: its score (the best
    val_loss, or the worst score for a job that failed), and it is not run again; None when it
    is to run: never started, stopped (it resumes from its last.ckpt), started but saved nothing
    (its partial records are cleared), or failed and retried."""
    summary_file = run_dir / "summary.json"
    if summary_file.is_file():
        summary = json.loads(summary_file.read_text())
        if "error" not in summary:
            best = summary.get("best_val_loss")
            log.info("this job finished in an earlier launch (best val_loss %s): not trained again", best)
            return run_directory.NO_SCORE if best is None else float(best)
        if not retry_failed:
            log.info("this job failed in an earlier launch (%s): retry_failed=true runs it", summary["error"])
            return run_directory.NO_SCORE
        summary_file.unlink()
    if not (run_dir / "checkpoints" / "last.ckpt").is_file():
        for records in ("checkpoints", "csv", "wandb"):
            shutil.rmtree(run_dir / records, ignore_errors=True)
    return None


def grid_sweep(hydra_config: DictConfig) -> bool:
    """Whether this job is one of a grid sweep's (Hydra's basic sweeper), whose job numbers stand
    for the same jobs in every launch; an Optuna study's are its trials, decided as it runs."""
    sweeper = str(hydra_config.sweeper._target_)
    return hydra_config.mode == RunMode.MULTIRUN and sweeper.endswith("BasicSweeper")


def stopped_job(run_dir: Path) -> bool:
    """Whether a sweep's job was stopped in an earlier launch, saved: it resumes from there."""
    return (run_dir / "checkpoints" / "last.ckpt").is_file() and not (run_dir / "summary.json").is_file()
