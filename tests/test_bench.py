"""gptlab.bench for real: tiny models, few steps. Figures are checked for consistency, not speed:
speed goals are the bench's to report (README, Performance), not a test's to time."""

import json
from pathlib import Path

import pytest

from tests.conftest import SHAKESPEARE, TINY, Result, run_here

SHORT = ["bench.warmup_steps=2", "bench.rounds=3", "bench.steps_per_round=5", "trainer.log_every_n_steps=5"]


def bench(run_dir: Path, *overrides: str, env: dict[str, str] | None = None) -> Result:
    """`python -m gptlab.bench` on the tiny model, in this process (the parts that need processes
    of their own, start-up and growth, start them)."""
    return run_here(
        "bench", f"hydra.run.dir={run_dir}", f"data.path={SHAKESPEARE}", *TINY, *SHORT, *overrides, env=env
    )


def test_training_step_against_the_bare_loop_and_generation(tmp_path, shakespeare) -> None:
    result = bench(tmp_path, "bench.parts=[train,generate]", "bench.generate_tokens=[null,40]")
    assert result.returncode == 0, result.stderr
    figures = json.loads((tmp_path / "bench.json").read_text())
    train = figures["train"]
    assert len(train["rounds_ms"]["gptlab"]) == len(train["rounds_ms"]["bare"]) == 3
    assert train["gptlab_ms"] > 0 and train["bare_ms"] > 0
    assert train["ratio"] == pytest.approx(train["gptlab_ms"] / train["bare_ms"])
    assert 0 < train["batch_share"] < 1
    assert train["tokens_per_second"] == pytest.approx(8 * 16 / train["gptlab_ms"] * 1e3)
    assert train["peak_memory_mb"]["gptlab"] > 100  # a CPU process with torch loaded
    assert "mfu" not in train  # GPU only
    # gptlab's side ran with the run's own loggers
    assert list((tmp_path / "wandb").glob("offline-run-*/run-*.wandb"))
    assert (tmp_path / "csv" / "metrics.csv").exists()

    generation = figures["generate"]
    assert [g["new_tokens"] for g in generation] == [15, 40]  # null: block_size - 1
    assert all(g["cached_tokens_per_s"] > 0 and g["uncached_tokens_per_s"] > 0 for g in generation)
    assert "gptlab / bare" in result.stdout and "KV cache tok/s" in result.stdout


@pytest.mark.slow
def test_startup_and_growth_tables(tmp_path, shakespeare) -> None:
    result = bench(
        tmp_path,
        "bench.parts=[startup,grow]",
        "bench.startup_runs=1",
        "model.n_embd=128",
        "bench.grow={model.block_size:[16,256],model.n_layer:[]}",  # [] leaves a default key out
    )
    assert result.returncode == 0, result.stderr
    figures = json.loads((tmp_path / "bench.json").read_text())
    startup = figures["startup"]
    assert startup["seconds"] == startup["runs"][0] > 0
    assert startup["gptlab_seconds"] == pytest.approx(startup["seconds"] - startup["torch_lightning_seconds"])
    assert 0 < startup["torch_lightning_seconds"] < startup["seconds"]
    child = json.loads((tmp_path / "startup" / "0" / "summary.json").read_text())
    assert child["startup_seconds"] == startup["seconds"] and child["steps"] == 1

    short, long = figures["grow"]
    assert (short["setting"], short["value"], long["value"]) == ("model.block_size", 16, 256)
    assert long["params"] == short["params"]  # rotary positions: no table grows with the block
    # 16 times the tokens per step, each with its activations: clearly more memory (the times,
    # each in a process of its own on a shared machine, are figures, not facts to test)
    assert long["bare_ms"] > 0 and short["bare_ms"] > 0 and long["memory_mb"] > short["memory_mb"] + 10
    assert (tmp_path / "grow" / "model.block_size_256" / "bench.json").exists()


def test_auto_precision_against_both_precisions(tmp_path, shakespeare) -> None:
    result = bench(tmp_path, "bench.parts=[precision]", env={"XDG_CACHE_HOME": str(tmp_path / "cache")})
    assert result.returncode == 0, result.stderr
    precision = json.loads((tmp_path / "bench.json").read_text())["precision"]
    ms = precision["ms"]
    assert set(ms) == {"32-true", "bf16-mixed"} and all(t > 0 for t in ms.values())
    assert precision["auto_over_fastest"] == pytest.approx(ms[precision["auto"]] / min(ms.values()))
    assert "auto's choice" in result.stdout

    refused = bench(tmp_path / "refused", "bench.parts=[precision]", "trainer.precision=32-true")
    assert refused.returncode == 1
    assert refused.stderr.startswith(
        "error: bench.parts=[precision] measures trainer.precision=auto on a CPU"
    )
