"""GPTLitModule: how a GPT is trained (optimizer, schedule, steps, metrics), not what it is."""

import math
from typing import Any

import lightning as L
import torch
from torchmetrics import MeanMetric
from torchmetrics.text import Perplexity

from gptlab.data import step_seed
from gptlab.model import GPTConfig, create_model


def warmup_cosine(step: int, *, lr: float, min_lr: float, warmup_steps: int, decay_steps: int) -> float:
    """Learning rate at `step`: linear warmup to lr, cosine decay to min_lr, then min_lr."""
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    if step >= decay_steps:
        return min_lr
    progress = (step - warmup_steps) / max(1, decay_steps - warmup_steps)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (lr - min_lr)


class GPTLitModule(L.LightningModule):
    """Everything the constructor takes is plain data and is saved in every checkpoint, so a
    checkpoint alone rebuilds the model (`model`) and its tokenizer (`tokenizer`)."""

    def __init__(
        self, model: dict[str, Any], optim: dict[str, Any], tokenizer: dict[str, str], seed: int = 0
    ):
        super().__init__()
        if not optim["lr"] > 0:
            raise ValueError(f"optim.lr={optim['lr']} is not allowed: use a positive learning rate")
        if not 0 <= optim["min_lr"] <= optim["lr"]:
            raise ValueError(
                f"optim.min_lr={optim['min_lr']} is not allowed: use 0 <= min_lr <= lr ({optim['lr']})"
            )
        if optim["warmup_steps"] < 0:
            raise ValueError(f"optim.warmup_steps={optim['warmup_steps']} is not allowed: use 0 or more")
        # logger=False: the entry point logs the whole resolved run config instead
        self.save_hyperparameters(logger=False)
        self.model = create_model(GPTConfig(**model))
        self.val_loss = MeanMetric()
        self.val_perplexity = Perplexity()

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        # dropout masks, like the batches, are a function of (seed, rank, step): a run resumed
        # from a checkpoint draws exactly what the uninterrupted run drew
        step = self.trainer.fit_loop.total_batch_idx
        torch.manual_seed(step_seed(self.hparams.seed, self.global_rank, step))

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        _, loss = self.model(x, y)
        self.log("train_loss", loss, prog_bar=True)
        self.log("lr", self.lr_schedulers().get_last_lr()[0])
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        logits, loss = self.model(x, y)
        self.val_loss.update(loss, weight=y.numel())  # token-weighted, synced across DDP ranks
        self.val_perplexity.update(logits, y)
        self.log("val_loss", self.val_loss, prog_bar=True)
        self.log("val_perplexity", self.val_perplexity)

    def configure_optimizers(self) -> dict[str, Any]:
        optim = self.hparams.optim
        # nanoGPT's groups: weight decay on matrices (linear and embedding weights), none on
        # biases and LayerNorm gains
        params = [p for p in self.model.parameters() if p.requires_grad]
        groups = [
            {"params": [p for p in params if p.dim() >= 2], "weight_decay": optim["weight_decay"]},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
        ]
        optimizer = torch.optim.AdamW(groups, lr=optim["lr"], betas=tuple(optim["betas"]))
        schedule_args = {key: optim[key] for key in ("lr", "min_lr", "warmup_steps", "decay_steps")}
        schedule = torch.optim.lr_scheduler.LambdaLR(  # LambdaLR wants a factor of the base lr
            optimizer, lambda step: warmup_cosine(step, **schedule_args) / optim["lr"]
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}
