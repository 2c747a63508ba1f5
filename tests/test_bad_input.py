# ruff: noqa: E501  (the table reads best one case a line)
"""Bad input, everywhere: one line naming the value and what is allowed, a non-zero exit, no
traceback, and no training step; a value of the wrong type, or an unknown key, is refused by Hydra
while it composes (the schemas of gptlab/config.py), with its own message naming the key.

Each case runs in this process: the config composed as the entry point composes it, then the
entry point's own steps (what `python -m gptlab.<entry>` runs before any work) inside the same
wrapper (gptlab.cli). A few run through the real command line, to prove the wrapper and Hydra's
handling there: exit status, stderr, no traceback, nothing written: train's in a process of its
own, as a shell starts it, the other entry points' through their main() with that command line
in this process (tests.conftest.run_here)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra.errors import HydraException
from omegaconf.errors import OmegaConfBaseException

from gptlab import cli, compare, config, convert, prepare, sample, train
from gptlab import eval as evaluate
from gptlab.model import GPT
from tests import conftest
from tests.conftest import REPO_ROOT, SHAKESPEARE, TINY, composed, offline_env

WITH_SAMPLES = [o for o in TINY if not o.startswith("callbacks.text_samples")]
# Hydra's own message for a value of the wrong type or an unknown key: not our one line
HYDRA = "hydra: "

# (entry point, arguments, what the error line must say); {placeholders} are files made below
CASES = [
    ("train", ["-m", "hydra.sweep.dir={sweep}", "hydra/launcher=parallel"], "hydra.launcher.devices=null takes every visible GPU, and there is none here: give the slots to share, e.g. hydra.launcher.devices=[0,1]"),
    ("train", ["-m", "hydra.sweep.dir={sweep}", "hydra/launcher=parallel", "hydra.launcher.devices=[0,1]", "trainer.devices=1,3"], "trainer.devices=3 (job #1) is more than the 2 devices of hydra.launcher.devices=[0, 1]"),
    ("train", ["-m", "hydra.sweep.dir={sweep}", "hparams_search=optuna", "hydra/sweeper/pruner=medain"], "hydra/sweeper/pruner=medain is not an option: use one of ['hyperband', 'median', 'none', 'successive_halving']"),
    ("train", ["-m", "hydra.sweep.dir={sweep}", "hparams_search=optuna", "hydra/sweeper/sampler=cmaes"], "hydra/sweeper/sampler=cmaes is not an option: use one of ['grid', 'random', 'tpe']"),
    ("train", ["-m", "hydra.sweep.dir={sweep}", "hparams_search=optuna", "optim.lr=tag(log, interval(0, 1))"], "optim.lr=tag(log, interval(0, 1)) is not a search space Optuna takes: `low > 0` must hold for `log=True`"),
    ("train", ["model.dropout=abc"], HYDRA + "Value 'abc' of type 'str' could not be converted to Float"),
    ("train", ["model.dropout=1.5"], "model.dropout=1.5 is not allowed: use a number with 0 <= dropout < 1"),
    ("train", ["model.n_head=5"], "model.n_embd=32 is not divisible by model.n_head=5: with n_embd=32 use n_head in [1, 2, 4, 8"),
    ("train", ["model.n_layer=0"], "model.n_layer=0 is not allowed: use a positive integer"),
    ("train", ["model.attention=flash"], "model.attention='flash' is not allowed: use one of ['sdpa', 'manual', 'heads']"),
    ("train", ["model.compile=maybe"], HYDRA + "Value 'maybe' is not a valid bool (type str)"),
    ("train", ["+model.depth=3"], "model.depth is not a model setting"),
    ("train", ["model.block_size=200000"], "model.block_size=200000 is too long for the validation split"),
    ("train", ["optim.lr=abc"], HYDRA + "Value 'abc' of type 'str' could not be converted to Float"),
    ("train", ["optim.lr=0"], "optim.lr=0.0 is not allowed: use a positive learning rate"),
    ("train", ["optim.min_lr=1"], "optim.min_lr=1.0 is not allowed: use 0 <= min_lr <= lr"),
    ("train", ["optim.warmup_steps=abc"], HYDRA + "Value 'abc' of type 'str' could not be converted to Integer"),
    ("train", ["optim.warmup_steps=-1"], "optim.warmup_steps=-1 is not allowed: use 0 or more steps"),
    ("train", ["optim.weight_decay=-1"], "optim.weight_decay=-1.0 is not allowed"),
    ("train", ["optim.betas=[0.9]"], "optim.betas=[0.9] is not allowed: use two numbers in [0, 1)"),
    ("train", ["optim.fused=true", "trainer.precision=16-mixed"], "optim.fused=true with trainer.precision=16-mixed cannot clip gradients"),
    ("train", ["seed=abc"], HYDRA + "Value 'abc' of type 'str' could not be converted to Integer"),
    ("train", ["-m", "hydra.sweep.dir={sweep}", "optim=sgd"], "optim=sgd is not an option: use one of ['adamw', 'muon']"),
    ("train", ["optim.name=sgd"], "optim.name='sgd' is not allowed: use one of ['adamw', 'muon']"),
    ("train", ["optim.schedule=linear"], "optim.schedule='linear' is not allowed: use one of ['cosine', 'wsd']"),
    ("train", ["optim.schedule=wsd", "optim.warmdown_fraction=0"], "optim.warmdown_fraction=0.0 is not allowed: use a fraction in (0, 1]"),
    ("train", ["optim.embedding_lr=-1"], "optim.embedding_lr=-1.0 is not allowed: use a positive learning rate, or null for optim.lr"),
    ("train", ["optim.min_lr_ratio=2"], "optim.min_lr_ratio=2.0 is not allowed: use 0 <= min_lr_ratio <= 1"),
    ("train", ["optim=muon", "optim.muon_lr=0"], "optim.muon_lr=0.0 is not allowed: use a positive learning rate"),
    ("train", ["optim=muon", "optim.muon_momentum=1"], "optim.muon_momentum=1.0 is not allowed: use 0 <= momentum < 1"),
    ("train", ["optim=muon", "optim.muon_adjust_lr=spectral"], "optim.muon_adjust_lr='spectral' is not allowed: use one of ['original', 'match_rms_adamw']"),
    ("train", ["optim=adamw", "optim.muon_lr=0.05"], "optim.muon_lr is given with optim=adamw, which has no Muon: add optim=muon, or leave out optim.muon_lr"),
    ("train", ["optim=muon", "model=bigram"], "optim=muon with model.arch=bigram is not allowed: the bigram is one table"),
    ("train", ["optim=muon", "model.parametrization=mup"], "optim=muon with model.parametrization=mup is not allowed"),
    ("train", ["model.position=absolute"], "model.position='absolute' is not allowed: use one of ['learned', 'rope']"),
    ("train", ["model.position=rope", "model.n_head=32"], "model.position=rope with a head size of 1 (n_embd / n_head) is not allowed"),
    ("train", ["model.norm=rms"], "model.norm='rms' is not allowed: use one of ['layernorm', 'rmsnorm', 'none']"),
    ("train", ["model.logit_softcap=-1"], "model.logit_softcap=-1.0 is not allowed: use a positive number, or null"),
    ("train", ["model.mlp=single", "model.mlp_hidden=64"], "model.mlp_hidden=64 with model.mlp=single is not allowed"),
    ("train", ["+model.vocab_size=7"], "model.vocab_size is not a model setting"),
    ("train", ["model.vocab_size=7"], HYDRA + "Could not override 'model.vocab_size'"),
    ("train", ["model.parametrization=mip"], "model.parametrization='mip' is not allowed: use one of ['sp', 'mup']"),
    ("train", ["model.parametrization=mup", "model.base_width=33"], "model.base_width=33 is not divisible by model.n_head=2: muP keeps n_head across widths"),
    ("train", ["model.parametrization=mup", "model.init=pytorch"], "model.parametrization=mup with model.init=pytorch is not allowed: muP scales the GPT's init"),
    ("train", ["model.parametrization=mup", "model.arch=bigram"], "model.parametrization=mup with model.arch=bigram is not allowed"),
    ("train", ["flops_budget=1e6"], "flops_budget=1e+06 does not pay for one step, which costs"),
    ("train", ["flops_budget=-1"], "flops_budget=-1.0 is not allowed: use a positive number of FLOPs"),
    ("train", ["flops_budget=inf"], "flops_budget=inf is not allowed: use a positive number of FLOPs"),
    ("train", ["flops_budget=1e12", "model=bigram", "optim=adamw"], "flops_budget with model.arch=bigram is not"),
    ("train", ["data.batch_size=0"], "data.batch_size=0 is not allowed: use a positive integer"),
    ("train", ["data.train_fraction=2"], "data.train_fraction=2.0 is not allowed"),
    ("train", ["data.batch_size=many"], HYDRA + "Value 'many' of type 'str' could not be converted to Integer"),
    ("train", ["data.val_tokens=-5"], "data.val_tokens=-5 is not allowed"),
    ("train", ["data.path={binary}"], "data file {binary} is not UTF-8 text: byte 0xae at offset 4"),
    ("train", ["data.path={empty}"], "data file {empty} is empty"),
    ("train", ["data.path={folder}"], "data.path={folder} is a directory with no file matching data.glob='*.txt'"),
    ("train", ["data.path={missing}"], "data file {missing} not found: put a text file there or set data.path"),  # not Tiny Shakespeare's name: no download
    ("train", ["data.tokenizer.type=word"], "data.tokenizer.type='word' is not allowed: use one of ['char', 'bpe']"),
    ("train", ["data/tokenizer=bpe", "data.tokenizer.vocab_size=256"], "data.tokenizer.vocab_size=256 is not allowed: a byte-level BPE has the 256 bytes and at least one merge"),
    ("train", ["data/tokenizer=bpe", "data.tokenizer.vocab_size=50000", "data.path={small}"], "data.tokenizer.vocab_size=50000 is larger than the text allows: BPE learns"),
    ("train", ["data.cache_dir={blocked}/cache"], "data.cache_dir={blocked}/cache cannot be written"),
    ("prepare", ["data.path={empty}"], "data file {empty} is empty"),
    ("prepare", ["data.path={small}", "model.block_size=5000"], "model.block_size=5000 is too long for the training split of {small} (2700 tokens)"),
    ("train", ["trainer.max_steps=0"], "trainer.max_steps=0 is not allowed: use a positive number of steps"),
    ("train", ["trainer.val_check_interval=0.5"], "trainer.val_check_interval=0.5 is not allowed"),
    ("train", ["trainer.accelerator=cuda"], "trainer.accelerator=cuda is not available on this machine: use trainer.accelerator=auto or trainer.accelerator=cpu"),
    ("train", ["trainer.precision=99"], "trainer: Precision 99 is invalid. Allowed precision values:"),
    ("train", ["float32_matmul_precision=low"], "float32_matmul_precision='low' is not allowed: use auto or one of ['highest', 'high', 'medium']"),
    ("train", ["checkpoint.every_n_steps=0"], "checkpoint.every_n_steps=0 is not allowed: use a positive integer"),
    ("train", ["callbacks.rich_progress_bar.refresh_rate=0"], "callbacks.rich_progress_bar.refresh_rate=0 is not allowed: use a positive integer"),
    ("train+samples", ["callbacks.text_samples.prompt=''"], "callbacks.text_samples.prompt='' is not allowed: give at least one character"),
    ("train+samples", ["callbacks.text_samples.prompt='§'"], "callbacks.text_samples.prompt: text has 1 character not in the vocabulary: '§'"),
    ("train+samples", ["callbacks.text_samples.top_k=0"], "callbacks.text_samples.top_k=0 is not allowed"),
    ("train", ["ckpt_path={missing}"], "checkpoint {missing} not found"),
    ("train", ["init_from={missing}"], "checkpoint {missing} not found"),
    ("train", ["ckpt_path={ckpt}", "init_from={ckpt}"], "ckpt_path and init_from are both set"),
    ("train", ["experiment=finetune", "init_from=null"], "experiment=finetune needs init_from="),
    ("sample", ["ckpt_path={ckpt}", "dtype=float16"], "dtype='float16' is not allowed: use one of ['float32', 'bfloat16']"),
    ("sample", ["ckpt_path={ckpt}", "top_k=0"], "top_k=0 is not allowed: use a positive integer, or null for all tokens"),
    ("sample", ["ckpt_path={ckpt}", "max_new_tokens=-1"], "max_new_tokens=-1 is not allowed: use a positive integer"),
    ("sample", ["ckpt_path={ckpt}", "num_samples=0"], "num_samples=0 is not allowed: use a positive integer"),
    ("sample", ["ckpt_path={ckpt}", "use_cache=maybe"], HYDRA + "Value 'maybe' is not a valid bool (type str)"),
    ("sample", ["ckpt_path={ckpt}", "seed=abc"], HYDRA + "Value 'abc' of type 'str' could not be converted to Integer"),
    ("sample", [], "ckpt_path is required: give ckpt_path=..."),
    ("sample", ["ckpt_path={ckpt}", "temperature=0"], "temperature=0.0 is not allowed: use a positive number"),
    ("sample", ["ckpt_path={ckpt}", "prompt=''"], "prompt='' is not allowed"),
    ("sample", ["ckpt_path={ckpt}", "device=cuda"], "device=cuda is not available on this machine"),
    ("sample", ["ckpt_path={ckpt}", "device=banana"], "device='banana' is not a device: use auto, cpu, cuda, cuda:N or mps"),
    ("sample", ["ckpt_path={missing}"], "checkpoint {missing} not found"),
    ("sample", ["ckpt_path={ckpt}", "out_file={folder}"], "out_file={folder} is a directory: give a file name, e.g. samples.txt"),
    ("eval", ["ckpt_path={ckpt}", "batch_size=0"], "batch_size=0 is not allowed: use a positive integer"),
    ("eval", ["ckpt_path={ckpt}", "batch_size=lots"], HYDRA + "Value 'lots' of type 'str' could not be converted to Integer"),
    ("eval", ["ckpt_path={ckpt}", "precision=16-mixed"], "precision='16-mixed' is not allowed: use null (the run's own) or one of ['32-true', 'bf16-mixed']"),
    ("eval", ["ckpt_path={ckpt}", "data.path={missing}"], "data.path={missing} not found"),
    ("eval", ["ckpt_path={ckpt}", "data.path={binary}"], "is not UTF-8 text"),
    ("eval", ["ckpt_path={ckpt}", "device=cuda"], "device=cuda is not available on this machine"),
    ("eval", ["ckpt_path={empty}"], "is not a readable checkpoint"),
    ("compare", ["{missing}"], "{missing} is not a directory"),
    ("compare", ["{folder}"], "no run directories (with a .hydra/ folder) under {folder}"),
    ("compare", ["{run}", "--fit"], "--fit: 1 point (sizes with a finished run), and the law E + (N_c/N)^alpha has 3 parameters: give at least 3"),
    ("compare", ["{run}", "--predict", "1e6"], "--predict needs --fit"),
    ("compare", ["{run}", "--fit", "--predict", "-5"], "--predict -5 is not allowed: give a positive number"),
    ("compare", ["{run}", "--fit", "--tokens", "1e6"], "--tokens goes with --predict"),
    ("compare", ["{run}", "--fit", "--json"], "--json and --csv print the runs table alone: leave out --fit and --best-per"),
    ("compare", ["{run}", "--best-per", "model.dropout"], "--best-per model.dropout: no finished run has the override model.dropout="),
    ("convert", ["from_nanogpt", "{missing}", "{missing}", "{folder}/out.ckpt"], "{missing} not found"),
    ("convert", ["to_nanogpt", "{ckpt}", "{folder}/ckpt.pt", "{folder}/meta.pkl"], "nanoGPT's model has"),
    ("bench", [*TINY, "data.path={shakespeare}", "bench.rounds=0"], "bench.rounds=0 is not allowed: use an integer >= 1"),
    ("bench", [*TINY, "data.path={shakespeare}", "bench.parts=[train,fast]"], "bench.parts has 'fast': use any of"),
    ("bench", [*TINY, "data.path={shakespeare}", "trainer.precision=16-mixed"], "trainer.precision=16-mixed is not benchmarked: use 32-true or bf16-mixed"),
    ("bench", [*TINY, "data.path={shakespeare}", "trainer.devices=2"], "trainer.devices=2 is not benchmarked: the bench measures one device"),
    ("bench", [*TINY, "data.path={shakespeare}", "bench.parts=[coord]", "bench.coord.seeds=0"], "bench.coord: seeds=0, steps=3, widths=[64, 128, 256, 512] is not allowed: use seeds >= 1"),
    ("bench", [*TINY, "data.path={shakespeare}", "bench.parts=[coord]", "bench.coord.widths=[64,65]"], "model.n_embd=65 is not divisible by model.n_head=2"),
    ("bench", [*TINY, "data.path={shakespeare}", "bench.rounds=some"], HYDRA + "Value 'some' of type 'str' could not be converted to Integer"),
]  # fmt: skip


# the cases that also run through the real command line, one an entry point (and for train a
# value Hydra refuses as well as one gptlab refuses): by their arguments
THROUGH_THE_CLI = {
    ("train", "model.n_head=5"),
    ("train", "model.dropout=abc"),
    ("sample", ""),
    ("eval", "ckpt_path={empty}"),
    ("prepare", "data.path={empty}"),
    ("compare", "{missing}"),
    ("convert", "to_nanogpt {ckpt} {folder}/ckpt.pt {folder}/meta.pkl"),
    ("bench", " ".join([*TINY, "data.path={shakespeare}", "bench.rounds=0"])),
}


def through_the_cli(case: int) -> bool:
    entry, arguments, _ = CASES[case]
    return (entry, " ".join(arguments)) in THROUGH_THE_CLI


@pytest.fixture(scope="module")
def files(tmp_path_factory, trained_run: Path) -> dict[str, str]:
    folder = tmp_path_factory.mktemp("bad")
    (folder / "binary.dat").write_bytes(b"text\xae\x00\x01")
    (folder / "empty.txt").write_text("")
    (folder / "small.txt").write_text(SHAKESPEARE.read_text()[:3000])
    (folder / "blocked").write_text("a file, where a folder would be")
    (folder / "empty-folder").mkdir()
    return {
        "binary": str(folder / "binary.dat"),
        "empty": str(folder / "empty.txt"),
        "small": str(folder / "small.txt"),
        "blocked": str(folder / "blocked"),
        "folder": str(folder / "empty-folder"),
        "missing": str(folder / "missing.ckpt"),
        "ckpt": str(trained_run / "checkpoints" / "last.ckpt"),
        "run": str(trained_run),
        "shakespeare": str(SHAKESPEARE),
        "sweep": str(folder / "sweep"),
    }


def full_arguments(entry: str, arguments: list[str], run_dir: Path) -> list[str]:
    """The arguments as the table's entry point takes them: a training run gets the tiny model,
    into run_dir, on Tiny Shakespeare unless the case names its data."""
    if entry.startswith("train"):
        tiny = WITH_SAMPLES if entry == "train+samples" else TINY
        if any(a.startswith("flops_budget=") for a in arguments):  # the budget sets the steps
            tiny = [o for o in tiny if not o.startswith("trainer.max_steps=")]
        common = [f"hydra.run.dir={run_dir}", *tiny]
        if not any(a.startswith("data.path=") for a in arguments):
            common.append(f"data.path={SHAKESPEARE}")
        return common + arguments
    if entry == "bench":
        return [f"hydra.run.dir={run_dir}", *arguments]
    return arguments


# each Hydra entry point's config, and the step of it that checks everything before any work
STEPS = {
    "train": ("config", train.build_run),
    "train+samples": ("config", train.build_run),
    "prepare": ("prepare", lambda cfg: prepare.prepare(cfg, progress=False)),
    "sample": ("sample", sample.load),
    "eval": ("eval", evaluate.load),
    "bench": ("bench", config.check_bench_settings),
}


def in_process(entry: str, arguments: list[str], run_dir: Path) -> str:
    """What the entry point says when it fails on these arguments: its one line (`error: ...`),
    or Hydra's message (HYDRA + it) when the composition refuses them. A multirun (-m) is the
    entry point's main() here, whose launcher decides before any job starts."""
    if "-m" in arguments:
        overrides = [a for a in full_arguments(entry, arguments, run_dir) if a != "-m"]
        result = conftest.run_here(entry, "-m", *overrides)  # Hydra's parser takes flags first
        assert result.returncode == 1, result.stdout + result.stderr
        return result.stderr.strip().splitlines()[-1]
    arguments = [a for a in full_arguments(entry, arguments, run_dir) if not a.startswith("hydra.")]
    try:
        if entry in ("compare", "convert"):
            (compare if entry == "compare" else convert).main(arguments)
        else:
            config_name, step = STEPS[entry]
            if entry.startswith("train"):
                arguments.append("logger=csv")  # no wandb run for a run that never starts
            try:
                cfg = composed(config_name, arguments, run_dir)
            except (HydraException, OmegaConfBaseException) as err:
                return HYDRA + " ".join(f"{err} {err.__cause__ or ''}".split())
            with cli.errors_in_one_line():
                step(cfg)
    except SystemExit as exit:
        return str(exit.code)
    raise AssertionError(f"{entry} {arguments}: no error")


def skip_where_cuda_is(expected: str) -> None:
    """The cases that ask for CUDA on a machine without it mean nothing on a GPU machine."""
    if "cuda is not available" in expected and torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU")


@pytest.mark.parametrize("case", range(len(CASES)), ids=lambda c: " ".join(CASES[c][1])[:60])
def test_bad_input_is_refused_in_one_line(files: dict[str, str], tmp_path: Path, case: int) -> None:
    entry, arguments, expected = CASES[case]
    skip_where_cuda_is(expected)
    said = in_process(entry, [a.format(**files) for a in arguments], tmp_path / "run")
    expected = expected.format(**files)
    if expected.startswith(HYDRA):
        assert said.startswith(HYDRA) and expected.removeprefix(HYDRA) in said, said
        key = arguments[-1].split("=")[0].lstrip("+") if arguments else "ckpt_path"
        assert key in said, said  # Hydra names the key
    else:
        assert said.startswith("error: ") and expected in said and "\n" not in said, said
    assert not (tmp_path / "run" / "checkpoints").exists()  # no training step ran


@pytest.mark.parametrize(
    "case", [c for c in range(len(CASES)) if through_the_cli(c)], ids=lambda c: " ".join(CASES[c][1])[:60]
)
def test_bad_input_on_the_command_line(files: dict[str, str], tmp_path: Path, case: int) -> None:
    entry, arguments, expected = CASES[case]
    skip_where_cuda_is(expected)
    run_dir = tmp_path / "run"
    arguments = full_arguments(entry, [a.format(**files) for a in arguments], run_dir)
    if entry == "train":
        command = [sys.executable, "-m", "gptlab." + entry, *arguments]
        proc = subprocess.run(
            command, cwd=REPO_ROOT, env=offline_env(), capture_output=True, text=True, timeout=300
        )
    else:
        proc = conftest.run_here(entry, *arguments)
    expected = expected.format(**files)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stdout + proc.stderr
    if expected.startswith(HYDRA):
        assert expected.removeprefix(HYDRA) in proc.stderr and "HYDRA_FULL_ERROR=1" in proc.stderr
    else:
        last = proc.stderr.strip().splitlines()[-1]
        assert last.startswith("error: ") and expected in last, proc.stderr
        assert sum(line.startswith("error: ") for line in proc.stderr.splitlines()) == 1
    assert not (run_dir / "checkpoints").exists()  # no training step ran
    assert not (run_dir / "summary.json").exists()


def test_the_table_covers_every_entry_point() -> None:
    assert len(CASES) >= 30
    entries = {entry.split("+")[0] for entry, _, _ in CASES}
    assert entries == {"train", "sample", "eval", "compare", "convert", "bench", "prepare"}
    assert {entry.split("+")[0] for entry, _ in THROUGH_THE_CLI} == entries
    assert sum(through_the_cli(case) for case in range(len(CASES))) == len(
        THROUGH_THE_CLI
    )  # each names a case


def test_missing_data_file_without_network(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "input.txt"
    # port 9 (discard) on loopback refuses at once: the download fails like it does offline
    said = in_process(
        "train", [f"data.path={missing}", "data.url=http://127.0.0.1:9/input.txt"], tmp_path / "run"
    )
    assert said.startswith(f"error: data file {missing} not found") and f"put the file at {missing}" in said
    assert not missing.exists()


def test_unknown_config_option_uses_hydras_message(tmp_path: Path) -> None:
    said = in_process("train", ["model=transformerxl"], tmp_path / "run")
    assert said.startswith(HYDRA) and "Could not find 'model/transformerxl'" in said
    assert "Available options" in said


def test_full_error_shows_the_traceback(tmp_path: Path) -> None:
    result = conftest.train(tmp_path / "run", *TINY, "model.n_head=5", env={"HYDRA_FULL_ERROR": "1"})
    assert result.returncode != 0
    assert "Traceback" in result.stderr and "model.n_head=5" in result.stderr


def test_a_bug_shows_its_traceback_and_a_sweep_records_its_job_as_crashed(
    tmp_path: Path, shakespeare: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a TypeError where the run is built is gptlab's bug, not bad input: never one line
    def planted(*args: object, **kwargs: object) -> None:
        raise TypeError("planted bug")

    monkeypatch.setattr(GPT, "__init__", planted)
    result = conftest.train_here(tmp_path / "run", *TINY, "logger=none")
    assert result.returncode == 1 and "Traceback" in result.stderr  # (Hydra's, shortened)
    assert "TypeError: planted bug" in result.stderr and "error: planted bug" not in result.stderr

    sweep_dir = tmp_path / "sweep"
    result = conftest.sweep_here(sweep_dir, *TINY, "logger=none", "seed=1,2")
    assert result.returncode == 0, result.stderr[-3000:]  # the sweep went on to its last job
    for job in ("0", "1"):
        error = conftest.read_summary(sweep_dir / job)["error"]
        assert error == "crashed: TypeError: planted bug (the traceback is in this job's log)"
        log = (sweep_dir / job / "train.log").read_text()
        assert "Traceback" in log and 'raise TypeError("planted bug")' in log
    shown = json.loads(conftest.run_here("compare", str(sweep_dir), "--json", "--runs").stdout)
    assert [row["error"].split(":")[0] for row in shown] == ["crashed", "crashed"]
