# ruff: noqa: E501  (the table reads best one case a line)
"""Bad input, everywhere: one line naming the value and what is allowed, a non-zero exit, no
traceback, and no training step (nothing written where a run would write)."""

import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT, SHAKESPEARE, TINY, offline_env, train

WITH_SAMPLES = [o for o in TINY if not o.startswith("callbacks.text_samples")]

# (entry point, arguments, what the error line must say); {placeholders} are files made below
CASES = [
    ("train", ["-m", "hydra.sweep.dir={sweep}", "hydra/launcher=parallel"], "hydra.launcher.devices=null takes every visible GPU, and there is none here: give the slots to share, e.g. hydra.launcher.devices=[0,1]"),
    ("train", ["-m", "hydra.sweep.dir={sweep}", "hydra/launcher=parallel", "hydra.launcher.devices=[0,1]", "trainer.devices=1,3"], "trainer.devices=3 (job #1) is more than the 2 devices of hydra.launcher.devices=[0, 1]"),
    ("train", ["model.dropout=abc"], "model.dropout='abc' is not allowed: use a number with 0 <= dropout < 1"),
    ("train", ["model.n_head=5"], "model.n_embd=32 is not divisible by model.n_head=5: with n_embd=32 use n_head in [1, 2, 4, 8"),
    ("train", ["model.n_layer=0"], "model.n_layer=0 is not allowed: use a positive integer"),
    ("train", ["model.attention=flash"], "model.attention='flash' is not allowed: use one of ['sdpa', 'manual', 'heads']"),
    ("train", ["model.compile=maybe"], "model.compile='maybe' is not allowed: use true or false"),
    ("train", ["+model.depth=3"], "model.depth is not a model setting"),
    ("train", ["model.block_size=200000"], "model.block_size=200000 is too long for the validation split"),
    ("train", ["optim.lr=abc"], "optim.lr='abc' is not allowed: use a positive learning rate"),
    ("train", ["optim.min_lr=1"], "optim.min_lr=1 is not allowed: use 0 <= min_lr <= lr"),
    ("train", ["optim.warmup_steps=abc"], "optim.warmup_steps='abc' is not allowed: use 0 or more steps"),
    ("train", ["optim.weight_decay=-1"], "optim.weight_decay=-1 is not allowed"),
    ("train", ["optim.betas=[0.9]"], "optim.betas=[0.9] is not allowed: use two numbers in [0, 1)"),
    ("train", ["optim.fused=true", "trainer.precision=16-mixed"], "optim.fused=true with trainer.precision=16-mixed cannot clip gradients"),
    ("train", ["seed=abc"], "seed='abc' is not allowed: use an integer"),
    ("train", ["data.batch_size=0"], "data.batch_size=0 is not allowed: use a positive integer"),
    ("train", ["data.train_fraction=2"], "data.train_fraction=2 is not allowed"),
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
    ("sample", ["ckpt_path={ckpt}", "temperature=0"], "temperature=0 is not allowed: use a positive number"),
    ("sample", ["ckpt_path={ckpt}", "prompt=''"], "prompt='' is not allowed"),
    ("sample", ["ckpt_path={ckpt}", "device=cuda"], "device=cuda is not available on this machine"),
    ("sample", ["ckpt_path={ckpt}", "device=banana"], "device='banana' is not a device: use auto, cpu, cuda, cuda:N or mps"),
    ("sample", ["ckpt_path={missing}"], "checkpoint {missing} not found"),
    ("sample", ["ckpt_path={ckpt}", "out_file={folder}/no/such/dir/out.txt"], "No such file or directory"),
    ("eval", ["ckpt_path={ckpt}", "batch_size=0"], "batch_size=0 is not allowed: use a positive integer"),
    ("eval", ["ckpt_path={ckpt}", "precision=16-mixed"], "precision='16-mixed' is not allowed: use null (the run's own) or one of ['32-true', 'bf16-mixed']"),
    ("eval", ["ckpt_path={ckpt}", "data.path={missing}"], "data.path={missing} not found"),
    ("eval", ["ckpt_path={ckpt}", "data.path={binary}"], "is not UTF-8 text"),
    ("eval", ["ckpt_path={ckpt}", "device=cuda"], "device=cuda is not available on this machine"),
    ("eval", ["ckpt_path={empty}"], "is not a readable checkpoint"),
    ("compare", ["{missing}"], "{missing} is not a directory"),
    ("compare", ["{folder}"], "no run directories (with a .hydra/ folder) under {folder}"),
    ("convert", ["from_nanogpt", "{missing}", "{missing}", "{folder}/out.ckpt"], "{missing} not found"),
    ("convert", ["to_nanogpt", "{ckpt}", "{folder}/ckpt.pt", "{folder}/meta.pkl"], "nanoGPT's model has"),
    ("bench", [*TINY, "data.path={shakespeare}", "bench.rounds=0"], "bench.rounds=0 is not allowed: use an integer >= 1"),
]  # fmt: skip


@pytest.fixture(scope="module")
def files(tmp_path_factory, shakespeare) -> dict[str, str]:
    folder = tmp_path_factory.mktemp("bad")
    (folder / "binary.dat").write_bytes(b"text\xae\x00\x01")
    (folder / "empty.txt").write_text("")
    (folder / "small.txt").write_text(shakespeare.read_text()[:3000])
    (folder / "blocked").write_text("a file, where a folder would be")
    run = folder / "trained"
    result = train(run, *TINY, "trainer.max_steps=15", "logger=none")
    assert result.returncode == 0, result.stderr
    return {
        "binary": str(folder / "binary.dat"),
        "empty": str(folder / "empty.txt"),
        "small": str(folder / "small.txt"),
        "blocked": str(folder / "blocked"),
        "folder": str(folder / "empty-folder"),
        "missing": str(folder / "missing.ckpt"),
        "ckpt": str(run / "checkpoints" / "last.ckpt"),
        "shakespeare": str(SHAKESPEARE),
        "sweep": str(folder / "sweep"),
    }


def command(entry: str, arguments: list[str], run_dir: Path) -> list[str]:
    if entry.startswith("train"):
        common = [f"hydra.run.dir={run_dir}", *(WITH_SAMPLES if entry == "train+samples" else TINY)]
        if not any(a.startswith("data.path=") for a in arguments):
            common.append(f"data.path={SHAKESPEARE}")
        arguments = common + arguments
    elif entry == "bench":
        arguments = [f"hydra.run.dir={run_dir}", *arguments]
    flags = [a for a in arguments if a == "-m"]  # before the overrides, for Hydra's argument parser
    arguments = [a for a in arguments if a != "-m"]
    return [sys.executable, "-m", "gptlab." + entry.split("+")[0], *flags, *arguments]


@pytest.fixture(scope="module")
def outcomes(files: dict[str, str], tmp_path_factory) -> list[tuple[subprocess.CompletedProcess, Path]]:
    """Every case run for real, a few at a time: most of each is Python importing torch."""
    folder = tmp_path_factory.mktemp("runs")
    Path(files["folder"]).mkdir()

    def run(case: int) -> tuple[subprocess.CompletedProcess, Path]:
        entry, arguments, _ = CASES[case]
        run_dir = folder / str(case)
        proc = subprocess.run(
            command(entry, [a.format(**files) for a in arguments], run_dir),
            cwd=REPO_ROOT,
            env=offline_env(),
            capture_output=True,
            text=True,
            timeout=300,
        )
        return proc, run_dir

    with ThreadPoolExecutor(max_workers=3) as pool:
        return list(pool.map(run, range(len(CASES))))


@pytest.mark.parametrize("case", range(len(CASES)), ids=[" ".join(c[1])[:60] for c in CASES])
def test_bad_input_is_one_line(outcomes, files: dict[str, str], case: int) -> None:
    proc, run_dir = outcomes[case]
    assert proc.returncode != 0
    assert "Traceback" not in proc.stdout + proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and CASES[case][2].format(**files) in last, proc.stderr
    assert sum(line.startswith("error: ") for line in proc.stderr.splitlines()) == 1
    assert not (run_dir / "checkpoints").exists()  # no training step ran
    assert not (run_dir / "summary.json").exists()


def test_the_table_covers_every_entry_point() -> None:
    assert len(CASES) >= 30
    assert {entry.split("+")[0] for entry, _, _ in CASES} == {
        "train",
        "sample",
        "eval",
        "compare",
        "convert",
        "bench",
        "prepare",
    }


def test_missing_data_file_without_network(run_train, tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "input.txt"
    # port 9 (discard) on loopback refuses at once: the download fails like it does offline
    result = run_train(*TINY, f"data.path={missing}", "data.url=http://127.0.0.1:9/input.txt")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    error = result.stderr.strip().splitlines()[-1]
    assert error.startswith(f"error: data file {missing} not found") and f"put the file at {missing}" in error
    assert not missing.exists() and not (result.run_dir / "checkpoints").exists()


def test_unknown_config_option_uses_hydras_message(run_train) -> None:
    result = run_train("model=transformerxl")
    assert result.returncode != 0
    assert "Could not find 'model/transformerxl'" in result.stderr
    assert "Available options" in result.stderr
    assert not (result.run_dir / "checkpoints").exists()


def test_full_error_shows_the_traceback(run_train, monkeypatch) -> None:
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")
    result = run_train(*TINY, "model.n_head=5")
    assert result.returncode != 0
    assert "Traceback" in result.stderr and "model.n_head=5" in result.stderr
