"""What a sweep directory is: the run directories of a multirun's jobs (or an Optuna study's
trials) side by side, with Hydra's multirun.yaml and a wandb/ folder linking every run's wandb
records (an Optuna search's study too, by default: gptlab.runs.optuna_sweeper).

A sweep launched again into its own directory (`hydra.sweep.dir=DIR` with the same overrides, or
`resume=DIR`) goes on where it stopped, with the job numbers and directories of its first launch:
each job looks at its directory as it starts (earlier_outcome). One that finished is not trained
again, its result read back (the parallel and SLURM launchers read it back without starting it);
one that was stopped resumes from its last.ckpt (as a requeued SLURM job does); one that started
but saved nothing starts again, its partial records cleared; one that failed stays failed unless
the launch says retry_failed=true. How the sweep runs may change (the launcher,
hydra.sweeper.n_jobs), what it runs may not (RefuseAnotherSweep). An Optuna search's jobs are its
trials: a relaunch tries again, as the same job, each trial its dead launch left running, and asks
for the trials it still lacks.
"""

import contextlib
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from gptlab.runs import run_directory
from gptlab.runs.search_space import search_space

log = logging.getLogger(__name__)


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
    if not record.is_file():
        raise SystemExit(f"error: resume={sweep_dir}: not a sweep directory (it has no multirun.yaml)")
    launch = OmegaConf.load(record).hydra
    overrides = launch.overrides
    rest = [a for a in arguments if not a.startswith("resume=") and a not in ("-m", "--multirun")]
    given = {run_directory.override_key(a) for a in rest} | {"hydra.mode", "hydra.sweep.dir"}
    if "hydra/launcher" in given:  # another launcher: the first one's settings are not its own
        given.add("hydra.launcher")

    def replaced(override: str) -> bool:
        key = run_directory.override_key(override)
        return any(key == g or key.startswith(f"{g}.") for g in given)

    launched = [o for o in [*overrides.hydra, *overrides.task] if not replaced(o)]
    swept = set((launch.sweeper.get("params") or {}).keys())  # a sweep over experiments names them
    if "experiment" not in given | swept:
        launched += run_directory.composed_without_experiment(launch.runtime.choices, list(overrides.task))
    return ["-m", *launched, f"hydra.sweep.dir={sweep_dir}", *rest]


def grid_jobs(config: DictConfig) -> list[list[str]]:
    """The jobs of a grid sweep (Hydra's basic sweeper), each its overrides."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper

    overrides = OverridesParser.create().parse_overrides(sweep_arguments(config))
    (jobs,) = BasicSweeper.split_arguments(overrides, max_batch_size=None)
    return [sorted(job) for job in jobs]


def search(config: DictConfig) -> list[str]:
    """What an Optuna search searches, in lines: its study (storage, name, direction), each key's
    distribution, each fixed value. How it searches (n_trials, sampler, pruner) is not in it."""
    space, fixed = search_space(sweep_arguments(config))
    study = [
        f"hydra.sweeper.{k}={config.hydra.sweeper.get(k)}" for k in ("storage", "study_name", "direction")
    ]
    return (
        study
        + [f"{k}={v!r}" for k, v in sorted(space.items())]
        + [f"{k}={v}" for k, v in sorted(fixed.items())]
    )


def sweep_arguments(config: DictConfig) -> list[str]:
    """The sweeper's params and the command line's overrides (less retry_failed, which says how
    a relaunch treats its failed jobs, not which jobs they are)."""
    params = [f"{k}={v}" for k, v in (config.hydra.sweeper.get("params") or {}).items()]
    return params + [
        o for o in config.hydra.overrides.task if run_directory.override_key(o) != "retry_failed"
    ]


def difference(before: DictConfig, now: DictConfig) -> str | None:
    """How a relaunch's sweep differs from the one its sweep directory was launched with (its
    multirun.yaml), in words; None when they are the same. What may differ is how it runs."""
    kinds = [str(c.hydra.sweeper._target_).rsplit(".", 1)[-1] for c in (before, now)]
    if kinds[0] != kinds[1]:
        return f"it was swept by {kinds[0]}, this launch by {kinds[1]}"
    if kinds[0] != "BasicSweeper":
        was, is_now = search(before), search(now)
        gone, new = [x for x in was if x not in is_now], [x for x in is_now if x not in was]
        if gone and new:
            return f"its search had `{gone[0]}` where this launch's has `{new[0]}`"
        if gone or new:
            return (
                f"its search had `{gone[0]}`, this launch's has not"
                if gone
                else f"this launch's search has `{new[0]}`, its had not"
            )
        return None
    jobs_before, jobs_now = grid_jobs(before), grid_jobs(now)
    if len(jobs_before) != len(jobs_now):
        return f"it had {len(jobs_before)} jobs, this launch has {len(jobs_now)}"
    for num, (was_job, job_now) in enumerate(zip(jobs_before, jobs_now, strict=True)):
        if was_job != job_now:
            return f"its job {num} was `{' '.join(was_job)}`, this launch's is `{' '.join(job_now)}`"
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
        if reason := difference(OmegaConf.load(record), config):
            raise SystemExit(
                f"error: hydra.sweep.dir={sweep_dir} holds another sweep: {reason}. Launch it again "
                "with its own overrides (`resume=DIR` does), changing only how it runs "
                "(hydra.launcher.*, hydra.sweeper.n_jobs), or give another hydra.sweep.dir"
            )
        log.info("sweep %s launched again: its jobs go on where they stopped", sweep_dir)


def run_by_this_launch(run_dir: Path) -> contextlib.AbstractContextManager[None]:
    """A sweep's job runs in one launch at a time: one still running from an earlier launch
    (its driver killed, its own process left running, as the parallel launcher's may be) is
    waited for, and its outcome read once it has ended (run_directory.one_writer)."""
    return run_directory.one_writer(run_dir, wait=True)


def ended_before(run_dir: Path, retry_failed: bool) -> tuple[float, str] | None:
    """A sweep's job that ended in an earlier launch and is not run again, read from its
    summary.json without changing anything: its score (the best val_loss, or the worst score for
    a job that failed, unless retry_failed=true) and what it did, in words; None when it is to run."""
    summary_file = run_dir / "summary.json"
    if not summary_file.is_file():
        return None
    summary = json.loads(summary_file.read_text())
    if "error" in summary:
        if retry_failed:
            return None
        return (
            run_directory.NO_SCORE,
            f"failed in an earlier launch ({summary['error']}): retry_failed=true runs it",
        )
    best = summary.get("best_val_loss")
    score = run_directory.NO_SCORE if best is None else float(best)
    return score, f"finished in an earlier launch (best val_loss {best}): not trained again"


def earlier_outcome(run_dir: Path, retry_failed: bool) -> float | None:
    """What a sweep's job did in an earlier launch, if it ended: its score (ended_before), and it
    is not run again; None when it is to run: never started, stopped (it resumes from its
    last.ckpt), started but saved nothing (its partial records are cleared), or failed and
    retried."""
    if ended := ended_before(run_dir, retry_failed):
        log.info("this job %s", ended[1])
        return ended[0]
    (run_dir / "summary.json").unlink(missing_ok=True)  # a failed job's, retried
    if not (run_dir / "checkpoints" / "last.ckpt").is_file():
        for records in ("checkpoints", "csv", "wandb"):
            shutil.rmtree(run_dir / records, ignore_errors=True)
    return None


def relaunchable(hydra_config: DictConfig) -> bool:
    """Whether this job is one of a sweep that goes on when launched again: a grid sweep's (Hydra's
    basic sweeper), whose job numbers stand for the same jobs in every launch, or an Optuna
    search's, whose retried trials keep their job numbers."""
    sweeper = str(hydra_config.sweeper._target_)
    return hydra_config.mode == RunMode.MULTIRUN and sweeper.endswith(("BasicSweeper", "OptunaSweeper"))


def stopped_job(run_dir: Path) -> bool:
    """Whether a sweep's job was stopped in an earlier launch, saved: it resumes from there."""
    return (run_dir / "checkpoints" / "last.ckpt").is_file() and not (run_dir / "summary.json").is_file()
