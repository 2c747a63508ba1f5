"""A training run's life as a process, around what it trains (gptlab.train): its command line
completed before Hydra composes it (a resume, a sweep's relaunch, a cluster's ranks), its
directory written by it alone, and how it ends when it does not end well: a sweep's failed or
crashed job recorded, a fault said in one line with what was kept, a stop by a signal said with
how to go on; and the best val_loss it hands back to Hydra's sweepers."""

import contextlib
import logging
import sys
from collections.abc import Iterator
from pathlib import Path

import lightning as L
from hydra.core.hydra_config import HydraConfig
from lightning.pytorch.utilities import rank_zero_only

from gptlab import cli
from gptlab.checkpoint import load_checkpoint, what_is_kept
from gptlab.faults import Divergence, storage_fault
from gptlab.runs import cluster, launcher, run_directory, sweep_directory
from gptlab.training.preemption import StopWhenPreempted

log = logging.getLogger(__name__)


def command_line(arguments: list[str]) -> list[str]:
    """The command line Hydra gets: a resumed run's completed with the run's own overrides and
    directory, a sweep's `resume=DIR` the command line it was launched with; the parallel launcher
    registered and group options checked; the ranks of a job a cluster launcher started agree on
    rank 0's start time, so on one run directory, which only rank 0 records itself in."""
    arguments = run_directory.resume_arguments(sweep_directory.relaunch_arguments(arguments))
    launcher.register_with_hydra()
    cli.check_group_choices(arguments)
    cluster.agree_on_start_time()
    if cluster.global_rank() != 0:
        arguments.append("hydra.output_subdir=null")
    return arguments


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


def stopped_by_signal(trainer: L.Trainer, run_dir: Path, spawned: bool, stop: StopWhenPreempted) -> None:
    """A run stopped by Ctrl-C, SIGTERM or a requeue signal exits as a process the signal killed
    does (130, 143), with one line saying how it goes on: it is not finished, whatever Lightning's
    exit status says. A SLURM job stopped by its requeue signal is requeued now, its records
    closed: submitit's requeue ends the process itself. (A process that spawned the ranks does
    not know the step they reached.)"""
    requeue = stop.requeue_wanted()
    if trainer.is_global_zero:
        where = "" if spawned else f" at step {trainer.global_step}"
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
