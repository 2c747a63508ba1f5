import re
from itertools import pairwise
from pathlib import Path

import pytest
from hydra.errors import ConfigCompositionException
from omegaconf import DictConfig, OmegaConf

from gptlab.config import model_settings
from gptlab.model import GPTConfig

EXPERIMENT_DIR = Path(__file__).parents[1] / "conf" / "experiment"
EXPERIMENTS = sorted(
    str(p.relative_to(EXPERIMENT_DIR).with_suffix("")) for p in EXPERIMENT_DIR.rglob("*.yaml")
)
LADDER = ["bigram", "single_head", "multi_head", "feed_forward", "residual", "layernorm", "scaled"]


def test_defaults_compose(compose) -> None:
    cfg = compose()
    assert cfg.model.arch == "gpt" and cfg.model.n_embd % 6 == 0  # the README's n_head=6 example
    assert cfg.data.block_size == cfg.model.block_size  # one source of truth
    assert cfg.trainer._target_ == "lightning.pytorch.Trainer"
    assert set(cfg.logger) == {"wandb", "csv"}
    assert cfg.optim.decay_steps == cfg.trainer.max_steps
    GPTConfig(**model_settings(cfg))


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_composes_into_a_valid_model(compose, experiment: str) -> None:
    cfg = compose(f"experiment={experiment}")
    config = GPTConfig(**model_settings(cfg))
    assert cfg.data.block_size == config.block_size


def test_lecture_model_experiment(compose) -> None:
    cfg = compose("experiment=shakespeare_char")
    assert (cfg.model.n_layer, cfg.model.n_head, cfg.model.n_embd) == (6, 6, 384)
    assert (cfg.model.block_size, cfg.data.batch_size, cfg.model.dropout) == (256, 64, 0.2)


def test_overrides_by_field_and_group(compose) -> None:
    cfg = compose("model.n_head=6", "model.block_size=32", "trainer.precision=bf16-mixed", "logger=csv")
    assert cfg.model.n_head == 6 and cfg.data.block_size == 32
    assert cfg.trainer.precision == "bf16-mixed"
    assert set(cfg.logger) == {"csv"}
    assert compose("model=bigram").model.arch == "bigram"
    assert not compose("logger=none").get("logger")


def test_unknown_group_option_is_refused(compose) -> None:
    with pytest.raises(ConfigCompositionException, match="model/transformerxl"):
        compose("model=transformerxl")


def test_the_ladder_is_one_model_switched_on_step_by_step(compose) -> None:
    assert {f"ladder/{step}" for step in LADDER} <= set(EXPERIMENTS)
    configs = {step: GPTConfig(**model_settings(compose(f"experiment=ladder/{step}"))) for step in LADDER}
    assert configs["bigram"].arch == "bigram"
    steps = [configs[step] for step in LADDER[1:]]
    changed = [
        {f for f in GPTConfig.__dataclass_fields__ if getattr(a, f) != getattr(b, f)}
        for a, b in pairwise(steps)
    ]
    assert changed == [
        {"n_head"},  # multi_head
        {"mlp"},  # feed_forward: a single layer
        {"n_layer", "residual", "attn_proj", "mlp"},  # residual: blocks with projections, 4x MLP
        {"norm"},  # layernorm
        {"n_layer", "n_head", "n_embd", "block_size", "dropout", "attention", "init"},  # scaled
    ]
    references = [compose(f"experiment=ladder/{step}").reference_val_loss for step in LADDER]
    assert references == sorted(references, reverse=True)  # every step helps


def test_ladder_sweep_lists_the_cpu_steps(compose) -> None:
    cfg = compose("hparams_search=ladder", return_hydra_config=True)
    steps = cfg.hydra.sweeper.params.experiment.split(",")
    assert steps == [f"ladder/{step}" for step in LADDER[:-1]]  # all but the GPU-sized step


def test_slurm_launcher_config(compose) -> None:
    import gptlab.runs.slurm  # noqa: F401 (registers ${gptlab.device_count:...})

    cfg = compose(
        "hydra/launcher=slurm", "trainer.num_nodes=2", "trainer.devices=4", return_hydra_config=True
    )
    launcher = cfg.hydra.launcher
    assert launcher._target_ == "hydra_plugins.gptlab.SlurmLauncher"
    # one task per device, on as many nodes as the Trainer has; a GPU per task unless told otherwise
    assert (launcher.nodes, launcher.tasks_per_node, launcher.gpus_per_node) == (2, 4, 4)
    cpu = compose(
        "hydra/launcher=slurm",
        "trainer.devices=auto",
        "hydra.launcher.gpus_per_node=null",
        return_hydra_config=True,
    )
    assert (cpu.hydra.launcher.tasks_per_node, cpu.hydra.launcher.gpus_per_node) == (1, None)


def test_optuna_search_space(compose) -> None:
    cfg = compose("hparams_search=optuna", return_hydra_config=True)
    sweeper = cfg.hydra.sweeper
    assert sweeper.direction == "minimize"
    assert set(sweeper.params) == {
        "optim.lr",
        "optim.warmup_steps",
        "trainer.max_steps",
        "trainer.val_check_interval",
        "data.batch_size",
        "model.block_size",
        "model.n_layer",
        "model.n_embd",
    }
    assert cfg.trainer.max_time == {"seconds": 100}  # each trial's budget
    # every width works with the README's model.n_head=6 example, and with 2, 3 and 4 heads
    widths = [int(w) for w in re.findall(r"\d+", sweeper.params["model.n_embd"])]
    assert widths and all(w % heads == 0 for w in widths for heads in (2, 3, 4, 6))


MODERN = ["classic", "rope", "rmsnorm", "qk_norm", "relu2", "softcap", "muon", "wsd"]


def changed_settings(a: DictConfig, b: DictConfig) -> set[str]:
    """The settings of a run in which two composed configs differ."""
    changed = set()
    for group in ("model", "optim", "data", "trainer"):  # as written: ${...} left unresolved
        mine, theirs = (OmegaConf.to_container(cfg[group], resolve=False) for cfg in (a, b))
        changed |= {f"{group}.{key}" for key in mine if mine[key] != theirs[key]}
    return changed


def test_the_modern_ladder_adds_one_change_a_rung_from_the_classic_recipe(compose) -> None:
    rungs = [compose(f"experiment=ladder/modern/{rung}") for rung in MODERN]
    assert changed_settings(rungs[0], compose("experiment=classic")) == set()
    assert [changed_settings(a, b) for a, b in pairwise(rungs)] == [
        {"model.position"},
        {"model.norm"},
        {"model.qk_norm"},
        {"model.activation"},
        {"model.logit_softcap"},
        {"optim.name", "optim.muon_lr"},
        {"optim.schedule"},
    ]
    # the classic recipe is the schemas' defaults: every switch off, AdamW, the cosine
    classic = compose("experiment=classic")
    assert (classic.model.position, classic.model.norm, classic.optim.name) == (
        "learned",
        "layernorm",
        "adamw",
    )


def test_the_leave_one_out_sweep_takes_each_change_out_of_the_whole_recipe(compose) -> None:
    cfg = compose("hparams_search=modern_leave_one_out", return_hydra_config=True)
    params = cfg.hydra.sweeper.params
    assert params.seed == "1,2,3"
    whole, *others = params.experiment.split(",")
    assert whole == "ladder/modern/wsd"
    full = compose(f"experiment={whole}")
    taken_out = [changed_settings(compose(f"experiment={other}"), full) for other in others]
    assert taken_out == [
        {"model.position"},
        {"model.norm"},
        {"model.qk_norm"},
        {"model.activation"},
        {"model.logit_softcap"},
        {"optim.name", "optim.muon_lr"},  # (Muon's lr, unused by AdamW, back to its default)
        {"optim.schedule"},
        {"model.mlp"},  # swiglu for ReLU squared
    ]
    ladder = compose("hparams_search=modern_ladder", return_hydra_config=True).hydra.sweeper.params
    assert (
        ladder.experiment.split(",") == [f"ladder/modern/{rung}" for rung in MODERN]
        and ladder.seed == "1,2,3"
    )


def test_the_default_run_is_the_modern_recipe_and_other_experiments_are_not(compose) -> None:
    default = compose()
    assert (default.model.position, default.optim.name, default.trainer.max_steps) == ("rope", "muon", 2000)
    for experiment in ("classic", "shakespeare_char", "ladder/layernorm", "previous_default"):
        cfg = compose(f"experiment={experiment}")
        assert (cfg.model.position, cfg.optim.name) == ("learned", "adamw"), experiment
