"""Lightning callbacks of our own: only what Lightning does not already provide."""

import json
import time
from pathlib import Path
from typing import Any

import lightning as L


class RunSummary(L.Callback):
    """Writes summary.json at the end of fit: the figures a person (or gptlab.compare) wants
    from a run without reading its logs."""

    def __init__(self, path: str):
        self.path = Path(path)
        self.tokens = 0
        self.started = 0.0

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.tokens = 0
        self.started = time.perf_counter()

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
            "params": sum(p.numel() for p in pl_module.parameters()),
            "train_seconds": round(train_seconds, 3),
            "tokens_per_second": round(self.tokens / train_seconds, 1) if train_seconds else None,
            "world_size": trainer.world_size,
            "best_ckpt": checkpoint.best_model_path if checkpoint is not None else None,
            "last_ckpt": next(
                (c.last_model_path for c in trainer.checkpoint_callbacks if c.last_model_path), None
            ),
        }
        self.path.write_text(json.dumps(summary, indent=2) + "\n")
