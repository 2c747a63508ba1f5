"""A trial of an Optuna search (hydra/sweeper=optuna) reports each validation's val_loss to its
study, and stops where the study's pruner says it does worse than the trials before it did.

Rank 0 reports and asks the pruner; every rank learns the answer (a broadcast, as they learn of a
preemption), and the run stops as any run does at its end: validated (it just was), saved
(last.ckpt, the best checkpoint), and summed up, its summary.json saying `pruned: true`. The
sweeper then tells the study PRUNED. (optuna-integration's PyTorchLightningPruningCallback
raises TrialPruned instead, which ends the run as an error, unsaved.)
"""

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import lightning as L
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import OmegaConf

if TYPE_CHECKING:
    import optuna

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrialAddress:
    """Where a job finds its trial: the study (its storage setting, resolved as the sweeper
    resolves it, and name), the pruner's config, and the job's number in its sweep directory.
    Plain values: DDP's spawned ranks get it pickled."""

    storage: str | None
    study_name: str | None
    pruner: dict[str, Any]
    sweep_dir: str
    job: int


def trial_address() -> TrialAddress | None:
    """This job's trial, if it is one of an Optuna search's."""
    hydra_config = HydraConfig.get()
    sweeper = hydra_config.sweeper
    if hydra_config.mode != RunMode.MULTIRUN or not str(sweeper._target_).endswith("OptunaSweeper"):
        return None
    return TrialAddress(
        storage=sweeper.storage,
        study_name=sweeper.study_name,
        pruner=OmegaConf.to_container(sweeper.pruner, resolve=True),
        sweep_dir=str(Path(str(hydra_config.sweep.dir)).absolute()),
        job=int(hydra_config.job.num),
    )


def find_trial(address: TrialAddress) -> "optuna.Trial | None":
    """The RUNNING trial the sweeper asked for as this job."""
    import hydra
    import optuna

    from gptlab.runs.optuna_sweeper import study_storage

    storage = study_storage(address.storage, Path(address.sweep_dir))
    study = optuna.load_study(
        study_name=address.study_name, storage=storage, pruner=hydra.utils.instantiate(address.pruner)
    )
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        if (
            trial.user_attrs.get("sweep_dir") == address.sweep_dir
            and trial.user_attrs.get("job") == address.job
        ):
            # Optuna's handle on a trial asked for by another process (the sweeper's)
            return optuna.trial.Trial(study, trial._trial_id)
    return None


class ReportToTrial(L.Callback):
    def __init__(self, address: TrialAddress) -> None:
        self.address = address
        self.trial: optuna.Trial | None = None
        self.pruned = False

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero:
            self.trial = find_trial(self.address)
            if self.trial is None:
                log.warning(
                    "job %d: no running trial of its study: validations are not reported", self.address.job
                )

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        prune = False
        if self.trial is not None and (val_loss := trainer.callback_metrics.get("val_loss")) is not None:
            prune = self.report(float(val_loss), trainer.global_step)
        if trainer.strategy.broadcast(prune, src=0):
            log.info("pruned at step %d: this trial does worse than the study allows", trainer.global_step)
            self.pruned = True
            trainer.should_stop = True

    def report(self, val_loss: float, step: int) -> bool:
        """Reports to the trial, and whether the pruner stops it. A relaunch of the sweep may
        have failed this job's trial (its driver was dead, this job went on) and asked for it
        again, as this job: the report goes to that trial then; with none, reports stop."""
        import optuna

        assert self.trial is not None
        try:
            self.trial.report(val_loss, step=step)
        except optuna.exceptions.UpdateFinishedTrialError:
            self.trial = find_trial(self.address)
            if self.trial is None:
                log.warning(
                    "job %d: its trial has ended in its study: nothing more is reported", self.address.job
                )
                return False
            self.trial.report(val_loss, step=step)
        return self.trial.should_prune()
