"""Scaling laws (gptlab.compare --fit, gptlab/analysis/scaling.py): known laws recovered from
synthetic points, the compute-optimal size of an IsoFLOP sweep, and a real width x lr sweep read
back by compare (--best-per, --fit, --predict, --plot)."""

import json
import re
from pathlib import Path

import numpy as np
import pytest

from gptlab.analysis.scaling import Point, fit, isoflop, optimal_size_trend
from tests.conftest import TINY, run_here, sweep_here

E, N_C, ALPHA, D_C, BETA = 1.4, 3e3, 0.35, 1e5, 0.3


def noisy(values: list[float], seed: int = 0) -> list[float]:
    rng = np.random.default_rng(seed)
    return [v + rng.normal(0, 0.002) for v in values]


def test_the_size_law_is_recovered_from_five_sizes_and_predicts_a_sixth() -> None:
    sizes = [2e4, 5e4, 1e5, 3e5, 1e6]
    losses = noisy([E + (N_C / n) ** ALPHA for n in sizes])
    law = fit([Point(n, 1e6, loss, None) for n, loss in zip(sizes, losses, strict=True)])
    assert not law.with_tokens
    e, log_nc, alpha = law.values
    errors = np.sqrt(np.diag(law.covariance))
    assert abs(e - E) < 4 * errors[0] and abs(alpha - ALPHA) < 4 * errors[2]
    assert abs(log_nc - np.log(N_C)) < 4 * errors[1]
    predicted, error = law.predict(1e7)
    assert predicted == pytest.approx(E + (N_C / 1e7) ** ALPHA, abs=max(4 * error, 0.005))


def test_the_law_with_tokens_is_recovered_when_the_runs_differ_in_tokens() -> None:
    grid = [(n, d) for n in (2e4, 1e5, 5e5) for d in (1e6, 4e6, 1.6e7)]
    losses = noisy([E + (N_C / n) ** ALPHA + (D_C / d) ** BETA for n, d in grid], seed=1)
    law = fit([Point(n, d, loss, None) for (n, d), loss in zip(grid, losses, strict=True)])
    assert law.with_tokens
    e, log_nc, alpha, log_dc, beta = law.values
    assert e == pytest.approx(E, abs=0.05)
    assert (alpha, beta) == pytest.approx((ALPHA, BETA), abs=0.03)
    assert np.exp(log_nc) == pytest.approx(N_C, rel=0.2) and np.exp(log_dc) == pytest.approx(D_C, rel=0.2)


def test_as_many_points_as_parameters_fit_exactly_without_uncertainties_and_fewer_are_refused() -> None:
    found = [Point(n, 1e6, E + (N_C / n) ** ALPHA, None) for n in (1e4, 1e5, 1e6)]
    law = fit(found)
    assert law.covariance is None
    assert [float(law(p.n)) for p in found] == pytest.approx([p.loss for p in found], abs=1e-6)
    with pytest.raises(ValueError, match=r"--fit: 2 points .* has 3 parameters: give at least 3"):
        fit(found[:2])


def test_an_isoflop_sweep_finds_each_budget_s_compute_optimal_size() -> None:
    """Points of a known law along curves of equal compute (D = C / 6N): each budget's minimum,
    found from five sizes, lies where the law's own minimum does."""
    found, expected = [], {}
    for budget in (1e15, 1e16, 1e17):
        grid = np.geomspace(1e4, 1e8, 4001)
        law = E + (N_C / grid) ** ALPHA + (D_C / (budget / (6 * grid))) ** BETA
        expected[budget] = grid[np.argmin(law)]
        for n in expected[budget] * np.array([0.25, 0.5, 1, 2, 4]):
            d = budget / (6 * n)
            found.append(Point(n, d, E + (N_C / n) ** ALPHA + (D_C / d) ** BETA, budget))
    rows = isoflop(found)
    assert [r["budget"] for r in rows] == [1e15, 1e16, 1e17]
    for r in rows:
        assert r["n_opt"] == pytest.approx(expected[r["budget"]], rel=0.1)
    _, exponent = optimal_size_trend(rows)
    # Chinchilla's a = beta / (alpha + beta)
    assert exponent == pytest.approx(BETA / (ALPHA + BETA), abs=0.03)
    # sizes that all lie above the optimum: no minimum, and which side needs another size
    (edge,) = isoflop([p for p in found if p.budget == 1e17 and p.n >= expected[1e17]])
    assert (
        edge["n_opt"] is None and edge["why_none"] == "its best run is its smallest size: add a smaller one"
    )
    # noise that bends the parabola the other way: its vertex is a maximum, not an optimum
    sizes, losses = [1e4, 2e4, 4e4, 8e4, 1.6e5], [3.0, 3.2, 2.9, 3.2, 3.0]
    (bent,) = isoflop([Point(n, 1e6, loss, 1e15) for n, loss in zip(sizes, losses, strict=True)])
    assert bent["n_opt"] is None and "no parabola with a minimum" in bent["why_none"]


@pytest.mark.slow
def test_compare_reads_a_width_and_lr_sweep_for_the_best_lr_per_width_and_a_law(
    tmp_path: Path, shakespeare: Path
) -> None:
    sweep_dir = tmp_path / "sweep"
    result = sweep_here(sweep_dir, *TINY, "model.n_embd=16,32,48", "optim.lr=2e-3,2e-2", "logger=csv")
    assert result.returncode == 0, result.stderr
    runs = {}
    for summary_file in sweep_dir.glob("*/summary.json"):
        overrides = (summary_file.parent / ".hydra" / "overrides.yaml").read_text()
        width = re.search(r"model.n_embd=(\d+)", overrides).group(1)
        lr = re.search(r"optim.lr=(\S+)", overrides).group(1)
        summary = json.loads(summary_file.read_text())
        runs.setdefault(width, []).append((summary["best_val_loss"], lr, summary["non_embedding_params"]))
    assert sorted(runs, key=int) == ["16", "32", "48"]

    best = run_here("compare", str(sweep_dir), "--best-per", "model.n_embd")
    assert best.returncode == 0, best.stderr
    rows = [line for line in best.stdout.splitlines() if re.match(r"^│\s+\d+ ", line)]
    shown = {row.split("│")[1].strip(): row for row in rows[-3:]}  # the last table: best per width
    for width, results in runs.items():
        loss, lr, _ = min(results)
        assert f"optim.lr={lr}" in shown[width] and f"{loss:.4f}" in shown[width]

    # three sizes, each its best lr: a law of three parameters (how well it fits runs this short
    # is for the synthetic tests above; here, that compare reads the runs and says it)
    plot = tmp_path / "law.png"
    law = run_here("compare", str(sweep_dir), "--fit", "--predict", "1e5", "--plot", str(plot))
    assert law.returncode == 0, law.stderr
    assert "val_loss(N) = E + (N_c/N)^alpha, N: non-embedding parameters (3 points" in law.stdout
    assert "(as many points as parameters: no uncertainties)" in law.stdout
    assert re.search(r"predicted best val_loss at N = 1e\+05: \d\.\d{4}", law.stdout)
    assert plot.stat().st_size > 0
