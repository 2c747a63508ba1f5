"""Lightning callbacks of our own: only what Lightning does not already provide."""

import json
import logging
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.pytorch.callbacks import ModelCheckpoint, RichProgressBar, ThroughputMonitor
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities.exceptions import SIGTERMException

from gptlab import runs
from gptlab.model import is_count, is_number
from gptlab.tokenizer import tokenizer_from_dict

log = logging.getLogger(__name__)


def validates_after_this_batch(trainer: L.Trainer) -> bool:
    """Whether Lightning's loop runs a validation once this training batch ends: every
    val_check_interval batches, and when the Trainer is stopping (see ValidateFinalStep)."""
    if not trainer.enable_validation:
        return False
    every = trainer.val_check_batch
    scheduled = isinstance(every, int) and (trainer.fit_loop.epoch_loop.total_batch_idx + 1) % every == 0
    return scheduled or trainer.should_stop


class ValidateFinalStep(L.Callback):
    """Every run ends validated: at max_steps the Trainer is told to stop, which makes Lightning
    validate that step (as it does for max_time and early stopping) unless it just has."""

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if 0 <= trainer.max_steps <= trainer.global_step:
            trainer.should_stop = True


class LastCheckpoint(ModelCheckpoint):
    """last.ckpt, written every every_n_train_steps steps, when training ends and when it is
    stopped (see StopWhenPreempted), always after the validation of its step when that step has one: a
    run resumed from it has that validation in its records, and Lightning does not run it again."""

    def __init__(self, dirpath: str, every_n_train_steps: int | None = None):
        if every_n_train_steps is not None and (not is_count(every_n_train_steps) or every_n_train_steps < 1):
            raise ValueError(
                f"checkpoint.every_n_steps={every_n_train_steps!r} is not allowed: use a positive integer "
                "(or null: last.ckpt only when training ends)"
            )
        super().__init__(dirpath=dirpath, save_top_k=0, save_last=True)
        self.every = every_n_train_steps

    def due(self, trainer: L.Trainer) -> bool:
        return bool(self.every) and trainer.global_step % self.every == 0

    def write_last(self, trainer: L.Trainer) -> None:
        if trainer.sanity_checking or self._last_global_step_saved == trainer.global_step:
            return
        self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if trainer.fit_loop._should_accumulate():
            return  # between the micro-batches of one step
        if (self.due(trainer) or trainer.should_stop) and not validates_after_this_batch(trainer):
            self.write_last(trainer)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.due(trainer) or trainer.should_stop:
            self.write_last(trainer)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        pass  # the training stream is endless: an epoch ends only when training does

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.write_last(trainer)


class StopWhenPreempted(L.Callback):
    """SIGTERM (what SLURM and Kubernetes send before they kill a job) and, in a SLURM job, the
    signal SLURM sends ahead of preemption or the time limit (its --signal: SIGUSR1 for
    Lightning's SLURMEnvironment, SIGUSR2 for submitit) stop training at the end of the step, on
    every rank at the same step, whichever rank got the signal: last.ckpt is written there (after
    the step's validation, if it has one) and Lightning's SIGTERMException ends fit, with no
    summary.json: the run is not finished. Once the run's records are closed, a SLURM job stopped
    by a requeue signal is requeued (see requeue), and resumes from last.ckpt by itself
    (gptlab.cluster.restarted).

    This takes the place of Lightning's handlers: its SIGTERM one broadcasts from inside the
    handler, which can hang a DDP run, and its requeue one saves an hpc checkpoint in the middle
    of a step, where gptlab does not look."""

    STOP_SIGNALS = ("SIGTERM", "SIGUSR1", "SIGUSR2")

    def __init__(self) -> None:
        self.signal: str | None = None  # the name of the signal that came, if one did
        self.stopped = False

    @staticmethod
    def signals() -> list[signal.Signals]:
        return [signal.SIGTERM] + ([signal.SIGUSR1, signal.SIGUSR2] if SLURMEnvironment.detect() else [])

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # after Lightning has set its handlers; it puts back the ones before it when fit ends
        for signum in self.signals():
            signal.signal(signum, self.remember)

    def remember(self, signum: int, frame: Any) -> None:
        self.signal = signal.Signals(signum).name
        log.info("%s: training stops at the end of this step, saved", self.signal)

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
        if self.signal is None or not SLURMEnvironment.detect():
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


class KeepRecordsWithCheckpoints(L.Callback):
    """Each checkpoint carries what a resumed run needs to continue the run's records: the
    loggers are flushed first (so metrics.csv on disk has every row up to it) and the wandb
    run id goes in, for the resumed run to continue the same wandb run; and the precision the
    run computed in, for gptlab.eval to score as the run's validation did."""

    def on_save_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        for logger in trainer.loggers:
            logger.save()
            if isinstance(logger, WandbLogger) and trainer.is_global_zero:
                checkpoint["wandb_run_id"] = logger.experiment.id
        checkpoint["precision"] = trainer.precision


class RunSummary(L.Callback):
    """Writes summary.json at the end of fit: the figures a person (or gptlab.compare) wants
    from a run without reading its logs; they go into the wandb run's summary too. Its totals
    travel in checkpoints, so the summary of a resumed run covers the whole run."""

    def __init__(self, path: str):
        self.path = Path(path)
        self.tokens = 0
        self.step_seconds = 0.0  # in training steps only: no validation, samples or checkpoints
        self.train_seconds = 0.0  # wall time of fit, all of it
        self.fit_started = 0.0
        self.step_started = 0.0
        self.startup_seconds = 0.0

    def state_dict(self) -> dict[str, Any]:  # what a checkpoint holds: the totals up to it
        train_seconds = self.train_seconds + time.perf_counter() - self.fit_started
        return {"tokens": self.tokens, "step_seconds": self.step_seconds, "train_seconds": train_seconds}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.tokens = state_dict["tokens"]
        self.step_seconds = state_dict["step_seconds"]
        self.train_seconds = state_dict["train_seconds"]

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.fit_started = time.perf_counter()
        # from the job's start to here, just before the first step: imports (the first job of a
        # process), config, data, model, loggers, the sanity validation
        self.startup_seconds = time.time() - (runs.job_started or runs.process_started())

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self.step_started = time.perf_counter()

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)  # the step's kernels, not only their launch
        self.step_seconds += time.perf_counter() - self.step_started
        self.tokens += batch[0].numel() * trainer.world_size

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        train_seconds = self.state_dict()["train_seconds"]
        checkpoint = trainer.checkpoint_callback
        best = checkpoint.best_model_score if checkpoint is not None else None
        final = trainer.callback_metrics.get("val_loss")
        bits = trainer.datamodule.val_bits_per_nat
        summary = {
            "best_val_loss": None if best is None else float(best),
            "best_val_bpc": None if best is None else float(best) * bits,
            "final_val_loss": None if final is None else float(final),
            "final_val_bpc": None if final is None else float(final) * bits,
            "steps": trainer.global_step,
            "params": pl_module.model.num_parameters(),
            "startup_seconds": round(self.startup_seconds, 3),
            "train_seconds": round(train_seconds, 3),
            "tokens": self.tokens,
            "tokens_per_second": round(self.tokens / self.step_seconds, 1) if self.step_seconds else None,
            "world_size": trainer.world_size,
            "visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
            "started_at": round(runs.job_started or runs.process_started(), 3),
            "finished_at": round(time.time(), 3),
            "best_ckpt": checkpoint.best_model_path if checkpoint is not None else None,
            "last_ckpt": next(
                (c.last_model_path for c in trainer.checkpoint_callbacks if c.last_model_path), None
            ),
        }
        self.path.write_text(json.dumps(summary, indent=2) + "\n")
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):  # the run's figures, beside val_loss's minimum
                logger.experiment.summary.update(
                    {k: v for k, v in summary.items() if isinstance(v, int | float)}
                )


class TrainingThroughput(ThroughputMonitor):
    """Lightning's ThroughputMonitor (tokens/s, FLOP/s and MFU on GPUs it knows, logged as
    train/...), without its per-batch rows for validation: validation is still timed, and left
    out of the training throughput, but not logged with validation batch counts as steps."""

    def on_validation_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        *args: Any,
        **kwargs: Any,
    ) -> None:
        if not trainer.sanity_checking and trainer.is_global_zero:
            self._update(trainer, pl_module, batch, trainer._evaluation_loop.batch_progress.total.ready)


class ThrottledRichProgressBar(RichProgressBar):
    """Lightning's rich progress bar, updated from the training loop at most refresh_rate times
    a second. Lightning's updates it after every step, about 0.2 ms of Python each time: 10% of
    a tiny model's step, and the bar only redraws refresh_rate times a second anyway."""

    def __init__(self, refresh_rate: int = 4, **kwargs: Any):
        if not is_count(refresh_rate) or refresh_rate < 1:
            raise ValueError(
                f"callbacks.rich_progress_bar.refresh_rate={refresh_rate!r} is not allowed: use a positive "
                "integer (redraws a second), or callbacks.rich_progress_bar=null for no bar"
            )
        super().__init__(refresh_rate=refresh_rate, **kwargs)
        self.last_update = 0.0

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        now = time.monotonic()
        if now - self.last_update >= 1 / self.refresh_rate or trainer.global_step == trainer.max_steps:
            self.last_update = now
            super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)


class TextSamples(L.Callback):
    """After each validation, a short sample from the model being trained: printed to the
    console and added to a wandb table (`samples`), so a run can be read as well as plotted."""

    def __init__(
        self, prompt: str = "\n", max_new_tokens: int = 200, temperature: float = 0.8, top_k: int = 200
    ):
        check_sampling("callbacks.text_samples.", prompt, max_new_tokens, temperature, top_k)
        self.prompt = prompt
        self.max_new_tokens = max_new_tokens
        self.temperature = temperature
        self.top_k = top_k

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        tokenizer = tokenizer_from_dict(pl_module.hparams.tokenizer)
        idx = torch.tensor([tokenizer.encode(self.prompt)], device=pl_module.device)
        was_training = pl_module.training
        pl_module.eval()
        # the same seed at every validation, and the training's own random state left untouched
        with torch.random.fork_rng(devices=[pl_module.device] if pl_module.device.type == "cuda" else []):
            torch.manual_seed(0)
            out = pl_module.model.generate(idx, self.max_new_tokens, self.temperature, self.top_k)
        pl_module.train(was_training)
        text = tokenizer.decode(out[0].tolist())
        log.info("sample at step %d:\n%s", trainer.global_step, text)
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                logger.log_text(key="samples", columns=["step", "text"], data=[[trainer.global_step, text]])


class LeaveProcessGroupTogether(L.Callback):
    """For spawned DDP ranks (DDP inside a sweep): at the end of fit all ranks meet, then leave
    the process group together. Left to interpreter exit, each rank tears it down on its own,
    and one whose peer has already gone can abort (seen once: SIGABRT, gloo, 2 CPU ranks)."""

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.barrier()
            torch.distributed.destroy_process_group()


def check_sampling(prefix: str, prompt: Any, max_new_tokens: Any, temperature: Any, top_k: Any) -> None:
    """One line for a sampling setting that cannot sample (gptlab.sample and text samples)."""
    if not isinstance(prompt, str) or not prompt:
        raise ValueError(
            f"{prefix}prompt={prompt!r} is not allowed: give at least one character, e.g. 'ROMEO:'"
        )
    if not is_count(max_new_tokens) or max_new_tokens < 1:
        raise ValueError(f"{prefix}max_new_tokens={max_new_tokens!r} is not allowed: use a positive integer")
    if not is_number(temperature) or not temperature > 0:
        raise ValueError(f"{prefix}temperature={temperature!r} is not allowed: use a positive number")
    if top_k is not None and (not is_count(top_k) or top_k < 1):
        raise ValueError(
            f"{prefix}top_k={top_k!r} is not allowed: use a positive integer, or null for all tokens"
        )
