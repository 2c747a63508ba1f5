"""hydra/sweeper=optuna (gptlab/runs/optuna_sweeper.py): real Optuna studies, in journal files
and in SQLite, driving real sweeps of the tiny model, killed and launched again; the studies read
back with Optuna's own API. (Parallel trials and pruning: tests/test_launcher.py.)"""

import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from omegaconf import OmegaConf
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend

from gptlab.runs.search_space import search_space
from tests.conftest import TINY, read_summary, run_here, sweep_here, wait_until
from tests.test_cluster import validation_rows
from tests.test_sweep_resume import start_sweep


def test_command_line_search_spaces_are_hydra_optuna_sweepers() -> None:
    space, fixed = search_space(
        [
            "optim.lr=tag(log, interval(1e-5, 3e-2))",
            "optim.warmup_steps=int(interval(0, 100))",
            "model.dropout=interval(0, 0.5)",
            "model.n_layer=range(2, 6)",
            "trainer.max_steps=range(1000, 3000, step=500)",
            "model.n_embd=choice(96, 192)",
            "data.batch_size=8,16",
            "seed=7",
            "optim.min_lr=choice(0.0, 1e-4)",
            "optim.min_lr=1e-5",  # a later override of a key replaces the earlier
        ]
    )
    assert space == {
        "optim.lr": FloatDistribution(1e-5, 3e-2, log=True),
        "optim.warmup_steps": IntDistribution(0, 100),
        "model.dropout": FloatDistribution(0.0, 0.5),
        "model.n_layer": IntDistribution(2, 6),  # both ends included
        "trainer.max_steps": IntDistribution(1000, 3000, step=500),
        "model.n_embd": CategoricalDistribution([96, 192]),
        "data.batch_size": CategoricalDistribution([8, 16]),
    }
    assert fixed == {"seed": "7", "optim.min_lr": "1e-05"}


@pytest.mark.slow
def test_an_optuna_search_goes_on_past_a_trial_that_fails(tmp_path: Path, shakespeare: Path) -> None:
    tiny = [o for o in TINY if not o.startswith("model.n_head=")]  # n_embd 32: 3 heads cannot split it
    proc = sweep_here(
        tmp_path / "search",
        "hparams_search=optuna",
        "hydra.sweeper.n_trials=4",
        *tiny,
        "model.n_head=choice(2, 3)",
        "logger=csv",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    summaries = [read_summary(tmp_path / "search" / str(job)) for job in range(4)]
    failed = [s for s in summaries if "error" in s]
    assert failed and all("not divisible by model.n_head=3" in s["error"] for s in failed)
    results = OmegaConf.load(tmp_path / "search" / "optimization_results.yaml")
    assert results.best_params["model.n_head"] == 2
    assert results.best_value == pytest.approx(min(s["best_val_loss"] for s in summaries if "error" not in s))


def study_of(sweep_dir: Path, storage: str | None = None) -> optuna.Study:
    """The study of a sweep, read with Optuna's own API: in its optuna.journal, or in storage."""
    if storage is None:
        storage = JournalStorage(JournalFileBackend(str(sweep_dir / "optuna.journal")))
    return optuna.load_study(study_name="gptlab", storage=storage)


# a search of optim.lr alone (the rest fixed), each trial validated and saved at step 200 of 400
TRIALS = [*TINY, "trainer.max_steps=400", "trainer.val_check_interval=200", "logger=csv"]


@pytest.mark.slow
@pytest.mark.parametrize("storage", ["journal", "sqlite"])
def test_a_killed_search_tries_its_running_trial_again_from_its_checkpoint_and_finishes_the_study(
    tmp_path: Path, shakespeare: Path, storage: str
) -> None:
    sweep_dir = tmp_path / "search"
    database = f"sqlite:///{tmp_path / 'study.db'}"
    search = ["hparams_search=optuna", "hydra.sweeper.n_trials=3", *TRIALS]
    if storage == "sqlite":
        search.append(f"hydra.sweeper.storage={database}")
    driver = start_sweep(sweep_dir, *search, new_session=True)
    try:
        wait_until(lambda: (sweep_dir / "1" / "checkpoints" / "last.ckpt").is_file(), driver)
    finally:
        os.killpg(driver.pid, signal.SIGKILL)  # the driver, and the trial it runs, dead at once
        driver.communicate()
    study = study_of(sweep_dir, database if storage == "sqlite" else None)
    State = optuna.trial.TrialState
    assert [t.state for t in study.trials] == [State.COMPLETE, State.RUNNING]

    relaunched = run_here("train", "-m", f"resume={sweep_dir}")
    assert relaunched.returncode == 0, relaunched.stderr[-3000:]
    study = study_of(sweep_dir, database if storage == "sqlite" else None)
    killed, retry = study.trials[1], study.trials[2]
    assert killed.state == State.FAIL
    assert retry.state == State.COMPLETE and retry.params == killed.params
    assert retry.user_attrs["job"] == 1 and retry.user_attrs["retry_of"] == 1
    assert [t.state for t in study.trials].count(State.COMPLETE) == 3  # the planned study, finished
    # the retry resumed the killed trial in its directory: each validation once, none trained twice
    assert [int(row["step"]) + 1 for row in validation_rows(sweep_dir / "1")] == [200, 400]
    assert sorted(p.name for p in sweep_dir.iterdir() if p.name.isdigit()) == ["0", "1", "2"]

    finished = run_here("train", "-m", f"resume={sweep_dir}")
    assert finished.returncode == 0, finished.stderr[-3000:]
    assert "0 of 3 trials to run" in finished.stdout + finished.stderr
    assert len(study_of(sweep_dir, database if storage == "sqlite" else None).trials) == 4

    if storage == "journal":  # another search into its directory is refused, and changes nothing
        before = {str(p): p.stat().st_mtime_ns for p in sweep_dir.rglob("*")}
        other = [o for o in search if o != "hydra.sweeper.n_trials=3"] + ["optim.lr=choice(0.001, 0.002)"]
        refused = sweep_here(sweep_dir, *other)
        assert refused.returncode == 1
        line = refused.stderr.strip().splitlines()[-1]
        assert line.startswith(
            f"error: hydra.sweep.dir={sweep_dir} holds another sweep: its search had `optim.lr="
        )
        assert {str(p): p.stat().st_mtime_ns for p in sweep_dir.rglob("*")} == before


@pytest.mark.slow
def test_a_study_in_a_database_shared_by_two_sweeps_counts_the_trials_of_both(
    tmp_path: Path, shakespeare: Path
) -> None:
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    for launch, n_trials in (("first", 2), ("second", 4)):
        proc = sweep_here(
            tmp_path / launch,
            "hparams_search=optuna",
            f"hydra.sweeper.storage={storage}",
            f"hydra.sweeper.n_trials={n_trials}",
            *TINY,  # the trials search optim.lr alone
            "logger=csv",
        )
        assert proc.returncode == 0, proc.stderr
    study = optuna.load_study(study_name="gptlab", storage=storage)
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE] * 4  # 2 + 2: one study
    first, second = [t.params for t in study.trials[:2]], [t.params for t in study.trials[2:]]
    assert all(params not in first for params in second)  # new trials, not the first ones again
    assert [t.user_attrs["job"] for t in study.trials] == [0, 1, 0, 1]  # each sweep numbers its own
    assert study.best_value == pytest.approx(
        min(
            read_summary(tmp_path / launch / str(job))["best_val_loss"]
            for launch in ("first", "second")
            for job in (0, 1)
        )
    )


def test_the_grid_sampler_runs_each_combination_once_across_launches(
    tmp_path: Path, shakespeare: Path
) -> None:
    grid = [
        "hparams_search=optuna",
        "hydra/sweeper/sampler=grid",
        *TINY,
        "trainer.max_steps=5",
        "trainer.val_check_interval=5",
        "optim.lr=0.01",
        "model.n_head=choice(1, 2, 4)",
        "logger=none",
    ]
    first = sweep_here(tmp_path / "grid", *grid, "hydra.sweeper.n_trials=1")
    assert first.returncode == 0, first.stderr[-3000:]
    rest = sweep_here(tmp_path / "grid", *grid, "hydra.sweeper.n_trials=10")  # cut to the grid's 3
    assert rest.returncode == 0, rest.stderr[-3000:]
    assert sorted(p.name for p in (tmp_path / "grid").iterdir() if p.name.isdigit()) == ["0", "1", "2"]
    heads = sorted(
        OmegaConf.load(tmp_path / "grid" / job / ".hydra" / "config.yaml").model.n_head for job in "012"
    )
    assert heads == [1, 2, 4]


def old_optuna_database(path: Path) -> str:
    """A study database as Optuna 2.10 left it, by the mark Optuna reads: its schema's version."""
    storage = f"sqlite:///{path}"
    optuna.create_study(storage=storage, study_name="old")
    with sqlite3.connect(path) as db:
        db.execute("UPDATE alembic_version SET version_num = 'v2.6.0.a'")  # Optuna 2.10's schema
    return storage


@pytest.mark.parametrize(
    ("storage", "message"),
    [
        ("{old}", "holds a study of an older Optuna: upgrade it once with `optuna storage upgrade --storage"),
        ("nosuchdb://x", "cannot be opened"),
        ("sqlite:///{tmp}/no/such/folder/study.db", "cannot be opened"),
    ],
)
def test_a_storage_the_study_cannot_use_stops_the_sweep_in_one_line(
    tmp_path: Path, shakespeare: Path, storage: str, message: str
) -> None:
    storage = storage.format(old=old_optuna_database(tmp_path / "old.db"), tmp=tmp_path)
    proc = sweep_here(tmp_path / "sweep", "hparams_search=optuna", f"hydra.sweeper.storage={storage}", *TINY)
    assert proc.returncode == 1
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith(f"error: hydra.sweeper.storage={storage}") and message in line, proc.stderr
    assert not (tmp_path / "sweep" / "0").exists()  # no trial ran


def test_optuna_4_and_sqlalchemy_2_beside_gptlab_with_pip_check_clean() -> None:
    """The installed environment (a fresh venv in CI) holds gptlab beside current Optuna and
    SQLAlchemy, and pip finds no requirement of any package unmet."""
    import sqlalchemy

    assert int(optuna.__version__.split(".")[0]) >= 4 and int(sqlalchemy.__version__.split(".")[0]) >= 2
    check = subprocess.run([sys.executable, "-m", "pip", "check"], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
