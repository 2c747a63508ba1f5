"""The run's loggers: what gptlab decides for wandb (mode, name, group, resume), and the CSV log a
resumed run continues."""

import csv
import logging
import os
import warnings
from pathlib import Path
from typing import Any

import hydra
import lightning as L
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from lightning.pytorch.loggers import CSVLogger, WandbLogger
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig

from gptlab.runs import cluster, run_directory

log = logging.getLogger(__name__)


def continue_csv_log(logger: CSVLogger, before_step: int) -> None:
    """Continues the run's metrics.csv instead of starting it afresh (Lightning's CSVLogger
    deletes an existing one): the rows of the steps before the checkpoint are kept; those
    written after it are dropped, since the resumed run logs those steps again. The old file
    is moved aside first and removed only once the new one is written, so a kill at any moment
    loses no row."""
    metrics = Path(logger.log_dir) / "metrics.csv"
    aside = metrics.with_name("metrics.csv.resuming")
    if metrics.is_file() and not aside.is_file():  # else a resume killed before it finished
        metrics.replace(aside)
    rows = []
    if aside.is_file():
        with aside.open(newline="") as f:
            rows = [row for row in csv.DictReader(f) if int(row["step"]) < before_step]
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Experiment logs directory")  # hparams.yaml is there
        writer = logger.experiment
    for row in rows:
        step = int(row.pop("step"))
        writer.log_metrics({k: float(v) for k, v in row.items() if v != ""}, step)
    logger.save()
    if rows and not metrics.is_file():
        raise OSError(f"could not rewrite {metrics}; its rows are kept in {aside}")
    aside.unlink(missing_ok=True)


def wandb_arguments(logger_cfg: DictConfig, resume_id: str | None) -> dict[str, Any]:
    """What the wandb logger's config leaves open (null), decided per run:
    - mode: online when this machine has wandb credentials, offline when not (left to itself,
      wandb would prompt for a key, or fail without a terminal); WANDB_MODE is respected;
    - name and tags: the run's overrides, so runs of a sweep tell themselves apart;
    - group: in a sweep, its directory, so its runs sit together in the dashboard;
    - id: a resumed run continues its wandb run."""
    arguments: dict[str, Any] = {}
    hydra_cfg = HydraConfig.get()
    overrides = run_directory.without_ckpt_path(list(hydra_cfg.overrides.task))
    if logger_cfg.get("name") is None and overrides:
        arguments["name"] = " ".join(overrides)
    if not logger_cfg.get("tags"):
        arguments["tags"] = [o[:64] for o in overrides]  # wandb's limit for a tag
    if logger_cfg.get("group") is None and hydra_cfg.mode == RunMode.MULTIRUN:
        arguments["group"] = hydra_cfg.sweep.dir
    if resume_id:
        arguments |= {"id": resume_id, "resume": "allow"}
    if logger_cfg.get("mode") is None and "WANDB_MODE" not in os.environ:
        import wandb

        if wandb.login(prompt=False, verify=False):
            arguments["mode"] = "online"
        else:
            log.info("wandb: no credentials found, logging offline; upload later with `wandb sync`")
            arguments["mode"] = "offline"
    return arguments


def finish_wandb(trainer: L.Trainer, stopped_with: int | None = None) -> None:
    """Ends the wandb run: else the next run in this process (a sweep's next job) logs into it.
    One stopped by a signal is marked preempted, and ends with the process's exit status: it
    continues when the run resumes."""
    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger):
            if stopped_with is not None:
                logger.experiment.mark_preempting()
            logger.experiment.finish(exit_code=stopped_with)


def instantiate_loggers(
    logger_cfgs: DictConfig, continuing: bool, wandb_run_id: str | None, resumed_step: int
) -> list[Any]:
    """The config's loggers. A run continued in its own directory continues their records: its
    wandb run, and the rows of its metrics.csv before the step it resumes from."""
    loggers = []
    for logger_cfg in logger_cfgs.values():
        if logger_cfg._target_.endswith("WandbLogger"):
            logger = wandb_logger(logger_cfg, wandb_run_id if continuing else None)
        else:
            logger = hydra.utils.instantiate(logger_cfg)
        if continuing and isinstance(logger, CSVLogger) and rank_zero_only.rank == 0:
            continue_csv_log(logger, before_step=resumed_step)
        loggers.append(logger)
    return loggers


def wandb_logger(logger_cfg: DictConfig, resume_id: str | None) -> WandbLogger:
    if rank_zero_only.rank == 0:
        cluster.shield_wandb_service()
    logger = hydra.utils.instantiate(logger_cfg, **wandb_arguments(logger_cfg, resume_id))
    # Lightning passes wandb.init anonymous=None whatever is asked, and wandb (which no longer
    # has anonymous mode, wandb/wandb#10909) warns about the setting in every run: unasked, it goes
    if logger._wandb_init.get("anonymous") is None:
        logger._wandb_init.pop("anonymous", None)
    if rank_zero_only.rank == 0:
        # the runs table and parallel coordinates compare runs by their best val_loss
        for metric in ("val_loss", "val_bpc", "val_perplexity"):
            logger.experiment.define_metric(metric, step_metric="trainer/global_step", summary="min")
    return logger
