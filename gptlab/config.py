"""The settings' schema: structured configs (dataclasses registered with Hydra's ConfigStore) that
give every setting of the entry points its type and its one default. Hydra refuses a value of the
wrong type, or a key no schema has, while it composes, naming the key. conf/ holds the choices
(config groups and their options) and what they change; the defaults are here, and in GPTConfig
(gptlab/model.py) for the model. `python -m gptlab.<entry point> --cfg job` shows them all.

What a type cannot say (ranges, relations between settings) is checked by the check_* functions
here, before any work. Choice fields are plain strings: checkpoints keep them so.
"""

import math
from dataclasses import dataclass, field, fields, make_dataclass
from pathlib import Path
from typing import Any, Literal, get_origin

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from gptlab.faults import SettingError
from gptlab.model import GPTConfig
from gptlab.training.precision import AUTOCAST_DTYPES


def is_number(value: object) -> bool:
    """An int or a float: not a bool (which Python counts as an int), not a string."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# model: GPTConfig's fields, with its types (a Literal as a plain string, which GPTConfig checks)
# and its defaults, less vocab_size (the tokenizer's); and compile, which says how to run the
# model, not what it is, and so is not saved in checkpoints
ModelSettings = make_dataclass(
    "ModelSettings",
    [
        (f.name, str if get_origin(f.type) is Literal else f.type, f.default)
        for f in fields(GPTConfig)
        if f.name != "vocab_size"
    ]
    + [("compile", bool, False)],  # torch.compile the model's forward (slow first steps, faster after)
)


OPTIMIZERS = ("adamw", "muon")
SCHEDULES = ("cosine", "wsd")
MUON_LR_ADJUSTMENTS = ("original", "match_rms_adamw")


@dataclass
class OptimConfig:
    """optim (conf/optim/: adamw, muon): the optimizer and its lr schedule, built by
    gptlab/training/optimizer.py; check_optim checks their ranges."""

    name: str = "adamw"  # adamw, or muon: Muon on the blocks' matrices and AdamW on the rest
    lr: float = 5.9e-3  # AdamW's (under muon: the embeddings', lm_head's, gains' and biases')
    min_lr: float = 1.0e-4  # where the schedule ends
    min_lr_ratio: float | None = None  # the schedule ends at this fraction of each lr instead; null: min_lr
    embedding_lr: float | None = None  # the embeddings' own lr (AdamW's, under adamw and muon); null: lr
    weight_decay: float = 0.1  # AdamW's, on weight matrices only; biases and norm gains are not decayed
    betas: list[float] = field(default_factory=lambda: [0.9, 0.99])
    warmup_steps: int = 50
    fused: bool = False  # one fused kernel updates all parameters (CUDA, and CPU); none before it had
    decay_steps: int = "${trainer.max_steps}"  # type: ignore[assignment]  (set it when max_steps is -1)
    schedule: str = "cosine"  # cosine: warmup, cosine decay; wsd: warmup, stable, linear warmdown
    warmdown_fraction: float = 0.2  # wsd: the last fraction of decay_steps, over which the lr falls
    # optim=muon: torch.optim.Muon's settings for the matrices inside the blocks
    muon_lr: float = 0.02
    muon_momentum: float = 0.95
    muon_nesterov: bool = True
    muon_weight_decay: float = 0.0
    muon_ns_steps: int = 5  # Newton-Schulz iterations that orthogonalise each update
    # original: lr * sqrt(max(1, rows / columns)); match_rms_adamw: lr * 0.2 * sqrt(max(rows, columns))
    muon_adjust_lr: str = "original"


def check_optim(optim: OptimConfig) -> None:
    for key, allowed in (
        ("name", OPTIMIZERS),
        ("schedule", SCHEDULES),
        ("muon_adjust_lr", MUON_LR_ADJUSTMENTS),
    ):
        if getattr(optim, key) not in allowed:
            raise SettingError(f"optim.{key}={getattr(optim, key)!r}", f"use one of {list(allowed)}")
    if not optim.lr > 0:
        raise SettingError(f"optim.lr={optim.lr!r}", "use a positive learning rate")
    if optim.min_lr_ratio is None and not 0 <= optim.min_lr <= optim.lr:
        raise SettingError(
            f"optim.min_lr={optim.min_lr!r}",
            f"use 0 <= min_lr <= lr ({optim.lr}), "
            "or a floor that follows the lr (optim.min_lr_ratio=0.1, say)",
        )
    if optim.min_lr_ratio is not None and not 0 <= optim.min_lr_ratio <= 1:
        raise SettingError(f"optim.min_lr_ratio={optim.min_lr_ratio!r}", "use 0 <= min_lr_ratio <= 1")
    if optim.weight_decay < 0:
        raise SettingError(f"optim.weight_decay={optim.weight_decay!r}", "use 0 or more")
    if len(optim.betas) != 2 or not all(0 <= b < 1 for b in optim.betas):
        raise SettingError(f"optim.betas={list(optim.betas)!r}", "use two numbers in [0, 1)")
    if optim.warmup_steps < 0:
        raise SettingError(f"optim.warmup_steps={optim.warmup_steps!r}", "use 0 or more steps")
    if optim.decay_steps < 1:
        raise SettingError(
            f"optim.decay_steps={optim.decay_steps!r}",
            "use a positive number of steps (it follows trainer.max_steps: set it when max_steps is -1)",
        )
    if not 0 < optim.warmdown_fraction <= 1:
        raise SettingError(f"optim.warmdown_fraction={optim.warmdown_fraction!r}", "use a fraction in (0, 1]")
    if optim.embedding_lr is not None and not optim.embedding_lr > 0:
        raise SettingError(
            f"optim.embedding_lr={optim.embedding_lr!r}", "use a positive learning rate, or null for optim.lr"
        )
    if not optim.muon_lr > 0:
        raise SettingError(f"optim.muon_lr={optim.muon_lr!r}", "use a positive learning rate")
    if not 0 <= optim.muon_momentum < 1:
        raise SettingError(f"optim.muon_momentum={optim.muon_momentum!r}", "use 0 <= momentum < 1")
    if optim.muon_weight_decay < 0:
        raise SettingError(f"optim.muon_weight_decay={optim.muon_weight_decay!r}", "use 0 or more")
    if not 1 <= optim.muon_ns_steps < 100:
        raise SettingError(f"optim.muon_ns_steps={optim.muon_ns_steps!r}", "use 1 to 99 steps")


@dataclass
class DataSettings:
    """data (conf/data/): a text corpus for gptlab.data.datamodule.TextDataModule, prepared once
    into a memory-mapped token file (gptlab/data/corpus.py) and reused by later runs, sweep jobs
    and DDP ranks; `python -m gptlab.prepare` prepares it ahead."""

    _target_: str = "gptlab.data.datamodule.TextDataModule"
    # a text file, a directory (its files matching glob) or a list of files, relative to the
    # directory you run from
    path: Any = MISSING
    # conf/data/tokenizer/: {type: char}, or {type: bpe, vocab_size: ...}; each type has its own
    # settings, checked by gptlab.data.tokenizer.check_tokenizer_settings
    tokenizer: Any = field(default_factory=lambda: {"type": "char"})
    glob: str = "*.txt"  # which files of a directory, sorted by name ('**/*.txt': subfolders too)
    separator: str = "\n"  # put between files
    cache_dir: str | None = None  # where prepared corpora go; null: a gptlab-prepared folder beside the data
    url: str | None = None  # where the file at path is downloaded from when it is missing
    sha256: str | None = None  # what the download must hash to
    block_size: int = "${model.block_size}"  # type: ignore[assignment]  (set it as model.block_size)
    batch_size: int = 16  # windows per step and per device
    train_fraction: float = 0.9  # the first 90% of the text (in bytes) trains, the rest validates
    val_tokens: int | None = None  # validation scores the first val_tokens tokens of its split (null: all)
    seed: int = "${seed}"  # type: ignore[assignment]


@dataclass
class CheckpointSettings:
    # how often last.ckpt (to resume from) is written, in steps; null: when training ends only
    every_n_steps: int | None = "${trainer.val_check_interval}"  # type: ignore[assignment]


@dataclass
class TrainSettings:
    """`python -m gptlab.train` (conf/config.yaml): the top-level settings; trainer, callbacks
    and logger are Lightning's objects, built from their own _target_ configs."""

    model: ModelSettings = field(default_factory=ModelSettings)  # type: ignore[valid-type]
    data: DataSettings = field(default_factory=DataSettings)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: Any = MISSING
    callbacks: Any = None
    logger: Any = None
    seed: int = 1337  # seeds model init and the batch stream (batches depend on seed, rank, step)
    ckpt_path: str | None = None  # resume: a checkpoint, or a run directory (its last.ckpt)
    init_from: str | None = None  # fine-tune: start from this checkpoint's (or run directory's) weights
    retry_failed: bool = False  # a sweep launched again runs the jobs that failed again, too
    checkpoint: CheckpointSettings = field(default_factory=CheckpointSettings)
    float32_matmul_precision: str = "auto"  # auto: high (TF32) on CUDA GPUs that have it, else highest
    reference_val_loss: float | None = None  # a published figure to compare with (the ladder's)
    # training FLOPs to spend: sets trainer.max_steps, so that runs of any size compare at equal
    # compute (gptlab.training.build.spend_budget); e.g. 3e13
    flops_budget: float | None = None


@dataclass
class SampleSettings:
    """`python -m gptlab.sample` (conf/sample.yaml)."""

    ckpt_path: str = MISSING  # a .ckpt file, or a run directory (its best checkpoint)
    prompt: str = "\n"  # the text to continue (a char model knows only its own characters)
    max_new_tokens: int = 500
    temperature: float = 0.8  # < 1 sharper, > 1 more random
    top_k: int | None = 200  # sample among the k most likely tokens; null for all
    num_samples: int = 1  # sampled together, as one batch
    seed: int = 1337
    device: str = "auto"  # auto (CUDA, then MPS, then the CPU), cpu, cuda, cuda:1, mps
    # the weights': bfloat16 reads half the bytes a token (faster on CPUs and GPUs with native
    # bf16), but with the KV cache and without it, its rounding may then part the samples
    dtype: str = "float32"
    use_cache: bool = True  # the KV cache; false recomputes the whole context for every token
    out_file: str | None = None  # also write the samples to this file


@dataclass
class EvalData:
    path: str | None = None  # null: the validation set the run was scored on; a file or directory: all of it
    glob: str = "*.txt"  # which files of a directory


@dataclass
class EvalSettings:
    """`python -m gptlab.eval` (conf/eval.yaml)."""

    ckpt_path: str = MISSING  # a .ckpt file, or a run directory (its best checkpoint)
    data: EvalData = field(default_factory=EvalData)
    batch_size: int = 32  # windows scored at once: memory, not the result (every token counts once)
    device: str = "auto"  # auto (CUDA, then MPS, then the CPU), cpu, cuda, cuda:1, mps
    precision: str | None = None  # null: the run's own (32-true or bf16-mixed autocast); or either of those
    out_file: str | None = None  # also write the figures to this JSON file


@dataclass
class BenchCorpus:
    """bench.parts=[corpus]: data.path repeated to each size, prepared in a fresh process."""

    sizes_mb: list[int] = field(default_factory=lambda: [10, 100, 1000])
    tokenizers: list[str] = field(default_factory=lambda: ["char", "bpe"])
    bpe_vocab_size: int = 1024
    keep: bool = False  # keep the corpora made (and their prepared tokens) in the run directory


@dataclass
class BenchCoord:
    """bench.parts=[coord]: muP's coordinate check, each width under sp and under mup."""

    widths: list[int] = field(default_factory=lambda: [64, 128, 256, 512])  # n_embd
    steps: int = 3  # AdamW steps at optim.lr (constant: no warmup) before the sizes are measured
    seeds: int = 3  # the sizes are means over this many initialisations
    plot: str | None = "coord_check.png"  # drawn in the run directory; null: no plot


# what gptlab.bench measures (bench.parts), each a table
BENCH_PARTS = ("train", "startup", "generate", "bare", "grow", "corpus", "coord", "precision")


@dataclass
class BenchSettings:
    """bench (conf/bench.yaml): what `python -m gptlab.bench` measures, and how long."""

    parts: list[str] = field(default_factory=lambda: ["train", "startup", "generate"])
    warmup_steps: int = 10  # untimed steps first: allocator, caches, compilation (model.compile=true)
    rounds: int = 15  # gptlab and the bare loop alternate, a round each; medians are reported
    steps_per_round: int = 10  # a multiple of trainer.log_every_n_steps, so every round logs as often
    startup_runs: int = 3
    generate_tokens: list[int | None] = field(default_factory=lambda: [None, 1000])  # null: block_size - 1
    generate_repeats: int = 5  # cached and uncached runs alternate
    generate_dtype: str = "float32"  # the weights', as gptlab.sample's dtype: float32 or bfloat16
    peak_flops: float | None = None  # the GPU's peak bf16 FLOP/s for MFU; null: Lightning's table
    # bench.parts=[grow]: the bare loop at each value of each setting, one process each
    grow: dict[str, list[int]] = field(
        default_factory=lambda: {
            "model.block_size": [64, 128, 256, 512, 1024],
            "model.n_layer": [2, 4, 8, 12],
        }
    )
    corpus: BenchCorpus = field(default_factory=BenchCorpus)
    coord: BenchCoord = field(default_factory=BenchCoord)


@dataclass
class BenchRun(TrainSettings):
    """`python -m gptlab.bench` (conf/bench.yaml): a training run's settings and the bench's."""

    bench: BenchSettings = field(default_factory=BenchSettings)


def register() -> None:
    """Puts the schemas where the configs in conf/ name them (each first in its defaults list)."""
    store = ConfigStore.instance()
    # a group of its own, so that the bench's config can take the training config with the bench's
    # schema in place of this one (`override schema: bench`)
    store.store(group="schema", name="train", node=TrainSettings, package="_global_")
    store.store(group="schema", name="bench", node=BenchRun, package="_global_")
    store.store(name="sample_settings", node=SampleSettings)
    store.store(name="eval_settings", node=EvalSettings)


register()


def model_settings(cfg: DictConfig) -> dict[str, Any]:
    """The model group's GPTConfig fields: all but compile."""
    settings = OmegaConf.to_container(cfg.model, resolve=True)
    settings.pop("compile", None)
    return settings


def check_data_settings(block_size: Any, batch_size: Any, val_tokens: Any, train_fraction: Any) -> None:
    """data.*'s ranges (TextDataModule checks them too, for code that builds it directly)."""
    for name, value in (("block_size", block_size), ("batch_size", batch_size), ("val_tokens", val_tokens)):
        if value is not None and not (is_count(value) and value >= 1):
            raise SettingError(f"data.{name}={value!r}", "use a positive integer")
    if not (is_number(train_fraction) and 0.0 < train_fraction < 1.0):
        raise SettingError(f"data.train_fraction={train_fraction!r}", "use a number in (0, 1)")


def check_settings(cfg: DictConfig, given: set[str], experiment: str | None) -> GPTConfig:
    """The train settings that cost nothing to check, before any file is read: the model's own
    checks (GPTConfig), the data's ranges, the optimizer's, the Trainer settings gptlab reads, and
    what the settings given on the command line (`given`, their keys) and the experiment ask
    together."""
    if experiment == "finetune" and not cfg.init_from:
        raise SettingError("experiment=finetune needs init_from=<checkpoint file or run directory>")
    if cfg.optim.name != "muon" and (
        muon_setting := next((k for k in sorted(given) if k.startswith("optim.muon_")), None)
    ):
        raise SettingError(
            f"{muon_setting} is given with optim={cfg.optim.name}, which has no Muon: add optim=muon, "
            f"or leave out {muon_setting}"
        )
    if cfg.flops_budget is not None and "trainer.max_steps" in given:
        raise SettingError(
            f"flops_budget={cfg.flops_budget:g} and trainer.max_steps={cfg.trainer.max_steps} are both "
            "given: the budget sets the steps, give one of them"
        )
    model_fields = {f.name for f in fields(ModelSettings)}
    if unknown := sorted(set(cfg.model) - model_fields):
        raise SettingError(f"model.{unknown[0]} is not a model setting: use one of {sorted(model_fields)}")
    model_config = GPTConfig(**model_settings(cfg))
    data = cfg.data
    check_data_settings(data.block_size, data.batch_size, data.val_tokens, data.train_fraction)
    trainer = cfg.trainer  # Lightning's arguments: no schema, so their types are checked here
    if not is_count(trainer.max_steps) or not (trainer.max_steps >= 1 or trainer.max_steps == -1):
        raise SettingError(
            f"trainer.max_steps={trainer.max_steps!r}",
            "use a positive number of steps (or -1, for no limit, with trainer.max_time)",
        )
    optim = OptimConfig(**OmegaConf.to_container(cfg.optim, resolve=True))
    check_optim(optim)
    if optim.name == "muon" and model_config.arch == "bigram":
        raise SettingError(
            "optim=muon with model.arch=bigram",
            "the bigram is one table, with no matrices inside blocks for Muon; use optim=adamw",
        )
    if optim.name == "muon" and model_config.parametrization == "mup":
        raise SettingError(
            "optim=muon with model.parametrization=mup",
            "gptlab's muP scales AdamW's "
            "learning rates with the width, not Muon's; use optim=adamw or model.parametrization=sp",
        )
    if optim.fused and str(trainer.precision).startswith("16") and trainer.gradient_clip_val:
        raise SettingError(
            f"optim.fused=true with trainer.precision={trainer.precision} cannot clip gradients (the "
            "fused step unscales them itself): use trainer.precision=bf16-mixed, optim.fused=false "
            "or trainer.gradient_clip_val=null"
        )
    interval = trainer.val_check_interval
    if interval is not None and (not is_count(interval) or interval < 1):
        raise SettingError(
            f"trainer.val_check_interval={interval!r}",
            "use a positive number of steps (the "
            "training stream is endless: there are no epochs to take a fraction of), or null to validate "
            "only when training ends",
        )
    if cfg.flops_budget is not None and not (math.isfinite(cfg.flops_budget) and cfg.flops_budget > 0):
        raise SettingError(f"flops_budget={cfg.flops_budget!r}", "use a positive number of FLOPs")
    if cfg.flops_budget is not None and cfg.model.arch == "bigram":
        raise SettingError(
            "flops_budget with model.arch=bigram",
            "the bigram looks its logits up and "
            "multiplies no matrices, so a budget of FLOPs buys no steps; give trainer.max_steps instead",
        )
    if cfg.ckpt_path and cfg.init_from:
        raise SettingError(
            "ckpt_path and init_from are both set: ckpt_path resumes a run, init_from starts a new one "
            "from a checkpoint's weights; give one"
        )
    return model_config


def check_out_file(out_file: str | None, example: str) -> None:
    """out_file= of gptlab.sample and gptlab.eval: a file, not a directory (its folder is made
    when it is written, if it is not there)."""
    if out_file and Path(out_file).is_dir():
        raise SettingError(f"out_file={out_file} is a directory: give a file name, e.g. {example}")


def check_sample_settings(cfg: DictConfig) -> None:
    """gptlab.sample's settings that need no checkpoint."""
    check_sampling("", cfg.prompt, cfg.max_new_tokens, cfg.temperature, cfg.top_k)
    if cfg.num_samples < 1:
        raise SettingError(f"num_samples={cfg.num_samples!r}", "use a positive integer")
    check_out_file(cfg.out_file, "samples.txt")


def check_eval_settings(cfg: DictConfig) -> None:
    """gptlab.eval's settings that need no checkpoint (its precision is checked against the run's)."""
    if cfg.batch_size < 1:
        raise SettingError(f"batch_size={cfg.batch_size!r}", "use a positive integer")
    check_out_file(cfg.out_file, "eval.json")


def check_bench_settings(cfg: DictConfig) -> None:
    """Everything the bench can check before it measures."""
    if unknown := [p for p in cfg.bench.parts if p not in BENCH_PARTS]:
        raise SettingError(f"bench.parts has {unknown[0]!r}: use any of {list(BENCH_PARTS)}")
    for key in ("warmup_steps", "rounds", "steps_per_round", "startup_runs", "generate_repeats"):
        value, least = cfg.bench[key], 0 if key == "warmup_steps" else 1
        if value < least:
            raise SettingError(f"bench.{key}={value!r}", f"use an integer >= {least}")
    if "coord" in cfg.bench.parts:
        coord = cfg.bench.coord
        if coord.seeds < 1 or coord.steps < 0 or len(coord.widths) < 2:
            raise SettingError(
                f"bench.coord: seeds={coord.seeds}, steps={coord.steps}, widths={list(coord.widths)} is not "
                "allowed: use seeds >= 1, steps >= 0 and two widths or more"
            )
        for width in coord.widths:  # each width as a model of its own, before any is trained
            GPTConfig(**model_settings(cfg) | {"n_embd": width, "parametrization": "mup"})
    if "train" in cfg.bench.parts and (cfg.trainer.devices != 1 or cfg.trainer.num_nodes != 1):
        raise SettingError(
            f"trainer.devices={cfg.trainer.devices} is not benchmarked: the bench measures one device "
            "(trainer.devices=1, trainer.num_nodes=1)"
        )
    # a precision the bare loop can mirror (auto becomes 32-true or bf16-mixed, which it can)
    bare_loop = {"train", "bare", "grow"} & set(cfg.bench.parts)
    if bare_loop and cfg.trainer.precision != "auto" and str(cfg.trainer.precision) not in AUTOCAST_DTYPES:
        raise SettingError(
            f"trainer.precision={cfg.trainer.precision} is not benchmarked: use 32-true or bf16-mixed"
        )


def check_sampling(prefix: str, prompt: Any, max_new_tokens: Any, temperature: Any, top_k: Any) -> None:
    """One line for a sampling setting that cannot sample (gptlab.sample, and the text samples
    callback, whose settings come from its _target_ config untyped)."""
    if not isinstance(prompt, str) or not prompt:
        raise SettingError(f"{prefix}prompt={prompt!r}", "give at least one character, e.g. 'ROMEO:'")
    if not is_count(max_new_tokens) or max_new_tokens < 1:
        raise SettingError(f"{prefix}max_new_tokens={max_new_tokens!r}", "use a positive integer")
    if not is_number(temperature) or not temperature > 0:
        raise SettingError(f"{prefix}temperature={temperature!r}", "use a positive number")
    if top_k is not None and (not is_count(top_k) or top_k < 1):
        raise SettingError(f"{prefix}top_k={top_k!r}", "use a positive integer, or null for all tokens")
