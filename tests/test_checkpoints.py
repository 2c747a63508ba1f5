"""Checkpoints: sampling from them, resuming exactly, fine-tuning, loading nothing but data. The
entry points run in this process (tests.conftest.run_here), from the folder a test names."""

import json
import os
import re
from pathlib import Path

import pytest
import torch

from gptlab.checkpoint import find_checkpoint, load_checkpoint
from tests.conftest import TINY, AuditedRun, Result, read_summary, run_here, train_here


def sample(*overrides: str, cwd: Path) -> Result:
    """`python -m gptlab.sample`, run from cwd (in this process: see tests.conftest.run_here)."""
    return run_here("sample", *overrides, cwd=cwd)


@pytest.mark.slow
def test_sample_from_a_run_directory_without_the_data(trained_run: Path, tmp_path: Path) -> None:
    # run from an empty folder: no data file, no conf/ nearby; the checkpoint is all it needs
    out = tmp_path / "new" / "samples.txt"  # its folder is made, as eval makes its out_file's
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
    assert len(set(samples)) == 3
    speed = proc.stderr.strip().splitlines()[-1]
    assert re.fullmatch(
        r"150 tokens in [\d.]+ s: [\d,]+ tokens/s \(3 samples as one batch on cpu in float32, "
        r"KV cache on\)",
        speed,
    ), speed
    assert [p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file()] == [
        out.relative_to(tmp_path)
    ]  # no logs or run dirs
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


def final_val_loss(run_dir: Path) -> float:
    return read_summary(run_dir)["final_val_loss"]


@pytest.mark.slow
def test_checkpoints_are_written_beside_their_place_then_renamed(audited_run: AuditedRun) -> None:
    """A checkpoint appears whole or not at all: written in its own folder, then renamed into
    place, an atomic step. Lightning's own writer stages it in the system's temporary folder
    and moves it from there, a copy when that is another file system."""
    run_dir = audited_run.run_dir
    into_checkpoints = [(s, d) for s, d in audited_run.renames if d.suffix == ".ckpt"]
    checkpoints = sorted((run_dir / "checkpoints").glob("*.ckpt"))
    assert len(checkpoints) == 2  # last.ckpt and the best one
    assert {d for _, d in into_checkpoints} >= set(checkpoints)
    assert all(source.parent == target.parent for source, target in into_checkpoints)
    assert not list((run_dir / "checkpoints").glob(".*partial"))  # nothing left half-written


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
    tuned = train_here(tmp_path / "tuned", "experiment=finetune", f"init_from={trained_run}", *common)
    assert tuned.returncode == 0, tuned.stderr
    fresh = train_here(tmp_path / "fresh", "experiment=finetune", *common, "init_from=null")
    assert fresh.returncode == 1 and "experiment=finetune needs init_from" in fresh.stderr
    scratch = train_here(tmp_path / "scratch", *TINY, *common)
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
    result = train_here(
        tmp_path / "run", "experiment=finetune", f"init_from={trained_run}", f"data.path={text}"
    )
    assert result.returncode == 1 and "Traceback" not in result.stderr
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


@pytest.mark.slow
def test_a_bpe_run_samples_evaluates_and_fine_tunes_from_its_checkpoint_alone(
    tmp_path: Path, shakespeare: Path
) -> None:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "a.txt").write_text(shakespeare.read_text()[:150_000])
    (corpus / "b.txt").write_text(shakespeare.read_text()[150_000:200_000])
    run = tmp_path / "run"
    bpe = ["data/tokenizer=bpe", "data.tokenizer.vocab_size=384", "logger=csv"]
    result = train_here(run, *TINY, *bpe, f"data.path={corpus}")
    assert result.returncode == 0, result.stderr
    summary = read_summary(run)
    hparams = load_checkpoint(summary["best_ckpt"])["hyper_parameters"]
    assert hparams["tokenizer"]["type"] == "bpe" and hparams["model"]["vocab_size"] == 384
    assert 0 < summary["best_val_bpc"] < summary["best_val_loss"]  # bits per character, not per token
    # scored again on its own validation set (the prepared corpus, found by the checkpoint's tokenizer)
    proc = run_here("eval", f"ckpt_path={summary['last_ckpt']}")
    assert proc.returncode == 0, proc.stderr
    figures = dict(line.split() for line in proc.stdout.splitlines()[1:])
    assert float(figures["val_loss"]) == pytest.approx(summary["final_val_loss"], abs=1e-4)
    assert float(figures["bits_per_char"]) == pytest.approx(summary["final_val_bpc"], abs=1e-4)
    (corpus / "a.txt").rename(tmp_path / "away.txt")  # the training text is gone

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    proc = sample(f"ckpt_path={run}", "prompt='Größe 🎭'", "max_new_tokens=40", cwd=elsewhere)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("Größe 🎭") and len(proc.stdout) > len("Größe 🎭") + 10

    text = elsewhere / "other.txt"
    text.write_text(shakespeare.read_text()[-3000:] + "\nGrüße aus Köln! 東京")  # unseen characters encode
    proc = run_here("eval", f"ckpt_path={run}", f"data.path={text}", cwd=elsewhere)
    assert proc.returncode == 0, proc.stderr
    figures = dict(line.split() for line in proc.stdout.splitlines()[1:])
    assert float(figures["val_loss"]) > float(figures["bits_per_char"]) > 0

    tuned = train_here(
        tmp_path / "tuned",
        "experiment=finetune",
        f"init_from={run}",
        f"data.path={text}",
        *TINY[4:],
        "logger=csv",
    )
    assert tuned.returncode == 0, tuned.stderr
    tuned_hparams = load_checkpoint(read_summary(tmp_path / "tuned")["last_ckpt"])["hyper_parameters"]
    assert tuned_hparams["tokenizer"] == hparams["tokenizer"]  # the checkpoint's BPE, not a new one


@pytest.mark.slow
def test_checkpoints_from_before_tokenizer_types_still_sample(trained_run: Path, tmp_path: Path) -> None:
    checkpoint = load_checkpoint(find_checkpoint(trained_run))
    checkpoint["hyper_parameters"]["tokenizer"].pop("type")  # as gptlab wrote them: {"chars": ...}
    old = tmp_path / "old.ckpt"
    torch.save(checkpoint, old)
    proc = sample(f"ckpt_path={old}", "prompt=ROMEO:", "max_new_tokens=20", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("ROMEO:") and len(proc.stdout.rstrip("\n")) == len("ROMEO:") + 20
