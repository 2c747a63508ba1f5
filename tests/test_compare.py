"""The runs table: best first, on a scale every tokenizer shares; a setting's seeds as a mean and
its 95% confidence interval, its difference from a baseline with Welch's test, its time to a loss."""

import csv
import json
import math
import random
import statistics
from pathlib import Path

import pytest
from scipy import stats

from gptlab.analysis import seeds
from gptlab.analysis.results import best_first, time_to_loss
from tests.conftest import TINY, read_summary, run_here, sweep_here


def test_compare_puts_the_best_bits_per_character_first_whatever_the_tokenizer() -> None:
    char = {"summary": {"best_val_loss": 2.45, "best_val_bpc": 3.53}}
    bpe = {"summary": {"best_val_loss": 5.26, "best_val_bpc": 2.83}}  # worse per token, better per character
    failed = {"summary": {"error": "diverged"}}
    running = {"summary": None}  # no summary.json yet
    assert best_first([[running], [char], [failed], [bpe]]) == [[bpe], [char], [running], [failed]]
    older = {"summary": {"best_val_loss": 2.0, "best_val_bpc": None}}  # from before bpc: by val_loss
    assert best_first([[char], [older]]) == [[older], [char]]


def test_a_mean_s_confidence_interval_is_student_s() -> None:
    found = seeds.interval([1.0, 2.0, 3.0])
    # mean 2, standard deviation 1, t(0.975, 2 degrees of freedom) = 4.3027
    assert (found.mean, found.n) == (2.0, 3)
    assert found.half_width == pytest.approx(4.3027 / math.sqrt(3), rel=1e-4)
    assert str(found) == "2.0000 ± 2.4841"
    assert seeds.interval([1.5]).half_width is None and str(seeds.interval([1.5])) == "1.5000"


def test_a_difference_is_welch_s_and_its_interval_says_what_its_p_value_says() -> None:
    a, b = [1.61, 1.62, 1.60, 1.63], [1.65, 1.66, 1.64]
    found = seeds.difference(a, b)
    va, vb = statistics.variance(a) / 4, statistics.variance(b) / 3
    df = (va + vb) ** 2 / (va**2 / 3 + vb**2 / 2)  # Welch-Satterthwaite
    assert found.value == pytest.approx(statistics.fmean(a) - statistics.fmean(b))
    assert found.half_width == pytest.approx(stats.t.ppf(0.975, df) * math.sqrt(va + vb))
    assert found.p == pytest.approx(stats.ttest_ind(a, b, equal_var=False).pvalue)
    # one test, two ways of saying it: the 95% interval leaves out 0 exactly when p < 0.05
    rng = random.Random(0)
    for _ in range(200):
        x = [rng.gauss(0, 1) for _ in range(rng.randint(2, 6))]
        y = [rng.gauss(0.8, 1.5) for _ in range(rng.randint(2, 6))]
        d = seeds.difference(x, y)
        assert (abs(d.value) > d.half_width) == (d.p < 0.05)
    assert seeds.difference([1.6], b).half_width is None  # one seed: no interval, no test


def test_the_time_to_a_loss_is_start_up_then_training_to_the_first_validation_there(tmp_path: Path) -> None:
    metrics = tmp_path / "csv" / "metrics.csv"
    metrics.parent.mkdir()
    with metrics.open("w", newline="") as f:  # as Lightning's CSVLogger lays them out
        writer = csv.DictWriter(f, fieldnames=["step", "train/time", "train_loss", "val_loss"])
        writer.writeheader()
        for step, time, val_loss in [
            (9, 1.0, ""),
            (19, 2.5, ""),
            (19, "", 2.1),
            (29, 4.0, ""),
            (39, 6.0, ""),
            (39, "", 1.8),
            (49, 9.0, ""),
            (49, "", 1.9),
        ]:
            writer.writerow({"step": step, "train/time": time, "train_loss": 2.0, "val_loss": val_loss})
    run = {"dir": tmp_path, "summary": {"startup_seconds": 7.5, "precision_seconds": 1.25}}
    # step 39's validation is the first at or below 1.85: start-up (less the precision timing,
    # a once-per-shape cost) and the training time logged at step 39
    assert time_to_loss(run, 1.85) == 7.5 - 1.25 + 6.0
    assert time_to_loss(run, 2.1) == 7.5 - 1.25 + 2.5
    assert time_to_loss(run, 1.5) is None  # never got there
    del run["summary"]["precision_seconds"]  # a summary from before it was kept
    assert time_to_loss(run, 1.85) == 7.5 + 6.0


@pytest.mark.slow
def test_compare_says_whether_a_setting_differs_from_the_baseline_and_how_fast_it_got_there(
    tmp_path: Path, shakespeare: Path
) -> None:
    sweep_dir = tmp_path / "sweep"
    result = sweep_here(sweep_dir, *TINY, "logger=csv", "optim.lr=1e-3,1e-2", "seed=1,2,3")
    assert result.returncode == 0, result.stderr
    # seeds 1, 2, 3 each, as Hydra records a sweep's values
    jobs = {"optim.lr=0.001": [0, 1, 2], "optim.lr=0.01": [3, 4, 5]}
    losses = {
        lr: [read_summary(sweep_dir / str(n))["best_val_loss"] for n in nums] for lr, nums in jobs.items()
    }
    # the end-of-sweep table: a row a setting, its seeds' mean and 95% interval
    for lr in jobs:
        assert str(seeds.interval(losses[lr])) in result.stdout

    target = max(max(v) for v in losses.values()) + 0.05  # every seed of both gets there
    compared = run_here(
        "compare", str(sweep_dir), "--baseline", "optim.lr=1e-3", "--time-to", str(target), "--json"
    )
    assert compared.returncode == 0, compared.stderr
    rows = {o: row for row in json.loads(compared.stdout) for o in row["overrides"].split() if o in jobs}
    base, other = rows["optim.lr=0.001"], rows["optim.lr=0.01"]
    assert base["n_seeds"] == other["n_seeds"] == 3
    assert other["best_val_loss_ci95"] == pytest.approx(seeds.interval(losses["optim.lr=0.01"]).half_width)
    expected = seeds.difference(losses["optim.lr=0.01"], losses["optim.lr=0.001"])
    assert other["vs_baseline"] == pytest.approx(expected.value)
    assert other["p_value"] == pytest.approx(expected.p)
    assert base["vs_baseline"] == 0.0 and base["p_value"] is None
    for lr, row in rows.items():  # start-up, then part of the training (its definition: above)
        summaries = [read_summary(sweep_dir / str(n)) for n in jobs[lr]]
        assert min(s["startup_seconds"] for s in summaries) <= row["seconds_to_loss"]
        assert row["seconds_to_loss"] <= max(s["startup_seconds"] + s["train_seconds"] for s in summaries)
    table = run_here("compare", str(sweep_dir), "--baseline", "optim.lr=1e-3", "--time-to", str(target))
    assert "baseline" in table.stdout and str(expected) in table.stdout
    assert f"s to {target:g}" in table.stdout

    unknown = run_here("compare", str(sweep_dir), "--baseline", "optim.lr=5")
    assert unknown.returncode == 1
    said = "error: --baseline optim.lr=5: no group of runs has optim.lr so; its values here: 0.001, 0.01"
    assert unknown.stderr == said + "\n"
