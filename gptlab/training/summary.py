"""summary.json: the figures of a finished run, for a person or gptlab.compare."""

import json
import os
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.loggers import WandbLogger

from gptlab.runs import run_directory
from gptlab.training.pruning import ReportToTrial


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
        # of the start-up: what trainer.precision=auto spent timing precisions (once a model
        # shape; set by gptlab.training.build)
        self.precision_seconds = 0.0

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
        self.startup_seconds = time.time() - (run_directory.job_started or run_directory.process_started())

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
            "non_embedding_params": pl_module.model.non_embedding_parameters(),
            "startup_seconds": round(self.startup_seconds, 3),
            "precision_seconds": round(self.precision_seconds, 3),
            "train_seconds": round(train_seconds, 3),
            "tokens": self.tokens,
            "train_flops": pl_module.model.training_flops_per_token() * self.tokens,
            "tokens_per_second": round(self.tokens / self.step_seconds, 1) if self.step_seconds else None,
            "world_size": trainer.world_size,
            "visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
            "started_at": round(run_directory.job_started or run_directory.process_started(), 3),
            "finished_at": round(time.time(), 3),
            "best_ckpt": checkpoint.best_model_path if checkpoint is not None else None,
            "last_ckpt": next(
                (c.last_model_path for c in trainer.checkpoint_callbacks if c.last_model_path), None
            ),
        }
        if (trial := next((c for c in trainer.callbacks if isinstance(c, ReportToTrial)), None)) is not None:
            summary["pruned"] = trial.pruned  # stopped by its Optuna study's pruner
        self.path.write_text(json.dumps(summary, indent=2) + "\n")
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):  # the run's figures, beside val_loss's minimum
                logger.experiment.summary.update(
                    {k: v for k, v in summary.items() if isinstance(v, int | float)}
                )
