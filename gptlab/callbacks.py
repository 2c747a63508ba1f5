"""Lightning callbacks of our own: only what Lightning does not already provide."""

import json
import logging
import time
from pathlib import Path
from typing import Any

import lightning as L
import psutil
import torch
from lightning.pytorch.callbacks import RichProgressBar
from lightning.pytorch.loggers import WandbLogger

from gptlab.data import CharTokenizer

log = logging.getLogger(__name__)


class RunSummary(L.Callback):
    """Writes summary.json at the end of fit: the figures a person (or gptlab.compare) wants
    from a run without reading its logs."""

    def __init__(self, path: str):
        self.path = Path(path)
        self.tokens = 0
        self.started = 0.0
        self.startup_seconds = 0.0

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.tokens = 0
        self.started = time.perf_counter()
        # from process start to here, just before the first step: imports, config, data,
        # model, loggers, the sanity validation
        self.startup_seconds = time.time() - psutil.Process().create_time()

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self.tokens += batch[0].numel() * trainer.world_size

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        train_seconds = time.perf_counter() - self.started
        checkpoint = trainer.checkpoint_callback
        best = checkpoint.best_model_score if checkpoint is not None else None
        final = trainer.callback_metrics.get("val_loss")
        summary = {
            "best_val_loss": None if best is None else float(best),
            "final_val_loss": None if final is None else float(final),
            "steps": trainer.global_step,
            "params": pl_module.model.num_parameters(),
            "startup_seconds": round(self.startup_seconds, 3),
            "train_seconds": round(train_seconds, 3),
            "tokens_per_second": round(self.tokens / train_seconds, 1) if train_seconds else None,
            "world_size": trainer.world_size,
            "best_ckpt": checkpoint.best_model_path if checkpoint is not None else None,
            "last_ckpt": next(
                (c.last_model_path for c in trainer.checkpoint_callbacks if c.last_model_path), None
            ),
        }
        self.path.write_text(json.dumps(summary, indent=2) + "\n")


class ThrottledRichProgressBar(RichProgressBar):
    """Lightning's rich progress bar, updated from the training loop at most refresh_rate times
    a second. Lightning's updates it after every step, about 0.2 ms of Python each time: 10% of
    a tiny model's step, and the bar only redraws refresh_rate times a second anyway."""

    def __init__(self, refresh_rate: int = 4, **kwargs: Any):
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
        self.prompt = prompt
        self.max_new_tokens = max_new_tokens
        self.temperature = temperature
        self.top_k = top_k

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        tokenizer = CharTokenizer.from_dict(pl_module.hparams.tokenizer)
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
