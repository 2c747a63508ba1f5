"""Checkpoints: sampling from them, resuming exactly, fine-tuning, loading nothing but data."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from gptlab.checkpoint import find_checkpoint, load_checkpoint
from tests.conftest import REPO_ROOT, TINY, offline_env, read_summary, train, train_command


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, shakespeare) -> Path:
    run_dir = tmp_path_factory.mktemp("trained") / "run"
    result = train(run_dir, *TINY, "trainer.max_steps=60", "optim.lr=1e-2", "logger=csv")
    assert result.returncode == 0, result.stderr
    return run_dir


def sample(*overrides: str, cwd: Path) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "gptlab.sample", *overrides]
    env = offline_env() | {"PYTHONPATH": str(REPO_ROOT)}
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.slow
def test_sample_from_a_run_directory_without_the_data(trained_run: Path, tmp_path: Path) -> None:
    # run from an empty folder: no data file, no conf/ nearby; the checkpoint is all it needs
    out = tmp_path / "samples.txt"
    proc = sample(
        f"ckpt_path={trained_run}",
        "prompt=ROMEO:",
        "max_new_tokens=50",
        "num_samples=3",
        f"out_file={out}",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    samples = proc.stdout.rstrip("\n").split("\n---------------\n")
    assert len(samples) == 3
    assert all(s.startswith("ROMEO:") and len(s) == len("ROMEO:") + 50 for s in samples)
    assert out.read_text() == proc.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["samples.txt"]  # no logs or run dirs
    # the same seed gives the same text, with the KV cache or without
    again = sample(
        f"ckpt_path={trained_run}", "prompt=ROMEO:", "max_new_tokens=50", "num_samples=3", cwd=tmp_path
    )
    uncached = sample(
        f"ckpt_path={trained_run}",
        "prompt=ROMEO:",
        "max_new_tokens=50",
        "num_samples=3",
        "use_cache=false",
        cwd=tmp_path,
    )
    assert again.stdout == uncached.stdout == proc.stdout


@pytest.mark.slow
def test_sample_refuses_a_prompt_outside_the_vocabulary(trained_run: Path, tmp_path: Path) -> None:
    proc = sample(f"ckpt_path={trained_run}", "prompt='ROMEO: ü€'", cwd=tmp_path)
    assert proc.returncode == 1
    assert proc.stderr.strip() == "error: text has 2 characters not in the vocabulary: 'ü', '€'"


class RunsCode:
    """A pickled object whose loading would run a shell command."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_unsafe_broken_and_foreign_files_are_refused_in_one_line(tmp_path: Path) -> None:
    marker = tmp_path / "code-ran"
    torch.save(
        {"state_dict": {}, "hyper_parameters": {}, "payload": RunsCode(marker)}, tmp_path / "evil.ckpt"
    )
    torch.save([1, 2, 3], tmp_path / "list.ckpt")
    torch.save({"state_dict": {"w": torch.zeros(3)}, "hyper_parameters": {}}, tmp_path / "ok.ckpt")
    (tmp_path / "truncated.ckpt").write_bytes((tmp_path / "ok.ckpt").read_bytes()[:200])
    (tmp_path / "text.ckpt").write_text("not a checkpoint")
    cases = {
        "evil.ckpt": "refusing to load",
        "list.ckpt": "is not a gptlab checkpoint",
        "truncated.ckpt": "is not a readable checkpoint",
        "text.ckpt": "is not a readable checkpoint",
        "missing.ckpt": "not found",
    }
    for name, message in cases.items():
        proc = sample(f"ckpt_path={tmp_path / name}", cwd=tmp_path)
        assert proc.returncode == 1, name
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], (name, proc.stderr)
    assert not marker.exists()  # nothing was executed
    assert load_checkpoint(tmp_path / "ok.ckpt")["state_dict"]["w"].shape == (3,)


def kill_once_checkpointed(run_dir: Path, overrides: list[str], then_wait: float = 0.0) -> Path:
    """Starts a training run, waits for its first last.ckpt (and then_wait seconds more), and
    kills it with SIGKILL; returns last.ckpt's path."""
    last = run_dir / "checkpoints" / "last.ckpt"
    proc = subprocess.Popen(
        train_command(run_dir, *overrides),
        cwd=REPO_ROOT,
        env=offline_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    while not last.exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.02)
    time.sleep(then_wait)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL  # killed, not finished
    return last


def final_val_loss(run_dir: Path) -> float:
    return read_summary(run_dir)["final_val_loss"]


@pytest.mark.slow
def test_a_killed_run_resumes_exactly(tmp_path: Path, shakespeare: Path) -> None:
    overrides = [
        *TINY,
        "model.dropout=0.1",  # dropout draws random numbers: resuming must draw the same ones
        "trainer.max_steps=150",
        "trainer.val_check_interval=50",
        "checkpoint.every_n_steps=10",
        "logger=csv",
    ]
    whole = train(tmp_path / "whole", *overrides)
    assert whole.returncode == 0, whole.stderr

    killed_dir = tmp_path / "killed"
    last = kill_once_checkpointed(killed_dir, overrides)
    assert not (killed_dir / "summary.json").exists()
    killed_at = load_checkpoint(last)["global_step"]
    assert 10 <= killed_at < 150

    resumed = train(tmp_path / "resumed", *overrides, f"ckpt_path={last}")
    assert resumed.returncode == 0, resumed.stderr
    assert read_summary(tmp_path / "resumed")["steps"] == 150
    assert final_val_loss(tmp_path / "resumed") == pytest.approx(final_val_loss(tmp_path / "whole"), abs=1e-4)


@pytest.mark.slow
def test_a_kill_while_writing_never_leaves_a_broken_last_checkpoint(
    tmp_path: Path, shakespeare: Path
) -> None:
    # a checkpoint every step, of a model big enough that writing it is most of the step
    overrides = [
        "model.n_layer=4",
        "model.n_embd=256",
        "model.block_size=16",
        "data.batch_size=4",
        "trainer.max_steps=1000",
        "trainer.val_check_interval=1000",
        "checkpoint.every_n_steps=1",
        "logger=none",
    ]
    last = kill_once_checkpointed(tmp_path / "run", overrides, then_wait=1.0)  # some steps, and writes, later
    assert load_checkpoint(last)["global_step"] >= 1


@pytest.mark.slow
def test_fine_tuning_starts_from_the_checkpoint(trained_run: Path, tmp_path: Path, shakespeare: Path) -> None:
    text = tmp_path / "mine.txt"
    text.write_text(shakespeare.read_text()[:20_000].replace("z", ""))  # fewer characters than 65
    common = [
        f"data.path={text}",
        *TINY[4:],
        "trainer.max_steps=10",
        "trainer.val_check_interval=10",
        "logger=csv",
    ]
    tuned = train(tmp_path / "tuned", "experiment=finetune", f"init_from={trained_run}", *common)
    assert tuned.returncode == 0, tuned.stderr
    fresh = train(tmp_path / "fresh", "experiment=finetune", *common, "init_from=null")
    assert fresh.returncode == 1 and "experiment=finetune needs init_from" in fresh.stderr
    scratch = train(tmp_path / "scratch", *TINY, *common)
    assert scratch.returncode == 0, scratch.stderr

    tuned_ckpt = load_checkpoint(tmp_path / "tuned" / "checkpoints" / "last.ckpt")
    pretrained = load_checkpoint(trained_run / "checkpoints" / "last.ckpt")
    assert (
        tuned_ckpt["hyper_parameters"]["tokenizer"] == pretrained["hyper_parameters"]["tokenizer"]
    )  # 65 chars kept
    assert (
        tuned_ckpt["hyper_parameters"]["model"]["n_embd"] == pretrained["hyper_parameters"]["model"]["n_embd"]
    )
    assert tuned_ckpt["global_step"] == 10  # a fresh optimizer and step count
    # ten steps at lr 1e-4 from the pretrained weights beat ten steps from scratch by far
    assert final_val_loss(tmp_path / "tuned") < final_val_loss(tmp_path / "scratch") - 0.3


@pytest.mark.slow
def test_fine_tuning_refuses_text_outside_the_vocabulary(trained_run: Path, tmp_path: Path) -> None:
    text = tmp_path / "mine.txt"
    text.write_text("Grüße aus Köln! " * 100 + "".join(chr(0x4E00 + i) for i in range(30)))
    result = train(tmp_path / "run", "experiment=finetune", f"init_from={trained_run}", f"data.path={text}")
    assert result.returncode == 1 and result.seconds < 15
    error = result.stderr.strip().splitlines()[-1]
    assert error.startswith(
        f"error: data file {text} has 33 characters not in the vocabulary: 'ß', 'ö', 'ü', "
    )
    assert error.endswith("and 13 more")  # at most 20 listed
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_a_run_directory_names_its_best_checkpoint(tmp_path: Path) -> None:
    checkpoints = tmp_path / "checkpoints"
    checkpoints.mkdir()
    assert_raises = pytest.raises(FileNotFoundError, match="no checkpoint in run directory")
    with assert_raises:
        find_checkpoint(tmp_path)
    (checkpoints / "last.ckpt").touch()
    assert find_checkpoint(tmp_path) == checkpoints / "last.ckpt"  # a run killed before its first validation
    (checkpoints / "step000500-val_loss2.1000.ckpt").touch()
    assert find_checkpoint(tmp_path) == checkpoints / "step000500-val_loss2.1000.ckpt"
    (tmp_path / "summary.json").write_text(json.dumps({"best_ckpt": str(tmp_path / "elsewhere.ckpt")}))
    assert find_checkpoint(tmp_path) == tmp_path / "elsewhere.ckpt"  # summary.json says which
    assert find_checkpoint(checkpoints / "last.ckpt") == checkpoints / "last.ckpt"
