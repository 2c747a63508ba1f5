"""hydra/launcher=parallel: a sweep's jobs side by side, each on its own devices from a pool (on
this CPU machine, device numbers are slots: CUDA_VISIBLE_DEVICES is set all the same)."""

import json
import statistics
from pathlib import Path

import optuna
import pytest
from omegaconf import OmegaConf
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend

from gptlab.analysis import seeds
from tests.conftest import TINY, read_summary, run_here, sweep_here

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
    proc = sweep_here(
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

    # compare: the two seeds of n_head=2 are one row, mean and spread; --runs lists them apart
    grouped = json.loads(
        run_here("compare", str(sweep_dir), "--json", "--plot", str(tmp_path / "p.png")).stdout
    )
    assert [row["n_seeds"] for row in grouped] == [2, 1, 1]
    losses = [first["best_val_loss"], second["best_val_loss"]]
    assert grouped[0]["best_val_loss_mean"] == pytest.approx(statistics.mean(losses))
    assert grouped[0]["best_val_loss_std"] == pytest.approx(statistics.stdev(losses))
    assert "seed=" not in grouped[0]["overrides"]
    assert (tmp_path / "p.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    one_by_one = json.loads(run_here("compare", str(sweep_dir), "--json", "--runs").stdout)
    assert len(one_by_one) == 4 and "n_seeds" not in one_by_one[0]
    table = run_here("compare", str(sweep_dir)).stdout
    assert str(seeds.interval(losses)) in table  # the mean and its 95% interval


@pytest.mark.slow
def test_optuna_trials_run_side_by_side_each_a_ddp_job_and_a_bad_one_is_pruned(
    tmp_path: Path, shakespeare: Path
) -> None:
    """Three trials, two at a time, each a DDP job on two of four slots: a long one and a short
    one first, and a third (an lr far too small) asked for as soon as the short one ends, while
    the long one still runs. The median pruner, which needs one finished trial, stops the third at
    its first validation: on both ranks, saved, summed up as pruned, and PRUNED in the study."""
    sweep_dir = tmp_path / "sweep"
    sweep_dir.mkdir()
    study = optuna.create_study(study_name="gptlab", storage=journal(sweep_dir))
    for lr, steps in ((3e-3, 300), (3e-3, 30), (2e-4, 300)):  # the trials the sampler gives first
        study.enqueue_trial({"optim.lr": lr, "trainer.max_steps": steps})
    proc = sweep_here(
        sweep_dir,
        *PARALLEL,
        *TINY[:4],  # the model fixed: the trials search optim.lr and trainer.max_steps
        "hparams_search=optuna",
        "optim.lr=tag(log, interval(1e-4, 1e-2))",
        "trainer.max_steps=choice(30, 300)",
        "hydra.sweeper.n_trials=3",
        "hydra.sweeper.n_jobs=2",  # trials at once
        "hydra/sweeper/pruner=median",
        "hydra.sweeper.pruner.n_startup_trials=1",
        "hydra.launcher.devices=[0,1,2,3]",
        "trainer.devices=2",
        "trainer.accelerator=cpu",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    long, short, bad = (read_summary(sweep_dir / str(n)) for n in range(3))
    assert sorted(t["visible_devices"] for t in (long, short)) == ["0,1", "2,3"]
    assert all(t["world_size"] == 2 for t in (long, short, bad))  # each its own DDP, side by side
    assert overlap(long, short)

    trials = optuna.load_study(study_name="gptlab", storage=journal(sweep_dir)).trials
    State = optuna.trial.TrialState
    assert [t.state for t in trials] == [State.COMPLETE, State.COMPLETE, State.PRUNED]
    assert trials[2].datetime_start < trials[0].datetime_complete  # asked for before the long one ended
    assert bad["pruned"] is True and bad["steps"] == 15 and not long["pruned"]  # at its first validation
    assert (sweep_dir / "2" / "checkpoints" / "last.ckpt").is_file()
    assert list(trials[0].intermediate_values) == list(range(15, 301, 15))  # each validation reported
    results = OmegaConf.load(sweep_dir / "optimization_results.yaml")
    assert results.best_value == pytest.approx(min(long["best_val_loss"], short["best_val_loss"]))
    table = run_here("compare", str(sweep_dir)).stdout
    assert f"{bad['best_val_loss']:.4f} pruned" in table


def journal(sweep_dir: Path) -> JournalStorage:
    """A sweep's study, where the sweeper keeps it by default."""
    return JournalStorage(JournalFileBackend(str(sweep_dir / "optuna.journal")))
