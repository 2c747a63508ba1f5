"""Preemption: a run stopped by Ctrl-C, SIGTERM or a SLURM requeue signal saves where it stopped,
on every rank at the same step, and a SLURM job asked to requeue is requeued once its records are
closed. (Ctrl-C outside training: gptlab.cli.)"""

import logging
import os
import signal
import subprocess
from typing import Any

import lightning as L
import torch
from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.pytorch.utilities.exceptions import SIGTERMException

from gptlab import cli
from gptlab.training.callbacks import LastCheckpoint, validates_after_this_batch

log = logging.getLogger(__name__)


class StopWhenPreempted(L.Callback):
    """Ctrl-C (SIGINT), SIGTERM (what SLURM and Kubernetes send before they kill a job) and, in a
    SLURM job, the signal SLURM sends ahead of preemption or the time limit (its --signal: SIGUSR1
    for Lightning's SLURMEnvironment, SIGUSR2 for submitit) stop training at the end of the step, on
    every rank at the same step, whichever rank got the signal: last.ckpt is written there (after
    the step's validation, if it has one) and Lightning's SIGTERMException ends fit, with no
    summary.json: the run is not finished. Once the run's records are closed, a SLURM job stopped
    by a requeue signal is requeued (see requeue), and resumes from last.ckpt by itself
    (gptlab.cluster.restarted).

    This takes the place of Lightning's handlers: its SIGTERM one broadcasts from inside the
    handler, which can hang a DDP run, and its requeue one saves an hpc checkpoint in the middle
    of a step, where gptlab does not look."""

    # in the order of precedence, last first: ranks that got different signals stop for the last
    STOP_SIGNALS = ("SIGINT", "SIGTERM", "SIGUSR1", "SIGUSR2")

    def __init__(self) -> None:
        self.signal: str | None = None  # the name of the signal that came, if one did
        self.stopped = False

    @staticmethod
    def signals() -> list[signal.Signals]:
        slurm = [signal.SIGUSR1, signal.SIGUSR2] if SLURMEnvironment.detect() else []
        return [signal.SIGINT, signal.SIGTERM, *slurm]

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # after Lightning has set its handlers; it puts back the ones before it when fit ends
        for signum in self.signals():
            signal.signal(signum, self.remember)

    def remember(self, signum: int, frame: Any) -> None:
        # a second Ctrl-C, while the checkpoint is written, lands here too: it waits for it
        self.signal = signal.Signals(signum).name
        log.info("%s: training stops at the end of this step, saved", self.signal)

    def exit_status(self) -> int:
        """A stopped run's exit status, as of a process the signal killed: 130 for Ctrl-C, 143
        for SIGTERM and SLURM's requeue signals alike (the run is not finished either way)."""
        return cli.STOPPED_BY_CTRL_C if self.signal == "SIGINT" else STOPPED_BY_SIGNAL

    def forward_to_spawned_ranks(self, trainer: L.Trainer) -> dict[int, Any]:
        """In the process that spawned the ranks (DDP inside a sweep), which does not train
        itself: a signal is passed on to them, and once they have saved and stopped, fit ends
        here too. Returns the handlers it replaced."""

        def forward(signum: int, frame: Any) -> None:
            self.remember(signum, frame)
            trainer.strategy.launcher.kill(signum)
            for process in trainer.strategy.launcher.procs:
                process.join()
            self.stopped = True
            raise SIGTERMException

        return {signum: signal.signal(signum, forward) for signum in self.signals()}

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if trainer.fit_loop._should_accumulate():
            return  # between the micro-batches of one step
        came = self.signal
        if trainer.world_size > 1:
            # any rank's signal stops all of them, at this same step, and all of them know
            # which signal it was (a requeue signal before SIGTERM, if ranks got different ones)
            code = torch.tensor(self.STOP_SIGNALS.index(came) if came else -1, device=pl_module.device)
            agreed = int(trainer.strategy.reduce(code, reduce_op="max"))
            came = self.STOP_SIGNALS[agreed] if agreed >= 0 else None
        # a step with a validation is saved after it, the next step's end stops: a resumed run
        # takes the validation of a checkpoint's step as done
        if came is None or validates_after_this_batch(trainer):
            return
        self.signal = came  # (a signal that came during the reduction counts at the next step)
        # this step's logged values reach the loggers only after on_train_batch_end, in Lightning's
        # loop: hand them over now, as it would, or a stop at a logging step loses that step's row
        trainer._logger_connector.on_batch_end()
        trainer._logger_connector.update_train_step_metrics()
        last = next(c for c in trainer.checkpoint_callbacks if isinstance(c, LastCheckpoint))
        last.write_last(trainer)
        self.stopped = True
        raise SIGTERMException  # Lightning's own way out of fit, all ranks at once

    def requeue_wanted(self) -> bool:
        """Whether the signal that stopped the run asks for its SLURM job to be requeued: the
        signals of SLURM's --signal (before a time limit or preemption) do, and so does SIGTERM
        while the job is still running, which is how SLURM starts a preemption's GraceTime (a
        job that ends then has ended, failed, unless it requeues itself). SIGTERM does not once
        the job is cancelled (scancel), past its time limit or being requeued already."""
        if self.signal in (None, "SIGINT") or not SLURMEnvironment.detect():
            return False
        if self.signal in ("SIGUSR1", "SIGUSR2"):
            return True
        state = subprocess.run(
            ["squeue", "--noheader", f"--jobs={slurm_job_id()}", "--format=%T"],
            capture_output=True,
            text=True,
        )
        return state.stdout.strip() == "RUNNING"

    def requeue(self, global_zero: bool) -> None:
        """Requeues the SLURM job, once. Where submitit runs the job and watches this signal (its
        SIGUSR2), submitit's own handler does it, as it would have had gptlab not stopped the
        run first: it counts the job's time-outs against max_num_timeout, fails the job once they
        run out, and ends the process; its first task alone requeues. Elsewhere (SIGTERM, an
        sbatch script, Lightning's SIGUSR1) the first task runs `scontrol requeue`."""
        from submitit.core.job_environment import SignalHandler

        signum = signal.Signals[self.signal]
        handler = signal.getsignal(signum)  # Lightning has put back the handlers of before fit
        if isinstance(getattr(handler, "__self__", None), SignalHandler) and signum == signal.SIGUSR2:
            handler(signum, None)
            return
        if not global_zero:
            return
        job_id = slurm_job_id()
        try:
            subprocess.run(["scontrol", "requeue", job_id], check=True)
            log.info("requeued SLURM job %s: it resumes from last.ckpt when it starts again", job_id)
        except (OSError, subprocess.CalledProcessError) as err:
            log.error("could not requeue SLURM job %s (%s): resume it by hand", job_id, err)


def slurm_job_id() -> str:
    """This SLURM job's id, as scontrol and squeue take it: `123_4` for a task of an array
    (submitit submits a sweep as one), whose SLURM_JOB_ID may be the whole array's."""
    if "SLURM_ARRAY_JOB_ID" in os.environ:
        return f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    return os.environ["SLURM_JOB_ID"]


# the exit status of a run stopped by SIGTERM, as of a process killed by it
STOPPED_BY_SIGNAL = 128 + signal.SIGTERM
