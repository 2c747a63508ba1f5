"""Train a GPT: `python -m gptlab.train [overrides]` (or `gptlab-train`).

Composes the config, builds the run step by step (gptlab/training/build.py: everything that can
be checked fails there, before the first step), fits, and returns the best val_loss so that
Hydra's sweepers can minimise it. `ckpt_path=<run dir>` continues a run in its own directory
(gptlab/runs/run_directory.py).
"""

import contextlib
import logging
import signal
import sys
from collections.abc import Iterator
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
from gptlab.faults import Divergence, storage_fault
from gptlab.runs import cluster, launcher, run_directory, sweep_directory
from gptlab.training import build
from gptlab.training.checkpoint import load_checkpoint, what_is_kept
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
        with alone_in(Path(HydraConfig.get().runtime.output_dir)):
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
            return failed_job(err)
    if rank_zero_only.rank == 0:
        run_directory.record_resume(run.resolved.run_dir)
    try:
        stop = fit(run)
    except Exception as err:
        if (fault := fault_line(err, run.resolved.run_dir)) is not None and not cli.full_error_wanted():
            return stopped_by_fault(fault, in_sweep)
        if not in_sweep:
            raise  # a bug: its traceback
        return failed_job(err)
    if stop.stopped:
        stopped_by_signal(run, stop)
    return best_val_loss(run.trainer)


def failed_job(err: Exception) -> float:
    """A sweep's job that failed, and the sweep goes on: bad input is recorded in its one line; a
    bug as crashed, its traceback in the job's log."""
    if isinstance(err, cli.ERRORS):
        return record_failure(cli.one_line(err))
    log.exception("this job crashed")
    return record_failure(f"crashed: {type(err).__name__}: {err} (the traceback is in this job's log)")


def record_failure(message: str) -> float:
    """A failed job leaves its reason in its summary.json (in a sweep, the sweep goes on)."""
    log.error("this job failed: %s", message)
    return run_directory.record_failure(Path(HydraConfig.get().runtime.output_dir), message)


def fault_line(err: Exception, run_dir: Path) -> str | None:
    """One line for a fault of the storage or of the training (gptlab.faults) and what it kept;
    None for anything else, which is a bug."""
    if isinstance(err, Divergence):
        return f"{err}; {what_is_kept(run_dir, 'the last finite checkpoint')}"
    if (storage := storage_fault(err, run_dir)) is not None:
        kept = what_is_kept(run_dir, "what was saved before")
        return f"{storage}; {kept}: make room (or fix the permissions), then resume with ckpt_path={run_dir}"
    return None


def stopped_by_fault(fault: str, in_sweep: bool) -> float:
    """A run stopped by a fault: its summary.json says so (where it can be written); a sweep's job
    is failed and the sweep goes on, a run ends with the one line and exit status 1."""
    if rank_zero_only.rank == 0:
        record_failure(fault)
    if in_sweep:
        return run_directory.NO_SCORE
    sys.exit(f"error: {fault}" if rank_zero_only.rank == 0 else 1)


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


def stopped_by_signal(run: Run, stop: StopWhenPreempted) -> None:
    """A run stopped by Ctrl-C, SIGTERM or a requeue signal exits as a process the signal killed
    does (130, 143), with one line saying how it goes on: it is not finished, whatever Lightning's
    exit status says. A SLURM job stopped by its requeue signal is requeued now, its records
    closed: submitit's requeue ends the process itself. (A process that spawned the ranks does
    not know the step they reached.)"""
    trainer, run_dir = run.trainer, run.resolved.run_dir
    requeue = stop.requeue_wanted()
    if trainer.is_global_zero:
        where = "" if run.resolved.spawned else f" at step {trainer.global_step}"
        if requeue:
            how = "the SLURM job is requeued and resumes by itself"
        elif sweep_directory.relaunchable(HydraConfig.get()):
            how = f"continue the sweep with `python -m gptlab.train -m resume={run_dir.parent}`"
        else:
            how = f"resume with `python -m gptlab.train ckpt_path={run_dir}`"
        last = run_dir / "checkpoints" / "last.ckpt"
        by = "Ctrl-C" if stop.signal == "SIGINT" else "a signal"
        print(f"stopped by {by}{where}, saved in {last}: {how}", file=sys.stderr, flush=True)
    if requeue:
        stop.requeue(trainer.is_global_zero)
    sys.exit(stop.exit_status())


def best_val_loss(trainer: L.Trainer) -> float:
    """What the run returns to Hydra's sweepers, and says in its last line."""
    checkpoint = trainer.checkpoint_callback
    best = checkpoint.best_model_score if checkpoint is not None else None
    if best is None and checkpoint is not None and checkpoint.best_model_path:
        # spawned DDP ranks (a sweep) hand back the best checkpoint's path, not its score
        states = load_checkpoint(checkpoint.best_model_path)["callbacks"].values()
        best = next(s["best_model_score"] for s in states if s.get("best_model_score") is not None)
    if trainer.is_global_zero and best is not None:
        print(f"best val_loss {best:.4f}, checkpoint {checkpoint.best_model_path}")
    return float(best) if best is not None else run_directory.NO_SCORE


def main() -> None:
    """`python -m gptlab.train` and `gptlab-train`. Before Hydra names the run directory: a
    resumed run's command line is completed with the run's own overrides and directory, and a
    sweep's `resume=DIR` becomes the command line it was launched with (gptlab.runs); the ranks
    of a job a cluster launcher started agree on rank 0's start time, so on one run directory,
    which only rank 0 records itself in (gptlab.cluster). Ctrl-C is held until a job starts."""
    sys.argv[1:] = run_directory.resume_arguments(sweep_directory.relaunch_arguments(sys.argv[1:]))
    launcher.register_with_hydra()
    cli.check_group_choices(sys.argv[1:])
    cluster.agree_on_start_time()
    if cluster.global_rank() != 0:
        sys.argv.append("hydra.output_subdir=null")
    cli.CtrlC.hold()
    # a log file the storage refuses (a full disk) would print a traceback for each line logged;
    # the run ends with its own line saying what happened
    logging.raiseExceptions = False
    try:
        # a run into a directory named on the command line holds it before Hydra writes its
        # record there, which would overwrite the record of a run still training in it
        with alone_in(run_directory.named_run_dir(sys.argv[1:])):
            train()
    except cli.Interrupted:
        print("stopped by Ctrl-C before the first step: nothing saved", file=sys.stderr)
        sys.exit(cli.STOPPED_BY_CTRL_C)


@contextlib.contextmanager
def alone_in(run_dir: Path | None) -> Iterator[None]:
    """The run directory of a single run (not a sweep's job), written by this process alone
    (run_directory.one_writer); another process training there is refused in one line. The
    ranks of a DDP run share it: only rank 0 holds it."""
    if run_dir is None or not cluster.is_rank_zero():
        yield
        return
    try:
        with run_directory.one_writer(run_dir, wait=False):
            yield
    except run_directory.RunDirectoryInUse as err:
        sys.exit(f"error: {err}")
    except OSError as err:  # the directory cannot be written at all (read-only, full, ...)
        if (fault := storage_fault(err, run_dir)) is None:
            raise
        sys.exit(f"error: {fault}")


if __name__ == "__main__":
    main()
