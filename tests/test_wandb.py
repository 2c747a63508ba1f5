"""wandb, offline: what a sweep's runs record, read back with wandb's own reader (`wandb leet
inspect`), and the sweep's wandb/ folder that `wandb leet` shows whole."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import TINY, read_summary, sweep_here

WANDB = Path(sys.executable).with_name("wandb")


def leet_inspect(path: Path, *options: str) -> str:
    inspected = subprocess.run(
        [WANDB, "leet", "inspect", *options, str(path)], capture_output=True, text=True
    )
    assert inspected.returncode == 0, inspected.stderr
    return inspected.stdout


def wandb_summary(path: Path) -> dict:
    """The run's state, config, name, tags and summary: `wandb leet inspect --summary --json`."""
    return json.loads(leet_inspect(path, "--summary", "--json"))


def wandb_records(path: Path, kind: str) -> list[dict]:
    """The records of one type in the run's .wandb log: `wandb leet inspect --json`."""
    records = [json.loads(line) for line in leet_inspect(path, "--json").splitlines()]
    return [r[kind] for r in records if r["type"] == kind]


@pytest.mark.slow
def test_sweep_runs_share_a_group_compare_best_values_and_the_sweep_folder_shows_them_all(
    tmp_path: Path, shakespeare: Path
) -> None:
    sweep_dir = tmp_path / "sweep"
    proc = sweep_here(sweep_dir, "model.n_head=2,4", *TINY[2:], "seed=1,2")
    assert proc.returncode == 0, proc.stderr

    run_ids = set()
    for job, n_head, seed in (("0", 2, 1), ("1", 2, 2), ("2", 4, 1), ("3", 4, 2)):
        recorded = wandb_summary(sweep_dir / job / "wandb")
        overrides = [f"model.n_head={n_head}", *TINY[2:], f"seed={seed}", f"data.path={shakespeare}"]
        assert recorded["state"] == "finished"
        assert recorded["name"] == " ".join(overrides)
        assert recorded["tags"] == [o[:64] for o in overrides]
        assert recorded["config"]["model"]["n_head"] == n_head  # the resolved run config
        assert recorded["config"]["run_dir"] == str(sweep_dir / job)
        # what a dashboard groups a setting's seeds by: the overrides less the seed
        assert recorded["config"]["setting"] == " ".join(o for o in overrides if not o.startswith("seed="))
        (run,) = wandb_records(sweep_dir / job / "wandb", "run")
        assert run["run_group"] == str(sweep_dir)
        run_ids.add(recorded["run_id"])

        # the dashboard compares best values: val_loss's summary is its minimum, beside the
        # run's own figures
        summary = read_summary(sweep_dir / job)
        assert recorded["summary"]["val_loss"] == {"min": pytest.approx(summary["best_val_loss"])}
        for figure in ("best_val_loss", "params", "tokens_per_second", "steps"):
            assert recorded["summary"][figure] == pytest.approx(summary[figure])

        # this run's own metrics only: two validations (steps 15 and 30)
        history = [h["item"] for h in wandb_records(sweep_dir / job / "wandb", "history")]
        assert [h["trainer/global_step"] for h in history if "val_loss" in h] == [14, 29]
    assert len(run_ids) == 4

    # one wandb/ folder for the whole sweep, linking every job's run, each still in its own
    linked = list((sweep_dir / "wandb").iterdir())
    runs = [next((sweep_dir / job / "wandb").glob("offline-run-*")) for job in ("0", "1", "2", "3")]
    assert sorted(p.resolve() for p in linked) == sorted(p.resolve() for p in runs)
    assert {wandb_summary(p)["run_id"] for p in linked} == run_ids
    assert f"wandb leet {sweep_dir}/wandb" in proc.stdout
    assert f"wandb sync {sweep_dir}/wandb/offline-run-*" in proc.stdout
