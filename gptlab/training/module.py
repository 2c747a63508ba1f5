"""GPTLitModule: how a GPT is trained (optimizer, schedule, steps, metrics), not what it is."""

from collections.abc import Callable
from typing import Any

import lightning as L
import torch
from torchmetrics import MeanMetric
from torchmetrics.text import Perplexity

from gptlab.config import OptimConfig
from gptlab.data.datamodule import step_seed
from gptlab.faults import Divergence
from gptlab.model import GPTConfig, create_model
from gptlab.training.optimizer import build_optimizer, schedule


class GPTLitModule(L.LightningModule):
    """Everything the constructor takes is plain data and is saved in every checkpoint, so a
    checkpoint alone rebuilds the model (`model`) and its tokenizer (`tokenizer`)."""

    def __init__(
        self,
        model: dict[str, Any],
        optim: dict[str, Any],
        tokenizer: dict[str, Any],
        seed: int = 0,
        compile: bool = False,
    ):
        super().__init__()
        self.optim = OptimConfig(**optim)
        # logger=False: the entry point logs the whole resolved run config instead
        self.save_hyperparameters(logger=False)
        self.model = create_model(GPTConfig(**model))
        self.compiled_forward: Callable | None = None  # set in setup() when compile=True
        self.val_loss = MeanMetric()
        self.val_bpc = MeanMetric()
        self.val_perplexity = Perplexity()
        self.flops_per_batch: float | None = None  # set in setup(), read by Lightning's ThroughputMonitor

    def setup(self, stage: str) -> None:
        datamodule = self.trainer.datamodule
        if datamodule is not None:
            batch_tokens = datamodule.batch_size * self.model.config.block_size
            self.flops_per_batch = self.model.training_flops_per_token() * batch_tokens
        if self.hparams.compile:
            # the model's forward only (a function: no second copy of the weights in the state
            # dict). Compiling the whole LightningModule, as Lightning's docs show, would trace
            # training_step too, whose logging reads the step number: one recompile per step
            self.compiled_forward = torch.compile(self.model.forward)

    def forward(
        self, x: torch.Tensor, y: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        return (self.compiled_forward or self.model)(x, y)

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        # dropout masks, like the batches, are a function of (seed, rank, step): a run resumed
        # from a checkpoint draws exactly what the uninterrupted run drew
        seed = step_seed(self.hparams.seed, self.global_rank, self.trainer.fit_loop.total_batch_idx)
        # only this device's generator: torch.manual_seed would also queue a lazy seeding of
        # every accelerator type, with a formatted stack trace, at every step (1 ms on CPU)
        if self.device.type == "cpu":
            torch.default_generator.manual_seed(seed)
        else:
            torch.get_device_module(self.device).manual_seed(seed)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        _, loss = self(x, y)
        # a loss that is not a finite number stops the run here, before its optimizer step, so
        # no weight (and no checkpoint) takes it in; every DDP rank stops, if any rank's is
        diverged = not bool(torch.isfinite(loss))
        if self.trainer.world_size > 1:
            diverged = self.trainer.strategy.reduce_boolean_decision(diverged, all=False)
        if diverged:  # (global_step counts the steps done: this is the one after them)
            raise Divergence(
                f"the loss is {loss.item()} at step {self.global_step + 1}", self.learning_rates()
            )
        # only on the steps the loggers write (every trainer.log_every_n_steps): each self.log
        # call costs Python time, which tiny models feel at every step
        every = self.trainer.log_every_n_steps
        if every and (self.global_step + 1) % every == 0:
            self.log("train_loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        logits, loss = self(x, y)
        # token-weighted means over the whole validation set, synced across DDP ranks: every
        # token counts once, however the set is cut into batches
        self.val_loss.update(loss, weight=y.numel())
        self.val_bpc.update(loss * self.trainer.datamodule.val_bits_per_nat, weight=y.numel())
        self.val_perplexity.update(logits, y)
        self.log("val_loss", self.val_loss, prog_bar=True)
        self.log("val_bpc", self.val_bpc)
        self.log("val_perplexity", self.val_perplexity)

    def learning_rates(self) -> dict[str, float]:
        """Each parameter group's lr now, by its name."""
        optimizer = self.trainer.optimizers[0]
        return {group.get("name", str(n)): group["lr"] for n, group in enumerate(optimizer.param_groups)}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """No checkpoint of weights that are not finite: it would replace the last good one."""
        if not all(bool(torch.isfinite(p).all()) for p in self.model.parameters()):
            raise Divergence(
                f"the weights are not finite after step {self.global_step}", self.learning_rates()
            )

    def configure_gradient_clipping(
        self,
        optimizer: torch.optim.Optimizer,
        gradient_clip_val: float | None = None,
        gradient_clip_algorithm: str | None = None,
    ) -> None:
        if gradient_clip_val and self.trainer.precision == "bf16-mixed" and self.optim.fused:
            # Lightning refuses to clip for a fused optimizer under mixed precision (its issue
            # #21435), a guard for fp16's gradient scaler, which unscales inside the fused step.
            # bf16 has no scaler: the gradients are already true, and clip like any others.
            if gradient_clip_algorithm == "value":
                torch.nn.utils.clip_grad_value_(self.parameters(), gradient_clip_val)
            else:
                torch.nn.utils.clip_grad_norm_(self.parameters(), gradient_clip_val)
            return
        super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)

    def configure_optimizers(self) -> dict[str, Any]:
        # optim=muon: Muon and AdamW as one optimizer, which Lightning's automatic optimization needs
        optimizer = build_optimizer(self.model, self.optim)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": schedule(optimizer, self.optim), "interval": "step", "name": "lr"},
        }
