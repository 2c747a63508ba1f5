"""Bad input fails fast, on one line, before any training step, and leaves nothing behind."""

from pathlib import Path

import pytest

from tests.conftest import TINY


def check_refused(result, *expected: str) -> None:
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert result.seconds < 15
    assert "Traceback" not in output
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(error_lines) == 1, result.stderr
    for text in expected:
        assert text in error_lines[0]
    assert not (result.run_dir / "checkpoints").exists()  # no training step ran


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["model.n_head=5"], ["model.n_embd=32 is not divisible by model.n_head=5", "[1, 2, 4, 8"]),
        (["model.dropout=1.0"], ["model.dropout=1.0", "0 <= dropout < 1"]),
        (["model.dropout=-0.5"], ["model.dropout=-0.5"]),
        (["model.block_size=200000"], ["model.block_size=200000 is too long for the validation split"]),
        (["optim.min_lr=1"], ["optim.min_lr=1"]),
        (["model.compile=maybe"], ["model.compile='maybe' is not allowed: use true or false"]),
        (
            ["optim.fused=true", "trainer.precision=16-mixed"],
            ["optim.fused=true with trainer.precision=16-mixed cannot clip gradients", "bf16-mixed"],
        ),
    ],
)
def test_bad_config_values(run_train, overrides: list[str], expected: list[str]) -> None:
    check_refused(run_train(*TINY, *overrides), *expected)


def test_missing_data_file_without_network(run_train, tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "input.txt"
    # port 9 (discard) on loopback refuses at once: the download fails like it does offline
    result = run_train(*TINY, f"data.path={missing}", "data.url=http://127.0.0.1:9/input.txt")
    check_refused(result, f"data file {missing} not found", f"put the file at {missing}")
    assert not missing.exists()


def test_empty_data_file(run_train, tmp_path: Path) -> None:
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    check_refused(run_train(*TINY, f"data.path={empty}"), f"data file {empty} is empty")


def test_unknown_config_option_uses_hydras_message(run_train) -> None:
    result = run_train("model=transformerxl")
    assert result.returncode != 0 and result.seconds < 15
    assert "Could not find 'model/transformerxl'" in result.stderr
    assert "Available options" in result.stderr


def test_full_error_shows_the_traceback(run_train, monkeypatch) -> None:
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")
    result = run_train(*TINY, "model.n_head=5")
    assert result.returncode != 0
    assert "Traceback" in result.stderr and "model.n_head=5" in result.stderr
