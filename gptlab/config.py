"""The settings' checks that a type cannot express: ranges, and relations between settings."""

from dataclasses import dataclass, fields
from typing import Any

from omegaconf import DictConfig, OmegaConf

from gptlab.model import GPTConfig, is_count, is_number


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


@dataclass(frozen=True)
class OptimConfig:
    """The `optim` settings, checked: AdamW, linear warmup, cosine decay to min_lr."""

    lr: float
    min_lr: float
    weight_decay: float
    betas: list[float]
    warmup_steps: int
    decay_steps: int
    fused: bool = False  # checkpoints from before this setting have no key

    def __post_init__(self) -> None:
        if not is_number(self.lr) or not self.lr > 0:
            raise ValueError(f"optim.lr={self.lr!r} is not allowed: use a positive learning rate")
        if not is_number(self.min_lr) or not 0 <= self.min_lr <= self.lr:
            raise ValueError(
                f"optim.min_lr={self.min_lr!r} is not allowed: use 0 <= min_lr <= lr ({self.lr})"
            )
        if not is_number(self.weight_decay) or self.weight_decay < 0:
            raise ValueError(f"optim.weight_decay={self.weight_decay!r} is not allowed: use 0 or more")
        betas = self.betas
        if (
            not isinstance(betas, list | tuple)
            or len(betas) != 2
            or not all(is_number(b) and 0 <= b < 1 for b in betas)
        ):
            raise ValueError(f"optim.betas={betas!r} is not allowed: use two numbers in [0, 1)")
        if not is_count(self.warmup_steps) or self.warmup_steps < 0:
            raise ValueError(f"optim.warmup_steps={self.warmup_steps!r} is not allowed: use 0 or more steps")
        if not is_count(self.decay_steps) or self.decay_steps < 1:
            raise ValueError(
                f"optim.decay_steps={self.decay_steps!r} is not allowed: use a positive number of steps "
                "(it follows trainer.max_steps: set it when max_steps is -1)"
            )
        if not isinstance(self.fused, bool):
            raise ValueError(f"optim.fused={self.fused!r} is not allowed: use true or false")


def model_settings(cfg: DictConfig) -> dict[str, Any]:
    """The model group's GPTConfig fields: all but `compile`, which says how to run the model,
    not what it is (and so is not saved in checkpoints)."""
    settings = OmegaConf.to_container(cfg.model, resolve=True)
    settings.pop("compile", None)
    return settings


def check_settings(cfg: DictConfig) -> GPTConfig:
    """The model, optimizer and trainer settings that cost nothing to check: before any file is read."""
    model_fields = {f.name for f in fields(GPTConfig)} | {"compile"}
    if unknown := sorted(set(cfg.model) - model_fields):
        raise ValueError(f"model.{unknown[0]} is not a model setting: use one of {sorted(model_fields)}")
    if not isinstance(cfg.model.get("compile", False), bool):
        raise ValueError(f"model.compile={cfg.model.compile!r} is not allowed: use true or false")
    model_config = GPTConfig(**model_settings(cfg))
    if not is_count(cfg.seed):
        raise ValueError(f"seed={cfg.seed!r} is not allowed: use an integer")
    trainer = cfg.trainer
    if not is_count(trainer.max_steps) or not (trainer.max_steps >= 1 or trainer.max_steps == -1):
        raise ValueError(
            f"trainer.max_steps={trainer.max_steps!r} is not allowed: use a positive number of steps "
            "(or -1, for no limit, with trainer.max_time)"
        )
    optim = OptimConfig(**OmegaConf.to_container(cfg.optim, resolve=True))
    if optim.fused and str(trainer.precision).startswith("16") and trainer.gradient_clip_val:
        raise ValueError(
            f"optim.fused=true with trainer.precision={trainer.precision} cannot clip gradients (the "
            "fused step unscales them itself): use trainer.precision=bf16-mixed, optim.fused=false "
            "or trainer.gradient_clip_val=null"
        )
    interval = trainer.val_check_interval
    if interval is not None and (not is_count(interval) or interval < 1):
        raise ValueError(
            f"trainer.val_check_interval={interval!r} is not allowed: use a positive number of steps (the "
            "training stream is endless: there are no epochs to take a fraction of), or null to validate "
            "only when training ends"
        )
    if cfg.ckpt_path and cfg.init_from:
        raise ValueError(
            "ckpt_path and init_from are both set: ckpt_path resumes a run, init_from starts a new one "
            "from a checkpoint's weights; give one"
        )
    return model_config
