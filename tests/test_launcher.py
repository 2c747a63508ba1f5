"""hydra/launcher=parallel: a sweep's jobs side by side, each on its own devices from a pool (on
this CPU machine, device numbers are slots: CUDA_VISIBLE_DEVICES is set all the same)."""

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from tests.conftest import TINY, read_summary, sweep

PARALLEL = ["hydra/launcher=parallel", *TINY[4:], "logger=csv"]


def overlap(a: dict, b: dict) -> bool:
    """Whether two runs' summaries say they ran at the same time."""
    return a["started_at"] < b["finished_at"] and b["started_at"] < a["finished_at"]


@pytest.mark.slow
def test_a_grid_sweep_runs_its_jobs_side_by_side_each_on_its_own_device(
    tmp_path: Path, shakespeare: Path
) -> None:
    sweep_dir = tmp_path / "sweep"
    # n_head=3 does not divide n_embd=32: those two jobs fail, and free their devices
    proc = sweep(
        sweep_dir,
        *PARALLEL,
        "hydra.launcher.devices=[0,1]",
        "model.n_embd=32",
        "model.n_head=2,3",
        "seed=1,2",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    first, second = read_summary(sweep_dir / "0"), read_summary(sweep_dir / "1")
    assert {first["visible_devices"], second["visible_devices"]} == {"0", "1"}
    assert overlap(first, second)
    for failed in (sweep_dir / "2", sweep_dir / "3"):
        assert "not divisible by model.n_head=3" in read_summary(failed)["error"]
    assert "model.n_head=3 seed=2" in proc.stdout  # the sweep went on to its last job, and its table


@pytest.mark.slow
def test_optuna_trials_run_in_parallel_each_a_ddp_job_on_its_own_devices(
    tmp_path: Path, shakespeare: Path
) -> None:
    sweep_dir = tmp_path / "sweep"
    proc = sweep(
        sweep_dir,
        *PARALLEL,
        "hparams_search=optuna",
        "hydra.sweeper.n_trials=2",
        "hydra.sweeper.n_jobs=2",  # trials asked for at once
        "hydra.launcher.devices=[0,1,2,3]",
        "trainer.devices=2",
        "trainer.accelerator=cpu",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    trials = [read_summary(sweep_dir / str(n)) for n in range(2)]
    assert sorted(t["visible_devices"] for t in trials) == ["0,1", "2,3"]
    assert all(t["world_size"] == 2 for t in trials)  # each its own DDP, side by side
    assert overlap(*trials)
    results = OmegaConf.load(sweep_dir / "optimization_results.yaml")
    assert results.best_value == pytest.approx(min(t["best_val_loss"] for t in trials))
    assert set(results.best_params) == {
        "model.n_head",
        "model.n_layer",
        "model.n_embd",
        "model.dropout",
        "optim.lr",
    }
