"""Train a GPT: `python -m gptlab.train [overrides]` (or `gptlab-train`).

Composes the config, builds the run step by step (gptlab/training/build.py: everything that can
be checked fails there, before the first step), fits, and returns the best val_loss so that
Hydra's sweepers can minimise it. `ckpt_path=<run dir>` continues a run in its own directory
(gptlab/runs/run_directory.py); how a run begins and ends as a process (its command line, its
directory, a failure, a fault, a signal) is gptlab/runs/lifecycle.py.
"""

import logging
import signal
import sys
from dataclasses import dataclass, replace
from pathlib import Path

import hydra
import lightning as L
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from lightning.pytorch.utilities import rank_zero_only
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig

from gptlab import cli
from gptlab.data.datamodule import TextDataModule
from gptlab.runs import cluster, lifecycle, run_directory, sweep_directory
from gptlab.training import build
from gptlab.training.loggers import finish_wandb
from gptlab.training.module import GPTLitModule
from gptlab.training.preemption import StopWhenPreempted

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Run:
    resolved: build.Resolved
    datamodule: TextDataModule
    module: GPTLitModule
    trainer: L.Trainer


def build_run(cfg: DictConfig) -> Run:
    resolved = build.resolve(cfg)  # every change to cfg; read-only from here on
    build.set_up(cfg)
    datamodule = build.datamodule(cfg, resolved)
    measured = build.choose_precision(
        cfg, replace(resolved.model, vocab_size=datamodule.tokenizer.vocab_size)
    )
    resolved = replace(resolved, precision_seconds=measured)
    build.spend_budget(cfg, resolved, datamodule)
    module = build.module(cfg, resolved, datamodule)
    callbacks = build.callbacks(cfg, resolved, datamodule.tokenizer)
    loggers = build.loggers(cfg, resolved)
    trainer = build.trainer(cfg, resolved, callbacks, loggers)
    return Run(resolved, datamodule, module, trainer)


@hydra.main(version_base="1.3", config_path="pkg://gptlab.conf", config_name="config")
def train(cfg: DictConfig) -> float:
    run_directory.start_job()
    try:
        cli.CtrlC.stop_at_once()
        if sweep_directory.relaunchable(HydraConfig.get()) and cluster.global_rank() == 0:
            return sweep_job(cfg)
        with lifecycle.alone_in(Path(HydraConfig.get().runtime.output_dir)):
            return train_job(cfg)
    except cli.Interrupted:  # Ctrl-C before the first step
        if rank_zero_only.rank == 0:
            run_directory.discard_unstarted(Path(HydraConfig.get().runtime.output_dir))
        raise


def sweep_job(cfg: DictConfig) -> float:
    """A job of a sweep (a grid's, or an Optuna search's trial), which may have run in an earlier
    launch of the sweep: what it did then decides what it does now (gptlab/runs/sweep_directory.py)."""
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    with sweep_directory.run_by_this_launch(run_dir):
        if (earlier := sweep_directory.earlier_outcome(run_dir, cfg.retry_failed)) is not None:
            return earlier
        return train_job(cfg)


def train_job(cfg: DictConfig) -> float:
    """Builds the run, fits it and returns its score. In a sweep, a job that fails leaves its
    reason and the sweep goes on; a run stopped by a signal exits (stopped_by_signal)."""
    in_sweep = HydraConfig.get().mode == RunMode.MULTIRUN
    with cli.errors_in_one_line():
        try:
            run = build_run(cfg)
        except Exception as err:
            if not in_sweep or cli.full_error_wanted():
                raise
            return lifecycle.failed_job(err)
    if rank_zero_only.rank == 0:
        run_directory.record_resume(run.resolved.run_dir)
    try:
        stop = fit(run)
    except Exception as err:
        fault = lifecycle.fault_line(err, run.resolved.run_dir)
        if fault is not None and not cli.full_error_wanted():
            return lifecycle.stopped_by_fault(fault, in_sweep)
        if not in_sweep:
            raise  # a bug: its traceback
        return lifecycle.failed_job(err)
    if stop.stopped:
        lifecycle.stopped_by_signal(run.trainer, run.resolved.run_dir, run.resolved.spawned, stop)
    return lifecycle.best_val_loss(run.trainer)


def fit(run: Run) -> StopWhenPreempted:
    """trainer.fit, which a signal may stop (StopWhenPreempted says whether it did); the wandb run
    is finished either way."""
    trainer = run.trainer
    stop = next(c for c in trainer.callbacks if isinstance(c, StopWhenPreempted))
    replaced = stop.forward_to_spawned_ranks(trainer) if run.resolved.spawned else {}
    try:
        trainer.fit(run.module, datamodule=run.datamodule, ckpt_path=run.resolved.resume_from)
    except SIGTERMException:  # StopWhenPreempted's, or Lightning's own before training started
        stop.stopped = True
    finally:
        for signum, handler in replaced.items():
            signal.signal(signum, handler)
        cli.CtrlC.hold()
        finish_wandb(trainer, stop.exit_status() if stop.stopped else None)
    return stop


def main() -> None:
    """`python -m gptlab.train` and `gptlab-train`: the command line completed before Hydra names
    the run directory (gptlab.runs.lifecycle); Ctrl-C is held until a job starts."""
    sys.argv[1:] = lifecycle.command_line(sys.argv[1:])
    cli.CtrlC.hold()
    # a log file the storage refuses (a full disk) would print a traceback for each line logged;
    # the run ends with its own line saying what happened
    logging.raiseExceptions = False
    try:
        # a run into a directory named on the command line holds it before Hydra writes its
        # record there, which would overwrite the record of a run still training in it
        with lifecycle.alone_in(run_directory.named_run_dir(sys.argv[1:])):
            train()
    except cli.Interrupted:
        print("stopped by Ctrl-C before the first step: nothing saved", file=sys.stderr)
        sys.exit(cli.STOPPED_BY_CTRL_C)


if __name__ == "__main__":
    main()
