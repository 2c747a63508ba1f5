"""Train a GPT: `python -m gptlab.train [overrides]` (or `gptlab-train`).

Composes the config, checks everything that can be checked before the first step (model shape,
optimizer, data, trainer arguments, the checkpoint to resume), then fits and returns the best
val_loss so that Hydra sweepers can minimise it. `ckpt_path=<run dir>` continues a run in its
own directory (see gptlab/runs.py).
"""

import logging
import os
import re
import signal
import sys
from dataclasses import asdict, fields, replace
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.types import RunMode
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import LearningRateMonitor
from lightning.pytorch.loggers import CSVLogger, WandbLogger
from lightning.pytorch.utilities import rank_zero_only
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf

from gptlab import cluster, launcher, runs
from gptlab.callbacks import (
    KeepRecordsWithCheckpoints,
    LeaveProcessGroupTogether,
    StopWhenPreempted,
    TextSamples,
    ValidateFinalStep,
)
from gptlab.checkpoint import find_checkpoint, load_checkpoint, model_from_checkpoint
from gptlab.model import GPTConfig, is_count
from gptlab.module import GPTLitModule, OptimConfig
from gptlab.precision import auto_precision, resolve_float32_matmul

log = logging.getLogger(__name__)

# what a bad config or data raises while a run is built: each becomes one line (build_error)
BUILD_ERRORS = (ValueError, TypeError, OSError, InstantiationException, MisconfigurationException)


def wandb_arguments(logger_cfg: DictConfig, resume_id: str | None) -> dict[str, Any]:
    """What the wandb logger's config leaves open (null), decided per run:
    - mode: online when this machine has wandb credentials, offline when not (left to itself,
      wandb would prompt for a key, or fail without a terminal); WANDB_MODE is respected;
    - name and tags: the run's overrides, so runs of a sweep tell themselves apart;
    - group: in a sweep, its directory, so its runs sit together in the dashboard;
    - id: a resumed run continues its wandb run."""
    arguments: dict[str, Any] = {}
    hydra_cfg = HydraConfig.get()
    overrides = runs.without_ckpt_path(list(hydra_cfg.overrides.task))
    if logger_cfg.get("name") is None and overrides:
        arguments["name"] = " ".join(overrides)
    if not logger_cfg.get("tags"):
        arguments["tags"] = [o[:64] for o in overrides]  # wandb's limit for a tag
    if logger_cfg.get("group") is None and hydra_cfg.mode == RunMode.MULTIRUN:
        arguments["group"] = hydra_cfg.sweep.dir
    if resume_id:
        arguments |= {"id": resume_id, "resume": "allow"}
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
    resolve_float32_matmul(cfg.float32_matmul_precision, trainer.accelerator)  # a bad value fails here
    if cfg.ckpt_path and cfg.init_from:
        raise ValueError(
            "ckpt_path and init_from are both set: ckpt_path resumes a run, init_from starts a new one "
            "from a checkpoint's weights; give one"
        )
    return model_config


def fit_precision_to_device(cfg: DictConfig) -> None:
    """trainer.precision=auto becomes what the device computes fastest, said in the log and
    recorded in the run's config; float32 matmuls get the precision float32_matmul_precision says."""
    if cfg.trainer.precision == "auto":
        precision, reason = auto_precision(cfg.trainer.accelerator)
        log.info("trainer.precision=auto: %s, as %s", precision, reason)
        cfg.trainer.precision = precision
    matmul = resolve_float32_matmul(cfg.float32_matmul_precision, cfg.trainer.accelerator)
    cfg.float32_matmul_precision = matmul
    torch.set_float32_matmul_precision(matmul)


def trainer_arguments(cfg: DictConfig) -> dict[str, Any]:
    """What gptlab decides for the Trainer beyond its config:
    - val_check_interval counts optimizer steps, like max_steps and checkpoint.every_n_steps;
      Lightning counts batches, accumulate_grad_batches of them to a step;
    - inside a multirun, DDP spawns its ranks: Lightning's ddp starts ranks 1.. by re-running
      the command line, which inside a sweep would re-run the whole sweep; unless a cluster
      launcher (SLURM tasks, torchrun) already started this process as one of the ranks."""
    arguments: dict[str, Any] = {}
    if cfg.trainer.val_check_interval is not None:
        arguments["val_check_interval"] = cfg.trainer.val_check_interval * cfg.trainer.accumulate_grad_batches
    if (
        HydraConfig.get().mode == RunMode.MULTIRUN
        and cfg.trainer.strategy == "auto"
        and cfg.trainer.devices != 1
        and cluster.launcher_environment() is None
    ):
        arguments["strategy"] = "ddp_spawn"
    return arguments


def build(cfg: DictConfig) -> tuple[L.LightningDataModule, GPTLitModule, L.Trainer, Path | None]:
    """Everything before the first step; bad config or data raise here, not mid-run. Returns
    the checkpoint to resume from, if any."""
    model_config = check_settings(cfg)
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    if not cfg.ckpt_path and cluster.restarted():
        # a requeued SLURM job (or restarted torchrun) is back in its run directory: it goes on
        # from the last.ckpt it wrote when it was stopped, if it got that far
        cfg.ckpt_path = "last"
    resume_from = runs.resume_checkpoint(str(cfg.ckpt_path), run_dir) if cfg.ckpt_path else None
    resumed: dict[str, Any] = {}
    if resume_from is not None:
        resumed = load_checkpoint(resume_from)  # a missing or broken checkpoint fails here, in one line
        runs.check_same_settings(cfg, resumed, list(HydraConfig.get().overrides.task))
        if 0 <= cfg.trainer.max_steps <= resumed["global_step"]:
            raise ValueError(
                f"ckpt_path={cfg.ckpt_path} is at step {resumed['global_step']}, and trainer.max_steps="
                f"{cfg.trainer.max_steps}: give a larger trainer.max_steps to train further"
            )
    # the same run goes on in its own directory: its records continue too
    checkpoint_run_dir = runs.run_dir_of(resume_from) if resume_from is not None else None
    continuing = checkpoint_run_dir is not None and checkpoint_run_dir.resolve() == run_dir.resolve()
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
    fit_precision_to_device(cfg)  # after the checks: a refused resume writes nothing, not even to the log
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

    callbacks = [hydra.utils.instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c]
    for callback in callbacks:
        if isinstance(callback, TextSamples):
            try:
                datamodule.tokenizer.encode(callback.prompt)
            except ValueError as err:
                raise ValueError(f"callbacks.text_samples.prompt: {err}") from None
    # not options: every run ends validated, its checkpoints carry its records, and a preempted
    # run saves where it stopped
    callbacks += [ValidateFinalStep(), KeepRecordsWithCheckpoints(), StopWhenPreempted()]
    arguments = trainer_arguments(cfg)
    if arguments.get("strategy") == "ddp_spawn":
        callbacks.append(LeaveProcessGroupTogether())

    loggers = []
    for logger_cfg in (cfg.get("logger") or {}).values():
        if logger_cfg._target_.endswith("WandbLogger"):
            if rank_zero_only.rank == 0:
                cluster.shield_wandb_service()
            resume_id = resumed.get("wandb_run_id") if continuing else None
            logger = hydra.utils.instantiate(logger_cfg, **wandb_arguments(logger_cfg, resume_id))
            if rank_zero_only.rank == 0:
                # the runs table and parallel coordinates compare runs by their best val_loss
                for metric in ("val_loss", "val_bpc", "val_perplexity"):
                    logger.experiment.define_metric(metric, step_metric="trainer/global_step", summary="min")
        else:
            logger = hydra.utils.instantiate(logger_cfg)
        if continuing and isinstance(logger, CSVLogger) and rank_zero_only.rank == 0:
            runs.continue_csv_log(logger, before_step=resumed["global_step"])
        loggers.append(logger)
    if not loggers:  # logger=none: the lr has nowhere to go (Lightning refuses to start)
        callbacks = [c for c in callbacks if not isinstance(c, LearningRateMonitor)]
    # _convert_: plain dicts and lists, as Lightning expects (trainer.max_time={minutes: 90})
    trainer = hydra.utils.instantiate(
        cfg.trainer, _convert_="partial", logger=loggers or False, callbacks=callbacks, **arguments
    )
    run_config = OmegaConf.to_container(cfg, resolve=True) | {"run_dir": str(run_dir)}
    for logger in trainer.loggers:
        logger.log_hyperparams(run_config)
    return datamodule, module, trainer, resume_from


def build_error(err: Exception) -> str:
    """One line for what went wrong: for an object the config failed to build, the error it
    raised, named by its config key."""
    if isinstance(err, InstantiationException) and err.__cause__ is not None:
        message = " ".join(str(err.__cause__).split())
        key = re.search(r"full_key: (\S+)", str(err))
        return message if key is None or key.group(1) in message else f"{key.group(1)}: {message}"
    return " ".join(str(err).split())


# the exit status of a run stopped by SIGTERM, as of a process killed by it
STOPPED_BY_SIGNAL = 128 + signal.SIGTERM


def finish_wandb(trainer: L.Trainer, preempted: bool = False) -> None:
    """Ends the wandb run: else the next run in this process (a sweep's next job) logs into it.
    A preempted one is marked so, and ends with the process's exit status: it continues when
    the run resumes."""
    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger):
            if preempted:
                logger.experiment.mark_preempting()
            logger.experiment.finish(exit_code=STOPPED_BY_SIGNAL if preempted else None)


def stopped_by_signal(trainer: L.Trainer, stop: StopWhenPreempted, spawned: bool) -> None:
    """A run stopped by SIGTERM (or a requeue signal) exits as a killed process does (143), with
    one line saying how it goes on: it is not finished, whatever Lightning's exit status says. A
    SLURM job stopped by its requeue signal is requeued now, its records closed: submitit's
    requeue ends the process itself. (A process that spawned the ranks does not know the step
    they reached.)"""
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    requeue = stop.requeue_wanted()
    if trainer.is_global_zero:
        where = "" if spawned else f" at step {trainer.global_step}"
        how = (
            "the SLURM job is requeued and resumes by itself"
            if requeue
            else f"resume with `python -m gptlab.train ckpt_path={run_dir}`"
        )
        last = run_dir / "checkpoints" / "last.ckpt"
        print(f"stopped by a signal{where}, saved in {last}: {how}", file=sys.stderr, flush=True)
    if requeue:
        stop.requeue(trainer.is_global_zero)
    sys.exit(STOPPED_BY_SIGNAL)


def record_failure(message: str) -> float:
    """In a sweep, a failed job leaves its reason in its summary.json and the sweep goes on."""
    log.error("this job failed: %s", message)
    return runs.record_failure(Path(HydraConfig.get().runtime.output_dir), message)


@hydra.main(version_base="1.3", config_path="pkg://gptlab.conf", config_name="config")
def train(cfg: DictConfig) -> float:
    runs.start_job()
    in_sweep = HydraConfig.get().mode == RunMode.MULTIRUN
    try:
        datamodule, module, trainer, resume_from = build(cfg)
    except BUILD_ERRORS as err:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        if in_sweep:
            return record_failure(build_error(err))
        sys.exit("error: " + build_error(err))  # exit status 1
    if rank_zero_only.rank == 0:
        runs.record_resume(Path(HydraConfig.get().runtime.output_dir))

    spawned = trainer_arguments(cfg).get("strategy") == "ddp_spawn"
    try:
        stop = fit(trainer, module, datamodule, resume_from, spawned)
    except Exception as err:
        if not in_sweep:
            raise
        log.exception("training crashed")  # the traceback goes to this job's log
        return record_failure(f"{type(err).__name__}: {err}")
    if stop.stopped:
        stopped_by_signal(trainer, stop, spawned=spawned)
    return best_val_loss(trainer)


def fit(
    trainer: L.Trainer,
    module: GPTLitModule,
    datamodule: L.LightningDataModule,
    resume_from: Path | None,
    spawned: bool,
) -> StopWhenPreempted:
    """trainer.fit, which a signal may stop (see StopWhenPreempted, which says whether it did);
    the wandb run is finished either way."""
    stop = next(c for c in trainer.callbacks if isinstance(c, StopWhenPreempted))
    replaced = stop.forward_to_spawned_ranks(trainer) if spawned else {}
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=resume_from)
    except SIGTERMException:  # StopWhenPreempted's, or Lightning's own before training started
        stop.stopped = True
    finally:
        for signum, handler in replaced.items():
            signal.signal(signum, handler)
        finish_wandb(trainer, preempted=stop.stopped)
    return stop


def best_val_loss(trainer: L.Trainer) -> float:
    """What the run returns to Hydra's sweepers, and says in its last line."""
    checkpoint = trainer.checkpoint_callback
    best = checkpoint.best_model_score if checkpoint is not None else None
    if best is None and checkpoint is not None and checkpoint.best_model_path:
        # spawned DDP ranks (a sweep) hand back the best checkpoint's path, not its score
        states = load_checkpoint(checkpoint.best_model_path)["callbacks"].values()
        best = next(s["best_model_score"] for s in states if s.get("best_model_score") is not None)
    if trainer.is_global_zero and best is not None:
        print(f"best val_loss {best:.4f}, checkpoint {checkpoint.best_model_path}")
    return float(best) if best is not None else runs.NO_SCORE


def main() -> None:
    """`python -m gptlab.train` and `gptlab-train`. Before Hydra names the run directory: a
    resumed run's command line is completed with the run's own overrides and directory
    (gptlab.runs), and the ranks of a job a cluster launcher started agree on rank 0's start
    time, so on one run directory, which only rank 0 records itself in (gptlab.cluster)."""
    sys.argv[1:] = runs.resume_arguments(sys.argv[1:])
    launcher.register_with_hydra()
    cluster.agree_on_start_time()
    if cluster.global_rank() != 0:
        sys.argv.append("hydra.output_subdir=null")
    train()


if __name__ == "__main__":
    main()
