"""What a sweep directory is: the run directories of a multirun's jobs (or an Optuna study's
trials) side by side, with Hydra's multirun.yaml, a wandb/ folder linking every run's wandb
records, and the seed an Optuna study continues with."""

import contextlib
import os
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf


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
