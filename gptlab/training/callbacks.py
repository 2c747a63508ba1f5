"""Lightning callbacks of our own: only what Lightning does not already provide."""

import logging
import time
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint, RichProgressBar, ThroughputMonitor
from lightning.pytorch.loggers import WandbLogger

from gptlab.config import check_sampling, is_count
from gptlab.data.tokenizer import tokenizer_from_dict
from gptlab.faults import SettingError

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
        if every_n_train_steps is not None and every_n_train_steps < 1:
            raise SettingError(
                f"checkpoint.every_n_steps={every_n_train_steps!r}",
                "use a positive integer (or null: last.ckpt only when training ends)",
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


class KeepRecordsWithCheckpoints(L.Callback):
    """Each checkpoint carries what a resumed run needs to continue the run's records: the
    loggers are flushed first (so metrics.csv on disk has every row up to it) and the wandb
    run id goes in, for the resumed run to continue the same wandb run; the precision the
    run computed in, for gptlab.eval to score as the run's validation did; and a digest of the
    text it trained on, for a resume to say when the text has changed."""

    def on_save_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        for logger in trainer.loggers:
            logger.save()
            if isinstance(logger, WandbLogger) and trainer.is_global_zero:
                checkpoint["wandb_run_id"] = logger.experiment.id
        checkpoint["precision"] = trainer.precision
        if trainer.datamodule is not None:
            checkpoint["corpus_sha256"] = trainer.datamodule.corpus.text_sha256


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
            raise SettingError(
                f"callbacks.rich_progress_bar.refresh_rate={refresh_rate!r}",
                "use a positive integer (redraws a second), or callbacks.rich_progress_bar=null for no bar",
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
        try:
            with torch.random.fork_rng(devices=[pl_module.device] if pl_module.device.type == "cuda" else []):
                torch.manual_seed(0)
                out = pl_module.model.generate(idx, self.max_new_tokens, self.temperature, self.top_k)
        except ValueError as err:  # a model that diverged: the run stops at its next step, not here
            log.warning("no sample at step %d: %s", trainer.global_step, err)
            return
        finally:
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
