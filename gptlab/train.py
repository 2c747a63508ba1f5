"""Train a GPT: `python -m gptlab.train [overrides]`.

Composes conf/config.yaml, checks everything that can be checked before the first step
(model shape, data, optimizer, trainer arguments), then fits and returns the best val_loss
so that Hydra sweepers can minimise it.
"""

import json
import logging
import os
import sys
from dataclasses import asdict, fields, replace
from pathlib import Path
from typing import Any

import hydra
import lightning as L
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.types import RunMode
from lightning.pytorch.loggers import WandbLogger
from omegaconf import DictConfig, OmegaConf

from gptlab.callbacks import LeaveProcessGroupTogether, TextSamples
from gptlab.checkpoint import find_checkpoint, load_checkpoint, model_from_checkpoint
from gptlab.model import GPTConfig
from gptlab.module import GPTLitModule

log = logging.getLogger(__name__)


def wandb_arguments(logger_cfg: DictConfig) -> dict[str, Any]:
    """What the wandb logger's config leaves open (null), decided per run:
    - mode: online when this machine has wandb credentials, offline when not (left to itself,
      wandb would prompt for a key, or fail without a terminal); WANDB_MODE is respected;
    - name and tags: the run's overrides, so runs of a sweep tell themselves apart;
    - group: in a sweep, its directory, so its runs sit together in the dashboard."""
    arguments: dict[str, Any] = {}
    hydra_cfg = HydraConfig.get()
    overrides = list(hydra_cfg.overrides.task)
    if logger_cfg.get("name") is None and overrides:
        arguments["name"] = " ".join(overrides)
    if not logger_cfg.get("tags"):
        arguments["tags"] = [o[:64] for o in overrides]  # wandb's limit for a tag
    if logger_cfg.get("group") is None and hydra_cfg.mode == RunMode.MULTIRUN:
        arguments["group"] = hydra_cfg.sweep.dir
    if logger_cfg.get("mode") is None and "WANDB_MODE" not in os.environ:
        import wandb

        if wandb.login(prompt=False, verify=False):
            arguments["mode"] = "online"
        else:
            log.info("wandb: no credentials found, logging offline; upload later with `wandb sync`")
            arguments["mode"] = "offline"
    return arguments


def model_settings(cfg: DictConfig) -> dict[str, Any]:
    """The model group's GPTConfig fields: all but `compile`, which says how to run the model,
    not what it is (and so is not saved in checkpoints)."""
    settings = OmegaConf.to_container(cfg.model, resolve=True)
    settings.pop("compile", None)
    return settings


def build(cfg: DictConfig) -> tuple[L.LightningDataModule, GPTLitModule, L.Trainer]:
    """Everything before the first step. Bad config or data raise here, not mid-run."""
    model_fields = {f.name for f in fields(GPTConfig)} | {"compile"}
    if unknown := sorted(set(cfg.model) - model_fields):
        raise ValueError(f"model.{unknown[0]} is not a model setting: use one of {sorted(model_fields)}")
    if not isinstance(cfg.model.get("compile", False), bool):
        raise ValueError(f"model.compile={cfg.model.compile!r} is not allowed: use true or false")
    model_config = GPTConfig(**model_settings(cfg))  # validates the model fields first: it costs nothing
    if (
        cfg.optim.get("fused")
        and str(cfg.trainer.precision).startswith("16")
        and cfg.trainer.gradient_clip_val
    ):
        raise ValueError(
            f"optim.fused=true with trainer.precision={cfg.trainer.precision} cannot clip gradients (the "
            "fused step unscales them itself): use trainer.precision=bf16-mixed, optim.fused=false "
            "or trainer.gradient_clip_val=null"
        )
    if cfg.ckpt_path:
        load_checkpoint(cfg.ckpt_path)  # a missing or broken checkpoint fails here, in one line
    if HydraConfig.get().runtime.choices.get("experiment") == "finetune" and not cfg.init_from:
        raise ValueError("experiment=finetune needs init_from=<checkpoint file or run directory>")
    pretrained = None
    if cfg.init_from:
        pretrained, tokenizer = model_from_checkpoint(load_checkpoint(find_checkpoint(cfg.init_from)))
        # fine-tuning keeps the checkpoint's architecture (and so block_size); dropout may change
        model_config = replace(pretrained.config, dropout=model_config.dropout)
        from_checkpoint = {k: v for k, v in asdict(model_config).items() if k in cfg.model}
        if overruled := {k: v for k, v in from_checkpoint.items() if cfg.model[k] != v}:
            log.warning(
                "init_from: the model is the checkpoint's, so these settings are its own: %s", overruled
            )
        cfg.model.merge_with(from_checkpoint)
    L.seed_everything(cfg.seed, workers=True, verbose=False)

    datamodule = hydra.utils.instantiate(cfg.data)
    if pretrained is not None:
        datamodule.tokenizer = tokenizer  # the text must fit the checkpoint's vocabulary
    datamodule.prepare_data()  # before any DDP process starts, so only one downloads
    datamodule.setup("fit")
    model_config = replace(model_config, vocab_size=datamodule.tokenizer.vocab_size)
    module = GPTLitModule(
        model=asdict(model_config),
        optim=OmegaConf.to_container(cfg.optim, resolve=True),
        tokenizer=datamodule.tokenizer.to_dict(),
        seed=cfg.seed,
        compile=cfg.model.compile,
    )
    if pretrained is not None:
        module.model.load_state_dict(pretrained.state_dict())

    loggers = []
    for logger_cfg in (cfg.get("logger") or {}).values():
        is_wandb = logger_cfg._target_.endswith("WandbLogger")
        loggers.append(
            hydra.utils.instantiate(logger_cfg, **(wandb_arguments(logger_cfg) if is_wandb else {}))
        )
    callbacks = [hydra.utils.instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c]
    for callback in callbacks:
        if isinstance(callback, TextSamples):
            try:
                datamodule.tokenizer.encode(callback.prompt)
            except ValueError as err:
                raise ValueError(f"callbacks.text_samples.prompt: {err}") from None
    strategy = {}
    if (
        HydraConfig.get().mode == RunMode.MULTIRUN
        and cfg.trainer.strategy == "auto"
        and cfg.trainer.devices != 1
    ):
        # Lightning's ddp starts ranks 1.. by re-running the command line, which inside a sweep
        # would re-run the whole sweep; spawned ranks stay inside this job and its run directory
        strategy = {"strategy": "ddp_spawn"}
        callbacks.append(LeaveProcessGroupTogether())
    trainer = hydra.utils.instantiate(cfg.trainer, logger=loggers or False, callbacks=callbacks, **strategy)
    run_config = OmegaConf.to_container(cfg, resolve=True) | {"run_dir": HydraConfig.get().runtime.output_dir}
    for logger in trainer.loggers:
        logger.log_hyperparams(run_config)
    return datamodule, module, trainer


def finish_wandb(trainer: L.Trainer) -> None:
    """Ends the wandb run: else the next run in this process (a sweep's next job) logs into it."""
    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger):
            logger.experiment.finish()


def record_failure(message: str) -> float:
    """In a sweep, a failed job leaves its reason in its summary.json and the sweep goes on."""
    log.error("this job failed: %s", message)
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    (run_dir / "summary.json").write_text(json.dumps({"error": message}, indent=2) + "\n")
    return float("nan")


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> float:
    in_sweep = HydraConfig.get().mode == RunMode.MULTIRUN
    try:
        datamodule, module, trainer = build(cfg)
    except (ValueError, OSError, InstantiationException) as err:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        message = " ".join(str(err).split())  # one line
        if in_sweep:
            return record_failure(message)
        sys.exit("error: " + message)  # exit status 1

    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.ckpt_path)
    except Exception as err:
        if not in_sweep:
            raise
        log.exception("training crashed")  # the traceback goes to this job's log
        return record_failure(f"{type(err).__name__}: {err}")
    finally:
        finish_wandb(trainer)

    checkpoint = trainer.checkpoint_callback
    best = checkpoint.best_model_score if checkpoint is not None else None
    if best is None and checkpoint is not None and checkpoint.best_model_path:
        # spawned DDP ranks (a sweep) hand back the best checkpoint's path, not its score
        states = load_checkpoint(checkpoint.best_model_path)["callbacks"].values()
        best = next(s["best_model_score"] for s in states if s.get("best_model_score") is not None)
    if trainer.is_global_zero and best is not None:
        print(f"best val_loss {best:.4f}, checkpoint {checkpoint.best_model_path}")
    return float(best) if best is not None else float("nan")


if __name__ == "__main__":
    main()
