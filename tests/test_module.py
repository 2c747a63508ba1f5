"""The LightningModule's parts: lr schedule, AdamW's groups, validation figures, clipping."""

import math
from dataclasses import asdict
from pathlib import Path

import lightning as L
import pytest
import torch

from gptlab.config import OptimConfig
from gptlab.data.datamodule import TextDataModule
from gptlab.model import GPT, GPTConfig
from gptlab.training.module import GPTLitModule
from gptlab.training.optimizer import adamw, learning_rate

SCHEDULE = {"lr": 1e-3, "min_lr": 1e-4, "warmup_steps": 10, "decay_steps": 110}
OPTIM = {
    "lr": 1e-3,
    "min_lr": 1e-4,
    "weight_decay": 0.1,
    "betas": [0.9, 0.99],
    "warmup_steps": 0,
    "decay_steps": 20,
}


def test_warmup_then_cosine_decay_to_min_lr() -> None:
    lrs = [learning_rate(step, **SCHEDULE) for step in range(130)]
    assert lrs[0] == pytest.approx(1e-4)  # (step + 1) / warmup_steps of lr
    assert lrs[9] == pytest.approx(1e-3)  # the warmup's last step reaches lr
    assert lrs[10] == pytest.approx(1e-3)  # the decay starts from lr
    assert lrs[60] == pytest.approx(1e-4 + 0.5 * 9e-4)  # half way down the cosine: half way between
    assert all(a >= b for a, b in zip(lrs[10:110], lrs[11:111], strict=True))  # never rises while decaying
    assert lrs[110] == lrs[129] == pytest.approx(1e-4)  # then min_lr for good


def test_adamw_decays_matrices_only_and_counts_a_tied_weight_once() -> None:
    model = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=16, block_size=8, tie_weights=True))
    decay, no_decay = adamw(model, OptimConfig(**OPTIM)).param_groups
    names = {id(p): n for n, p in model.named_parameters()}  # a tied weight has one name here
    assert (decay["name"], decay["weight_decay"]) == ("decay", 0.1)
    assert (no_decay["name"], no_decay["weight_decay"]) == ("no_decay", 0.0)
    assert {names[id(p)] for p in decay["params"]} == {n for n, p in model.named_parameters() if p.dim() == 2}
    assert all(
        names[id(p)].endswith(("bias", "ln_1.weight", "ln_2.weight", "ln_f.weight"))
        for p in no_decay["params"]
    )
    assert model.lm_head.weight is model.transformer.wte.weight
    every = [id(p) for group in (decay, no_decay) for p in group["params"]]
    assert len(every) == len(set(every)) == len(list(model.parameters()))  # each parameter once


def test_validation_figures_are_token_weighted_and_consistent(tmp_path: Path, shakespeare: Path) -> None:
    text = tmp_path / "text.txt"
    text.write_text(shakespeare.read_text()[:5000])
    # 499 validation targets: 31 windows of 16 and a short one of 3, so batches differ in size
    dm = TextDataModule(path=str(text), block_size=16, batch_size=4)
    torch.manual_seed(0)
    dm.setup("fit")
    config = GPTConfig(n_layer=1, n_head=2, n_embd=16, block_size=16, vocab_size=dm.tokenizer.vocab_size)
    module = GPTLitModule(model=asdict(config), optim=OPTIM, tokenizer=dm.tokenizer.to_dict())
    trainer = L.Trainer(
        logger=False, enable_checkpointing=False, enable_progress_bar=False, accelerator="cpu"
    )
    (metrics,) = trainer.validate(module, datamodule=dm, verbose=False)

    nats, tokens = 0.0, 0
    with torch.no_grad():
        for x, y in dm.val_dataloader():
            nats += module.model(x, y)[1].item() * y.numel()
            tokens += y.numel()
    assert tokens == 499
    assert metrics["val_loss"] == pytest.approx(nats / tokens, rel=1e-5)  # each token counts once
    assert metrics["val_perplexity"] == pytest.approx(math.exp(metrics["val_loss"]), rel=1e-5)
    assert metrics["val_bpc"] == pytest.approx(metrics["val_loss"] / math.log(2), rel=1e-5)


class RecordGradNorm(L.Callback):
    """The gradient norm the optimizer steps with, after any clipping."""

    def __init__(self) -> None:
        self.norms: list[float] = []

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        def record(optimizer: torch.optim.Optimizer, *_) -> None:
            grads = [
                p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None
            ]
            self.norms.append(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads])).item())

        # after the step: Lightning clips inside the closure that step() runs first
        trainer.optimizers[0].register_step_post_hook(record)


@pytest.mark.parametrize("fused", [False, True])
def test_gradients_are_clipped_with_bf16_and_fused_adamw(
    tmp_path: Path, shakespeare: Path, fused: bool
) -> None:
    dm = TextDataModule(path=str(shakespeare), block_size=16, batch_size=4, val_tokens=64)
    dm.setup("fit")
    config = GPTConfig(n_layer=1, n_head=2, n_embd=16, block_size=16, vocab_size=dm.tokenizer.vocab_size)
    module = GPTLitModule(
        model=asdict(config), optim=OPTIM | {"fused": fused}, tokenizer=dm.tokenizer.to_dict()
    )
    norms = RecordGradNorm()
    trainer = L.Trainer(
        max_steps=3,
        precision="bf16-mixed",
        gradient_clip_val=0.01,  # far below the gradients of an untrained model
        callbacks=[norms],
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        default_root_dir=tmp_path,
    )
    trainer.fit(module, datamodule=dm)
    assert len(norms.norms) == 3
    assert all(norm == pytest.approx(0.01, rel=1e-3) for norm in norms.norms)
