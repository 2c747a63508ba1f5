"""From a composed train config to the objects of a run, one step per concern. gptlab.train calls
them in this order (gptlab.bench too, with a timer among the callbacks):

    resolve     every change the config gets but the two below: a restarted job resumes, a resume
                keeps its lr schedule, a fine-tune its checkpoint's architecture; after it the
                config is read-only
    set_up      this process: float32 matmul precision and the seed of everything
    datamodule  the corpus prepared, mapped and checked against block_size
    choose_precision  trainer.precision=auto becomes what this device computes fastest (on a CPU,
                measured with the model, which needs the tokenizer's vocabulary)
    spend_budget  flops_budget becomes trainer.max_steps (it needs the vocabulary too)
    module      the LightningModule, with the fine-tuned checkpoint's weights if any
    callbacks   the config's, checked, and those every run has
    loggers     the config's (wandb as gptlab.training.loggers decides it), the run config logged
    trainer     the Trainer, with gptlab's arguments
"""

import hashlib
import json
import logging
import time
from dataclasses import MISSING, asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from lightning.pytorch.callbacks import LearningRateMonitor
from omegaconf import DictConfig, OmegaConf, read_write

from gptlab.checkpoint import find_checkpoint, load_checkpoint, model_from_checkpoint
from gptlab.config import OptimConfig, check_settings
from gptlab.data.datamodule import TextDataModule
from gptlab.data.tokenizer import Tokenizer, UnknownCharacters, tokenizer_from_dict
from gptlab.faults import SettingError
from gptlab.model import GPTConfig, LanguageModel, create_model
from gptlab.runs import cluster, run_directory, sweep_directory
from gptlab.training.callbacks import (
    KeepRecordsWithCheckpoints,
    LeaveProcessGroupTogether,
    TextSamples,
    ValidateFinalStep,
)
from gptlab.training.loggers import instantiate_loggers
from gptlab.training.module import GPTLitModule
from gptlab.training.optimizer import build_optimizer
from gptlab.training.precision import (
    auto_precision,
    autocast,
    cpu_name,
    pick_device,
    resolve_float32_matmul,
    step_times,
)
from gptlab.training.preemption import StopWhenPreempted
from gptlab.training.pruning import ReportToTrial, trial_address
from gptlab.training.summary import RunSummary

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Resolved:
    """What resolve decided, besides the config itself."""

    run_dir: Path
    model: GPTConfig  # vocab_size is the tokenizer's, known once the data is
    resume_from: Path | None = None  # the checkpoint this run resumes from
    resumed_step: int = 0
    continuing: bool = False  # the same run goes on in its own directory: its records continue
    wandb_run_id: str | None = None  # of the run continued here
    pretrained: tuple[LanguageModel, Tokenizer] | None = None  # init_from's model and tokenizer
    resumed_tokenizer: Tokenizer | None = None  # the checkpoint's, which a resume trains with
    resumed_corpus: str | None = None  # the digest of the text the resumed checkpoint trained on
    spawned: bool = False  # DDP ranks spawned from this process (a sweep's job)
    precision_seconds: float = 0.0  # what choose_precision spent timing precisions


def resolve(cfg: DictConfig) -> Resolved:
    """Every change the config gets, after the checks that cost nothing; then it is read-only."""
    given = {run_directory.override_key(o) for o in HydraConfig.get().overrides.task}
    model_config = check_settings(cfg, given, HydraConfig.get().runtime.choices.get("experiment"))
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    relaunched = sweep_directory.relaunchable(HydraConfig.get()) and sweep_directory.stopped_job(run_dir)
    if not cfg.ckpt_path and (cluster.restarted() or relaunched):
        # a requeued SLURM job (or restarted torchrun), or a sweep's job launched again, is back
        # in its run directory: it goes on from the last.ckpt it wrote when it was stopped, if it
        # got that far
        cfg.ckpt_path = "last"
    resolved = Resolved(run_dir, model_config, spawned=spawns_ranks(cfg))
    if cfg.ckpt_path:
        resolved = resume(cfg, resolved)
    if cfg.init_from:
        resolved = fine_tune(cfg, resolved)
    device = pick_device(cfg.trainer.accelerator, key="trainer.accelerator")
    cfg.float32_matmul_precision = resolve_float32_matmul(cfg.float32_matmul_precision, device)
    OmegaConf.set_readonly(cfg, True)
    return resolved


def resume(cfg: DictConfig, resolved: Resolved) -> Resolved:
    """A resumed run: its checkpoint loaded and checked against the settings given now. It keeps
    its lr schedule (optim.decay_steps follows trainer.max_steps, which a resume may extend)."""
    resume_from = run_directory.resume_checkpoint(str(cfg.ckpt_path), resolved.run_dir)
    if resume_from is None:
        return resolved
    checkpoint = load_checkpoint(resume_from)  # a missing or broken checkpoint fails here, in one line
    # a model or optim setting newer than the checkpoint was trained at its default (parametrization:
    # sp, optim.name: adamw; decay_steps, which follows max_steps, has none)
    hyper_parameters = checkpoint["hyper_parameters"]
    hyper_parameters["model"] = defaults(GPTConfig) | hyper_parameters.get("model", {})
    hyper_parameters["optim"] = defaults(OptimConfig, but="decay_steps") | hyper_parameters.get("optim", {})
    if (trained_with := hyper_parameters["optim"]["name"]) != cfg.optim.name:
        raise SettingError(
            f"optim={cfg.optim.name}",
            f"the checkpoint was trained with optim={trained_with}, "
            f"and a resumed run keeps its optimizer and its state; resume with optim={trained_with}",
        )
    run_directory.check_same_settings(cfg, checkpoint, list(HydraConfig.get().overrides.task))
    step = checkpoint["global_step"]
    if cfg.flops_budget is None and 0 <= cfg.trainer.max_steps <= step:  # (spend_budget checks a budget's)
        raise SettingError(
            f"ckpt_path={cfg.ckpt_path} is at step {step}, and trainer.max_steps="
            f"{cfg.trainer.max_steps}: give a larger trainer.max_steps to train further"
        )
    if "decay_steps" in (saved_optim := checkpoint["hyper_parameters"].get("optim", {})):
        cfg.optim.decay_steps = saved_optim["decay_steps"]
    checkpoint_run_dir = run_directory.run_dir_of(resume_from)
    continuing = checkpoint_run_dir is not None and checkpoint_run_dir.resolve() == resolved.run_dir.resolve()
    return replace(
        resolved,
        resume_from=resume_from,
        resumed_step=step,
        continuing=continuing,
        wandb_run_id=checkpoint.get("wandb_run_id") if continuing else None,
        resumed_tokenizer=tokenizer_from_dict(hyper_parameters["tokenizer"]),
        resumed_corpus=checkpoint.get("corpus_sha256"),  # none before gptlab kept it
    )


def defaults(settings: type, but: str | None = None) -> dict[str, Any]:
    """A dataclass's fields and their defaults (lists included), less one."""
    return {
        f.name: f.default_factory() if f.default_factory is not MISSING else f.default
        for f in fields(settings)
        if f.name != but
    }


def fine_tune(cfg: DictConfig, resolved: Resolved) -> Resolved:
    """A run started from a checkpoint's weights keeps its architecture (and so block_size), which
    the config is told; dropout may change."""
    pretrained = model_from_checkpoint(load_checkpoint(find_checkpoint(cfg.init_from)))
    model_config = replace(pretrained[0].config, dropout=resolved.model.dropout)
    from_checkpoint = {k: v for k, v in asdict(model_config).items() if k in cfg.model}
    if overruled := {k: v for k, v in from_checkpoint.items() if cfg.model[k] != v}:
        log.warning("init_from: the model is the checkpoint's, so these settings are its own: %s", overruled)
    cfg.model.merge_with(from_checkpoint)
    return replace(resolved, model=model_config, pretrained=pretrained)


def choose_precision(cfg: DictConfig, model: GPTConfig) -> float:
    """trainer.precision=auto becomes what the device computes fastest (gptlab/training/precision.py:
    on a CPU with native bf16, measured with this model, whose vocabulary the corpus gives), said in
    the log and recorded in the run's config. Every rank of a job takes rank 0's choice. Returns
    the seconds spent measuring (none when the choice was known)."""
    if cfg.trainer.precision != "auto":
        return 0.0
    device = pick_device(cfg.trainer.accelerator, key="trainer.accelerator")
    optim = OptimConfig(**OmegaConf.to_container(cfg.optim, resolve=True))
    batch_size = cfg.data.batch_size
    key = f"{cpu_name()}, torch {torch.__version__}, {torch.get_num_threads()} threads, {optim.name}, "
    key += f"batch {batch_size}, compile {cfg.model.compile}, {json.dumps(asdict(model), sort_keys=True)}"
    measuring = []

    def measure() -> dict[str, float]:
        started = time.perf_counter()
        seconds = time_steps(model, optim, batch_size)
        measuring.append(time.perf_counter() - started)
        return seconds

    def decide() -> str:
        precision, reason = auto_precision(device, measure, key)
        log.info("trainer.precision=auto: %s, as %s", precision, reason)
        return precision

    # a key of its own for each choice: torchrun's store keeps a key's first value for the job
    precision = cluster.from_rank_zero(f"gptlab/precision/{hashlib.sha256(key.encode()).hexdigest()}", decide)
    with read_write(cfg):
        cfg.trainer.precision = precision
    return sum(measuring)


def time_steps(model: GPTConfig, optim: OptimConfig, batch_size: int, **timing: Any) -> dict[str, float]:
    """Seconds a training step of the model takes on the CPU in each precision auto chooses from,
    on random tokens (precision.step_times, with `timing`'s rounds and budget); the run's own random
    state is left as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        network = create_model(model)
        optimizer = build_optimizer(network, optim)
        tokens = torch.randint(model.vocab_size, (batch_size, model.block_size + 1))

        def step(precision: str) -> None:
            with autocast("cpu", precision):
                _, loss = network(tokens[:, :-1], tokens[:, 1:])
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        return step_times(step, **timing)


def spawns_ranks(cfg: DictConfig) -> bool:
    """Inside a multirun, DDP spawns its ranks: Lightning's ddp starts ranks 1.. by re-running the
    command line, which inside a sweep would re-run the whole sweep; unless a cluster launcher
    (SLURM tasks, torchrun) already started this process as one of the ranks."""
    return (
        HydraConfig.get().mode == RunMode.MULTIRUN
        and cfg.trainer.strategy == "auto"
        and cfg.trainer.devices != 1
        and cluster.launcher_environment() is None
    )


def set_up(cfg: DictConfig) -> None:
    torch.set_float32_matmul_precision(cfg.float32_matmul_precision)
    L.seed_everything(cfg.seed, workers=True, verbose=False)


def datamodule(cfg: DictConfig, resolved: Resolved) -> TextDataModule:
    """The corpus, tokenized with the checkpoint's own tokenizer for a fine-tune or a resume (the
    text must fit its vocabulary); a resume is told when the text is not the one it trained on."""
    datamodule = hydra.utils.instantiate(cfg.data)
    if resolved.pretrained is not None:
        datamodule.tokenizer = resolved.pretrained[1]
    if resolved.resumed_tokenizer is not None:
        datamodule.tokenizer = resolved.resumed_tokenizer
    try:
        datamodule.prepare_data()  # before any DDP process starts, so only one prepares
    except UnknownCharacters as err:
        if resolved.resumed_tokenizer is None:
            raise
        raise UnknownCharacters(
            err.unknown,
            err.where,
            vocabulary="the vocabulary of the checkpoint it resumes",
            hint="a resumed run keeps its checkpoint's vocabulary (to train on this text, start a new run)",
        ) from None
    datamodule.setup("fit")
    trained_on, now = resolved.resumed_corpus, datamodule.corpus.text_sha256
    if trained_on is not None and trained_on != now:
        log.warning(
            "the corpus changed since the checkpoint (its text's sha256 was %s, now %s): the resumed run "
            "trains on other text",
            trained_on[:12],
            now[:12],
        )
    return datamodule


def spend_budget(cfg: DictConfig, resolved: Resolved, datamodule: TextDataModule) -> None:
    """flops_budget: trainer.max_steps becomes the steps it pays for, at the model's training
    FLOPs per token (6 a parameter, and attention's) times the tokens a step sees on every device
    (batch, block, gradient accumulation, devices and nodes). optim.decay_steps follows max_steps
    unless it is set, so the lr schedule ends with the budget; trainer.max_time may still end the
    run first (summary.json's train_flops says what was spent). A budget refused here (less than a
    step, or a resume already past it) is refused after the corpus is prepared, which the count
    needs; no step has run."""
    if cfg.flops_budget is None:
        return
    with torch.device("meta"):  # the shapes, not the weights
        model = create_model(replace(resolved.model, vocab_size=datamodule.tokenizer.vocab_size))
    trainer = cfg.trainer
    tokens = datamodule.batch_size * datamodule.block_size * trainer.accumulate_grad_batches
    tokens *= devices_per_node(trainer.devices, trainer.accelerator) * trainer.num_nodes
    step_flops = model.training_flops_per_token() * tokens
    steps = int(cfg.flops_budget // step_flops)
    if steps < 1:
        raise SettingError(
            f"flops_budget={cfg.flops_budget:g} does not pay for one step, which costs {step_flops:.3g} "
            f"FLOPs ({tokens} tokens): give at least that"
        )
    if steps <= resolved.resumed_step:
        raise SettingError(
            f"ckpt_path={cfg.ckpt_path} is at step {resolved.resumed_step}, and flops_budget="
            f"{cfg.flops_budget:g} pays for {steps} steps: give a larger flops_budget to train further"
        )
    with read_write(cfg):
        trainer.max_steps = steps
    log.info(
        "flops_budget=%g: %d steps of %.3g FLOPs (%d tokens)", cfg.flops_budget, steps, step_flops, tokens
    )


def devices_per_node(devices: Any, accelerator: str) -> int:
    """How many devices trainer.devices asks for on each node, as Lightning reads it: a count, a
    list or a comma-separated string of ids; auto or -1, every GPU (one CPU process)."""
    if devices in ("auto", -1, "-1"):
        device = pick_device(accelerator, key="trainer.accelerator")
        return torch.cuda.device_count() if device.type == "cuda" else 1
    if isinstance(devices, str):
        return len(devices.strip(",").split(",")) if "," in devices else int(devices)
    return devices if isinstance(devices, int) else len(devices)


def module(cfg: DictConfig, resolved: Resolved, datamodule: TextDataModule) -> GPTLitModule:
    model_config = replace(resolved.model, vocab_size=datamodule.tokenizer.vocab_size)
    module = GPTLitModule(
        model=asdict(model_config),
        optim=OmegaConf.to_container(cfg.optim, resolve=True),
        tokenizer=datamodule.tokenizer.to_dict(),
        seed=cfg.seed,
        compile=cfg.model.compile,
    )
    if resolved.pretrained is not None:
        module.model.load_state_dict(resolved.pretrained[0].state_dict())
    return module


def callbacks(cfg: DictConfig, resolved: Resolved, tokenizer: Tokenizer) -> list[L.Callback]:
    """The config's callbacks, and those that are not options: every run ends validated, its
    checkpoints carry its records, a preempted run saves where it stopped, and a trial of an
    Optuna search reports to its study."""
    callbacks = [hydra.utils.instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c]
    for callback in callbacks:
        if isinstance(callback, TextSamples):
            try:
                tokenizer.encode(callback.prompt)
            except ValueError as err:
                raise SettingError(f"callbacks.text_samples.prompt: {err}") from None
    for callback in callbacks:
        if isinstance(callback, RunSummary):
            callback.precision_seconds = resolved.precision_seconds
    callbacks += [ValidateFinalStep(), KeepRecordsWithCheckpoints(), StopWhenPreempted()]
    if (trial := trial_address()) is not None:
        callbacks.append(ReportToTrial(trial))
    if resolved.spawned:
        callbacks.append(LeaveProcessGroupTogether())
    return callbacks


def loggers(cfg: DictConfig, resolved: Resolved) -> list[Any]:
    """The config's loggers, each told the whole resolved run config."""
    loggers = instantiate_loggers(
        cfg.get("logger") or {}, resolved.continuing, resolved.wandb_run_id, resolved.resumed_step
    )
    # setting: the overrides less the seed, which a dashboard groups a setting's seeds by (wandb:
    # group by the config key `setting`)
    overrides = list(HydraConfig.get().overrides.task)
    run_config = OmegaConf.to_container(cfg, resolve=True) | {
        "run_dir": str(resolved.run_dir),
        "setting": " ".join(run_directory.without_seed(overrides)) or "default",
    }
    for logger in loggers:
        logger.log_hyperparams(run_config)
    return loggers


def trainer(
    cfg: DictConfig, resolved: Resolved, callbacks: list[L.Callback], loggers: list[Any]
) -> L.Trainer:
    """The Trainer of the config. val_check_interval counts optimizer steps, like max_steps and
    checkpoint.every_n_steps; Lightning counts batches, accumulate_grad_batches of them to a step."""
    arguments: dict[str, Any] = {}
    if cfg.trainer.val_check_interval is not None:
        arguments["val_check_interval"] = cfg.trainer.val_check_interval * cfg.trainer.accumulate_grad_batches
    if resolved.spawned:
        arguments["strategy"] = "ddp_spawn"
    if not loggers:  # logger=none: the lr has nowhere to go (Lightning refuses to start)
        callbacks = [c for c in callbacks if not isinstance(c, LearningRateMonitor)]
    # _convert_: plain dicts and lists, as Lightning expects (trainer.max_time={minutes: 90})
    return hydra.utils.instantiate(
        cfg.trainer, _convert_="partial", logger=loggers or False, callbacks=callbacks, **arguments
    )
