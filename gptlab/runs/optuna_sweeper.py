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
"""

import functools
import logging
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import IntervalSweep, Override, RangeSweep, Transformer
from hydra.core.plugins import Plugins
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf

from gptlab.runs.launcher import setting_error

if TYPE_CHECKING:  # imported when a study runs: Hydra imports this module in every entry point
    import optuna

log = logging.getLogger(__name__)

DIRECTIONS = ("minimize", "maximize")


def distribution(override: Override) -> "optuna.distributions.BaseDistribution | None":
    """The Optuna distribution an override's sweep stands for; None for a plain value."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    if not override.is_sweep_override():
        return None
    value = override.value()
    if override.is_choice_sweep() or (override.is_range_sweep() and value.shuffle):
        return CategoricalDistribution(list(override.sweep_iterator(transformer=Transformer.encode)))
    if override.is_range_sweep():
        assert isinstance(value, RangeSweep)
        # both ends included, as hydra-optuna-sweeper took them (Python's range leaves the stop out)
        if any(isinstance(x, float) for x in (value.start, value.stop, value.step)):
            return FloatDistribution(value.start, value.stop, step=value.step)
        return IntDistribution(int(value.start), int(value.stop), step=int(value.step))
    if override.is_interval_sweep():
        assert isinstance(value, IntervalSweep)
        log_scale = "log" in value.tags
        if isinstance(value.start, int) and isinstance(value.end, int):
            return IntDistribution(value.start, value.end, log=log_scale)
        return FloatDistribution(value.start, value.end, log=log_scale)
    raise ValueError(f"{override.input_line}: a search space is interval(), range() or choice()")


def search_space(overrides: list[str]) -> tuple[dict[str, Any], dict[str, str]]:
    """The keys to search, each with its distribution, and the keys fixed for every trial, each
    with its value as the command line writes it. A later override of a key replaces an earlier."""
    space: dict[str, Any] = {}
    fixed: dict[str, str] = {}
    for override in OverridesParser.create().parse_overrides(overrides):
        key = override.get_key_element()
        space.pop(key, None)
        fixed.pop(key, None)
        if (searched := distribution(override)) is not None:
            space[key] = searched
        else:
            fixed[key] = override.get_value_element_as_str()
    return space, fixed


def grid(space: dict[str, Any]) -> dict[str, list[Any]]:
    """Every value of each key, for Optuna's GridSampler: only discrete spaces have them."""
    from optuna.distributions import CategoricalDistribution

    values = {}
    for key, searched in space.items():
        if isinstance(searched, CategoricalDistribution):
            values[key] = list(searched.choices)
        elif getattr(searched, "step", None) is not None:
            count = round((searched.high - searched.low) / searched.step) + 1
            values[key] = [searched.low + i * searched.step for i in range(count)]
        else:
            raise setting_error(f"{key}: the grid sampler needs choice() or range(), not an interval")
    return values


def open_study(storage: str | None, study_name: str | None, sampler: Any, direction: str) -> "optuna.Study":
    """The study, created or (in a storage that has it) loaded. A storage that cannot be opened,
    or that an older Optuna wrote, stops the sweep in one line before any trial runs."""
    import optuna

    try:
        return optuna.create_study(
            storage=storage, study_name=study_name, sampler=sampler, direction=direction, load_if_exists=True
        )
    except RuntimeError as err:
        if "optuna storage upgrade" not in str(err):
            raise
        raise setting_error(
            f"hydra.sweeper.storage={storage} holds a study of an older Optuna: upgrade it once with "
            f"`optuna storage upgrade --storage {storage}` (back it up first), or give another storage"
        ) from None
    except (ImportError, ValueError, OSError) as err:
        raise setting_error(
            f"hydra.sweeper.storage={storage} cannot be opened ({' '.join(str(err).split())}): "
            "give a database URL such as sqlite:///study.db, or null for a study in memory"
        ) from None
    except Exception as err:  # SQLAlchemy's errors for a URL it cannot use
        if type(err).__module__.startswith("sqlalchemy"):
            raise setting_error(
                f"hydra.sweeper.storage={storage} cannot be opened ({type(err).__name__}): "
                "give a database URL such as sqlite:///study.db, or null for a study in memory"
            ) from None
        raise


class OptunaStudySweeper(Sweeper):
    def __init__(
        self,
        sampler: Any,
        direction: str,
        storage: str | None,
        study_name: str | None,
        n_trials: int,
        n_jobs: int,
        params: DictConfig | None,
    ) -> None:
        self.sampler = sampler
        self.direction = direction
        self.storage = storage
        self.study_name = study_name
        self.n_trials = n_trials
        self.n_jobs = n_jobs
        self.params = params

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config = config
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )

    def check_settings(self) -> None:
        for key in ("n_trials", "n_jobs"):
            if not isinstance(value := getattr(self, key), int) or value < 1:
                raise setting_error(f"hydra.sweeper.{key}={value} is not allowed: use a positive integer")
        if self.direction not in DIRECTIONS:
            raise setting_error(
                f"hydra.sweeper.direction={self.direction} is not allowed: use one of {list(DIRECTIONS)}"
            )

    def sweep(self, arguments: list[str]) -> None:
        import optuna

        self.check_settings()
        space, fixed = search_space([f"{k}={v}" for k, v in (self.params or {}).items()] + arguments)
        n_trials, sampler = self.n_trials, self.sampler
        if isinstance(sampler, functools.partial) and sampler.func is optuna.samplers.GridSampler:
            values = grid(space)
            sampler = sampler(values)
            n_trials = min(n_trials, math.prod(len(v) for v in values.values()))
        study = open_study(self.storage, self.study_name, sampler, self.direction)
        log.info(
            "Optuna study %s (%s): %d trials, %d at a time, %s, %s",
            study.study_name,
            self.storage or "in memory",
            n_trials,
            self.n_jobs,
            type(sampler).__name__,
            self.direction,
        )
        job_num = 0
        while job_num < n_trials:
            trials = [study.ask(space) for _ in range(min(self.n_jobs, n_trials - job_num))]
            overrides = [
                [f"{key}={value}" for key, value in trial.params.items()]
                + [f"{key}={value}" for key, value in fixed.items()]
                for trial in trials
            ]
            returns = self.launcher.launch(overrides, initial_job_idx=job_num)
            job_num += len(returns)
            for trial, job in zip(trials, returns, strict=True):
                tell(study, trial, job)
        write_results(study, Path(self.config.hydra.sweep.dir))


def tell(study: "optuna.Study", trial: "optuna.Trial", job: Any) -> None:
    """The job's result to the study: its value, or FAIL for a job that raised (gptlab.train
    returns infinity for a run that failed, which the study ranks last)."""
    import optuna

    try:
        told: dict[str, Any] = {"values": float(job.return_value)}
    except Exception as err:  # the job's own exception, re-raised by its JobReturn
        log.warning("trial %d failed: %s", trial.number, err)
        told = {"state": optuna.trial.TrialState.FAIL}
    try:
        study.tell(trial, **told)
    except RuntimeError as err:
        # the grid sampler stops the study once its last combination is told, which ask-and-tell
        # does not allow; Optuna has stored the result before
        if "Study.stop" not in str(err):
            raise


def write_results(study: "optuna.Study", sweep_dir: Path) -> None:
    """optimization_results.yaml: the best trial's parameters and value, as hydra-optuna-sweeper
    wrote it."""
    import optuna

    results: dict[str, Any] = {"name": "optuna"}
    if any(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials):
        results |= {"best_params": study.best_trial.params, "best_value": study.best_value}
        log.info("best value %s with %s", study.best_value, study.best_trial.params)
    sweep_dir.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(OmegaConf.create(results), sweep_dir / "optimization_results.yaml")
