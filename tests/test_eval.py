"""gptlab.eval: a checkpoint scored on its run's validation set, or on any text file."""

import json
import math
from pathlib import Path

import pytest

from gptlab.checkpoint import load_checkpoint
from tests.conftest import TINY, read_summary, run_here, train_here


@pytest.mark.slow
def test_eval_reproduces_the_runs_val_loss_at_any_batch_size(tmp_path: Path, shakespeare: Path) -> None:
    run = tmp_path / "run"
    result = train_here(run, *TINY, "data.val_tokens=1000", "logger=none")  # 1000 = 62 windows of 16, and 8
    assert result.returncode == 0, result.stderr
    summary = read_summary(run)
    figures = []
    for batch_size in (1, 64):
        out = tmp_path / f"eval-{batch_size}.json"
        proc = run_here(
            "eval", f"ckpt_path={run}/checkpoints/last.ckpt", f"batch_size={batch_size}", f"out_file={out}"
        )
        assert proc.returncode == 0, proc.stderr
        figures.append(json.loads(out.read_text()))
        assert f"val_loss {figures[-1]['val_loss']:.4f}" in proc.stdout
    small, large = figures
    assert small["val_loss"] == pytest.approx(large["val_loss"], abs=1e-6)
    assert small["val_loss"] == pytest.approx(summary["final_val_loss"], abs=1e-5)  # the run's own figure
    # scored in the precision the run validated in (on this machine's CPU, bf16-mixed when native)
    assert small["precision"] == load_checkpoint(run / "checkpoints" / "last.ckpt")["precision"]
    assert small["tokens"] == small["characters"] == 1000
    assert small["perplexity"] == pytest.approx(math.exp(small["val_loss"]))
    assert small["bits_per_char"] == pytest.approx(small["val_loss"] / math.log(2))
    assert small["bits_per_char"] == pytest.approx(summary["final_val_bpc"], abs=1e-5)
    assert {"val_loss", "perplexity", "bits_per_char", "tokens", "characters"} <= small.keys()

    # any text file, every token of it; from a run directory, its best checkpoint
    text = tmp_path / "other.txt"
    text.write_text(shakespeare.read_text()[:3001])
    proc = run_here("eval", f"ckpt_path={run}", f"data.path={text}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert f"on all of {text}: 3,000 tokens, 3,000 characters" in proc.stdout
    assert summary["best_ckpt"] in proc.stdout
