"""`hydra/sweeper=optuna` (conf/hydra/sweeper/optuna.yaml, chosen by `hparams_search=optuna`): an
Optuna study drives the sweep. It asks for `n_jobs` trials at a time, runs them as the sweep's jobs
through whatever launcher the sweep has (basic, parallel, slurm), and tells the study each
trial's result: what the train entry returns, the run's best val_loss.

gptlab's own sweeper, over Optuna's ask-and-tell interface, in place of hydra-optuna-sweeper:
that plugin's released line holds Optuna below 3 (and with it SQLAlchemy below 2, and SciPy,
which every run then imported), and its Optuna 3/4 line needs a pre-release of hydra-core. It
keeps that plugin's settings (params, n_trials, n_jobs, sampler, storage, study_name,
direction) and its command-line search spaces, in Hydra's override grammar:

    optim.lr=tag(log, interval(1e-5, 3e-2))   a float, sampled on a log scale
    optim.lr=interval(1e-4, 1e-2)             a float
    optim.warmup_steps=int(interval(0, 100))  an integer
    model.n_layer=range(2, 6)                 an integer from 2 to 6, both included
    trainer.max_steps=range(1000, 3000, step=500)
    model.n_embd=choice(96, 192) or 96,192    one of these values
    data.batch_size=32                        a plain value: fixed for every trial, not searched

A key on the command line replaces the same key of `params`. The study's best trial is written
to optimization_results.yaml in the sweep directory.

The study survives its sweep: it lives in `storage`, by default Optuna's journal file
optuna.journal in the sweep directory (a path instead names another journal file, which suits a
cluster's shared file system; a URL names a database, sqlite:///study.db). Each trial records
its job's number and sweep directory. Launched again into its directory (`resume=DIR`, or the
same command with `hydra.sweep.dir=DIR`), a sweep first retries the trials its dead launch left
RUNNING: each is marked FAIL and asked again with the same parameters, as the same job in the
same directory, where the job resumes from its last.ckpt if it saved one (gptlab.runs.
sweep_directory). COMPLETE, PRUNED and finally failed trials count towards `n_trials`, so a
relaunch finishes the planned study, and a finished one trains nothing (raise n_trials for more).

Trials report each validation's val_loss to the study, where `pruner` (none by default) may stop
a trial that is doing worse than the others did at that step (gptlab.training.pruning); the run
ends validated and saved, and the study records it PRUNED.

With the parallel launcher a new trial is asked for as soon as one ends (the launcher's
launch_as_ready), so the sampler always sees every finished trial; with the basic and slurm
launchers, `n_jobs` trials are asked for at a time and run as one batch (a retried trial, which
keeps its job's number, in a batch of its own).
"""

import contextlib
import fcntl
import functools
import json
import logging
import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hydra.core.plugins import Plugins
from hydra.core.utils import JobReturn, JobStatus
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf, open_dict

from gptlab import cli
from gptlab.cli import setting_error
from gptlab.runs import sweep_directory
from gptlab.runs.launcher import job_dir
from gptlab.runs.search_space import grid, search_space

if TYPE_CHECKING:  # imported when a study runs: Hydra imports this module in every entry point
    import optuna

log = logging.getLogger(__name__)

DIRECTIONS = ("minimize", "maximize")
JOURNAL_FILE = "optuna.journal"  # the study's default storage, in the sweep directory


def study_storage(storage: str | None, sweep_dir: Path) -> "str | optuna.storages.BaseStorage":
    """Where the study lives: a database URL as given; a file path, or by default (null) the
    sweep directory's optuna.journal, as Optuna's journal file storage."""
    if storage and "://" in storage:
        return storage
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    path = Path(storage) if storage else sweep_dir / JOURNAL_FILE
    return JournalStorage(JournalFileBackend(str(path)))


def open_study(
    storage: str | None, sweep_dir: Path, study_name: str | None, direction: str
) -> "optuna.Study":
    """The study, created or (in a storage that has it) loaded. A storage that cannot be opened,
    or that an older Optuna wrote, stops the sweep in one line before any trial runs."""
    import optuna

    try:
        return optuna.create_study(
            storage=study_storage(storage, sweep_dir),
            study_name=study_name,
            direction=direction,
            load_if_exists=True,
        )
    except RuntimeError as err:
        if "optuna storage upgrade" not in str(err):
            raise
        raise setting_error(
            f"hydra.sweeper.storage={storage} holds a study of an older Optuna: upgrade it once with "
            f"`optuna storage upgrade --storage {storage}` (back it up first), or give another storage"
        ) from None
    except (ImportError, ValueError, OSError) as err:
        raise storage_error(storage, " ".join(str(err).split())) from None
    except Exception as err:  # SQLAlchemy's errors for a URL it cannot use
        if type(err).__module__.startswith("sqlalchemy"):
            raise storage_error(storage, type(err).__name__) from None
        raise


def storage_error(storage: str | None, reason: str) -> SystemExit:
    return setting_error(
        f"hydra.sweeper.storage={storage} cannot be opened ({reason}): give a database URL such as "
        "sqlite:///study.db, a journal file's path, or null for optuna.journal in the sweep directory"
    )


@contextlib.contextmanager
def this_launch_only(sweep_dir: Path) -> Iterator[None]:
    """One launch at a time drives a sweep directory's study: a relaunch fails the trials it
    finds RUNNING there, which must not be another live launch's."""
    with open(sweep_dir / ".sweeper.lock", "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise setting_error(
                f"hydra.sweep.dir={sweep_dir}: another launch is running this sweep; wait for it to end "
                "or stop it (Ctrl-C) before launching it again"
            ) from None
        yield


def retried(study: "optuna.Study") -> set[int]:
    """The numbers of the failed trials that are being (or were) tried again."""
    return {t.user_attrs["retry_of"] for t in study.get_trials(deepcopy=False) if "retry_of" in t.user_attrs}


def trials_done(study: "optuna.Study") -> int:
    """The trials that count towards n_trials: COMPLETE, PRUNED, and FAIL unless tried again."""
    import optuna

    again = retried(study)
    finished = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    return sum(
        t.state in finished or (t.state == optuna.trial.TrialState.FAIL and t.number not in again)
        for t in study.get_trials(deepcopy=False)
    )


def retry(study: "optuna.Study", trial: "optuna.trial.FrozenTrial") -> None:
    """Marks a trial whose run was stopped or killed FAIL and queues it again: the same
    parameters, the same job and directory (where the run resumes from its last.ckpt)."""
    import optuna

    if trial.state == optuna.trial.TrialState.RUNNING:
        tell(study, trial.number, state=optuna.trial.TrialState.FAIL)
    attrs = {k: trial.user_attrs[k] for k in ("job", "sweep_dir")} | {"retry_of": trial.number}
    study.enqueue_trial(trial.params, user_attrs=attrs)
    log.info("trial %d (job %d) was stopped: it is tried again", trial.number, trial.user_attrs["job"])


def retry_dead_trials(study: "optuna.Study", sweep_dir: Path) -> None:
    """The trials a dead launch of this sweep left RUNNING, tried again."""
    import optuna

    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        if in_sweep(trial, sweep_dir):
            retry(study, trial)


def in_sweep(trial: "optuna.trial.FrozenTrial", sweep_dir: Path) -> bool:
    """Whether a trial ran as a job of this sweep directory (a study may be shared by several)."""
    return trial.user_attrs.get("sweep_dir") == str(sweep_dir)


def next_job_number(study: "optuna.Study", sweep_dir: Path) -> int:
    """After the jobs this sweep directory holds, and those its study knows of."""
    nums = [int(p.name) for p in sweep_dir.iterdir() if p.name.isdigit()]
    nums += [t.user_attrs["job"] for t in study.get_trials(deepcopy=False) if in_sweep(t, sweep_dir)]
    return max(nums, default=-1) + 1


class TrialJobs:
    """A study's trials as a sweep's jobs: next_job asks the study for a trial, ended tells it
    the job's outcome (read from the job's run directory)."""

    def __init__(
        self,
        study: "optuna.Study",
        space: dict[str, Any],
        fixed: dict[str, str],
        sweep_dir: Path,
        n_trials: int,
        job_dir: Callable[[int, list[str]], Path],
    ) -> None:
        self.study, self.space, self.fixed, self.sweep_dir, self.job_dir = (
            study,
            space,
            fixed,
            sweep_dir,
            job_dir,
        )
        self.to_ask = n_trials - trials_done(study)
        self.next_num = next_job_number(study, sweep_dir)
        self.running: dict[int, tuple[optuna.Trial, list[str]]] = {}
        self.retried_here: set[int] = set()  # jobs stopped and tried again in this launch: once each

    def next_job(self) -> tuple[int, list[str]] | None:
        if self.to_ask <= 0:
            return None
        self.to_ask -= 1
        trial = self.study.ask(self.space)
        num = trial.user_attrs.get("job")
        if num is None or trial.user_attrs.get("sweep_dir") != str(self.sweep_dir):
            num, self.next_num = self.next_num, self.next_num + 1
            trial.set_user_attr("job", num)
            trial.set_user_attr("sweep_dir", str(self.sweep_dir))
        overrides = [f"{k}={v}" for k, v in trial.params.items()] + [
            f"{k}={v}" for k, v in self.fixed.items()
        ]
        self.running[num] = (trial, overrides)
        return num, overrides

    def ended(self, num: int, job: JobReturn) -> None:
        """Tells the study how the job ended: its value, PRUNED, FAIL (the run failed), or, for
        a run stopped after saving, FAIL and the trial queued again (once in a launch)."""
        import optuna

        trial, overrides = self.running.pop(num)
        run_dir = self.job_dir(num, overrides)
        summary_file = run_dir / "summary.json"
        summary = json.loads(summary_file.read_text()) if summary_file.is_file() else None
        state = optuna.trial.TrialState
        if summary is None and cli.CtrlC.held:  # stopped with the sweep: a relaunch tries it again
            return
        if summary is None and sweep_directory.stopped_job(run_dir) and num not in self.retried_here:
            self.retried_here.add(num)
            retry(self.study, self.study.get_trials(deepcopy=False)[trial.number])
            self.to_ask += 1
            return
        if job.status != JobStatus.COMPLETED or summary is None or "error" in summary:
            reason = (summary or {}).get("error") or "it ended without a summary.json"
            log.warning("trial %d (job %d) failed: %s", trial.number, num, reason)
            told: dict[str, Any] = {"state": state.FAIL}
        elif summary.get("pruned"):
            told = {"state": state.PRUNED}
        else:
            told = {"values": float(job.return_value)}
        tell(self.study, trial, **told)


def tell(study: "optuna.Study", trial: "optuna.Trial | int", **told: Any) -> None:
    """study.tell; the grid sampler stops the study once its last combination is told, which
    ask-and-tell does not allow (RuntimeError), but Optuna has stored the result before."""
    try:
        study.tell(trial, **told)
    except RuntimeError as err:
        if "Study.stop" not in str(err):
            raise


def consecutive(jobs: list[tuple[int, list[str]]]) -> Iterator[list[tuple[int, list[str]]]]:
    """Jobs in runs of consecutive numbers, as Launcher.launch numbers a batch (a retried job
    keeps its own number)."""
    group: list[tuple[int, list[str]]] = []
    for job in jobs:
        if group and job[0] != group[-1][0] + 1:
            yield group
            group = []
        group.append(job)
    if group:
        yield group


class OptunaStudySweeper(Sweeper):
    def __init__(
        self,
        sampler: Any,
        pruner: Any,
        direction: str,
        storage: str | None,
        study_name: str | None,
        n_trials: int,
        n_jobs: int,
        params: DictConfig | None,
    ) -> None:
        self.sampler = sampler
        self.pruner = pruner
        self.direction = direction
        self.storage = storage
        self.study_name = study_name
        self.n_trials = n_trials
        self.n_jobs = n_jobs
        self.params = params

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config = config
        self.hydra_context = hydra_context
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )

    def check_settings(self) -> None:
        for key in ("n_trials", "n_jobs"):
            if not isinstance(value := getattr(self, key), int) or value < 1:
                raise setting_error(f"hydra.sweeper.{key}={value}", "use a positive integer")
        if self.direction not in DIRECTIONS:
            raise setting_error(f"hydra.sweeper.direction={self.direction}", f"use one of {list(DIRECTIONS)}")

    def sweep(self, arguments: list[str]) -> None:
        self.check_settings()
        # `params`, then the command line's overrides (which are `arguments`)
        space, fixed = search_space(sweep_directory.sweep_arguments(self.config))
        sweep_dir = Path(str(self.config.hydra.sweep.dir)).absolute()
        sweep_dir.mkdir(parents=True, exist_ok=True)
        with this_launch_only(sweep_dir):
            # the sweep's record, as Hydra's basic sweeper writes it: `resume=DIR` launches it again
            OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
            study = open_study(self.storage, sweep_dir, self.study_name, self.direction)
            with open_dict(self.config):  # the trials find their study by name, Optuna's if none was given
                self.config.hydra.sweeper.study_name = study.study_name
            n_trials = self.set_sampler(study, space)
            retry_dead_trials(study, sweep_dir)
            jobs = TrialJobs(study, space, fixed, sweep_dir, n_trials, functools.partial(job_dir, self))
            log.info(
                "Optuna study %s (%s): %d of %d trials to run, %d at a time, %s, %s",
                study.study_name,
                self.storage or sweep_dir / JOURNAL_FILE,
                max(jobs.to_ask, 0),
                n_trials,
                self.n_jobs,
                type(study.sampler).__name__,
                self.direction,
            )
            if hasattr(self.launcher, "launch_as_ready"):
                self.launcher.launch_as_ready(jobs.next_job, jobs.ended, self.n_jobs)
            else:
                while batch := [job for _ in range(self.n_jobs) if (job := jobs.next_job()) is not None]:
                    for group in consecutive(batch):
                        returns = self.launcher.launch([o for _, o in group], initial_job_idx=group[0][0])
                        for (num, _), job in zip(group, returns, strict=True):
                            jobs.ended(num, job)
            write_results(study, sweep_dir)

    def set_sampler(self, study: "optuna.Study", space: dict[str, Any]) -> int:
        """The study's sampler, seeded by the run's seed (or the sampler's own) moved on by the
        trials the study holds, so a relaunch does not propose its first trials again; and the
        number of trials to run, which the grid sampler cuts to its grid's size."""
        import optuna

        seed = self.sampler.keywords.get("seed")
        arguments: dict[str, Any] = {"seed": (self.config.seed if seed is None else seed) + len(study.trials)}
        n_trials = self.n_trials
        if self.sampler.func is optuna.samplers.GridSampler:
            arguments["search_space"] = values = grid(space)
            # the grid's order is drawn from its seed, and its trials name their place in it:
            # every launch must draw the same order
            arguments["seed"] = self.config.seed if seed is None else seed
            n_trials = min(n_trials, math.prod(len(v) for v in values.values()))
        study.sampler = self.sampler(**arguments)
        return n_trials


def write_results(study: "optuna.Study", sweep_dir: Path) -> None:
    """optimization_results.yaml: the best trial's parameters and value, as hydra-optuna-sweeper
    wrote it."""
    import optuna

    results: dict[str, Any] = {"name": "optuna"}
    if any(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials):
        results |= {"best_params": study.best_trial.params, "best_value": study.best_value}
        log.info("best value %s with %s", study.best_value, study.best_trial.params)
    OmegaConf.save(OmegaConf.create(results), sweep_dir / "optimization_results.yaml")
