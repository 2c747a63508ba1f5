"""Scaling laws fitted to your own runs (`python -m gptlab.compare DIR --fit`): how the best
val_loss (or bits per character) falls with the model's size N, its non-embedding parameters (the
count of Kaplan et al. 2020: every parameter but the token and position embeddings), and, when the
runs trained on different numbers of tokens D, with both (the form of Hoffmann et al. 2022):

    L(N)    = E + (N_c / N)^alpha
    L(N, D) = E + (N_c / N)^alpha + (D_c / D)^beta

E is the loss no size reaches; N_c and D_c are written as sizes (the A of A / N^alpha is
N_c^alpha), so that the fit runs in logarithms, where the sizes' scale does not matter. The fit is
scipy's curve_fit (least squares on the losses); each parameter's standard error comes from its
covariance, and there is none when there are exactly as many runs as parameters (the curve then
passes through every point).

IsoFLOP: runs of several sizes at each of two or more flops_budget values give, for each budget,
a parabola of loss against log N around its best size, whose minimum is the compute-optimal size
(Hoffmann et al.'s second approach), and across budgets N_opt = k C^a.
"""

import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy.optimize import OptimizeWarning, curve_fit

from gptlab.analysis.results import best_val_loss, group_mean, pyplot
from gptlab.faults import SettingError


@dataclass(frozen=True)
class Point:
    """One setting's runs (seeds averaged): its size, tokens, loss and budget."""

    n: float  # non-embedding parameters
    d: float  # tokens trained on
    loss: float
    budget: float | None  # flops_budget, if the run had one


def size_law(x: np.ndarray, e: float, log_nc: float, alpha: float) -> np.ndarray:
    return e + np.exp(alpha * (log_nc - np.log(x[0])))


def size_and_data_law(
    x: np.ndarray, e: float, log_nc: float, alpha: float, log_dc: float, beta: float
) -> np.ndarray:
    return e + np.exp(alpha * (log_nc - np.log(x[0]))) + np.exp(beta * (log_dc - np.log(x[1])))


@dataclass(frozen=True)
class Law:
    with_tokens: bool  # the L(N, D) form
    values: np.ndarray  # E, log N_c, alpha (, log D_c, beta)
    covariance: np.ndarray | None  # None when no degree of freedom is left for it
    count: int  # the points fitted

    @property
    def function(self) -> Any:
        return size_and_data_law if self.with_tokens else size_law

    def __call__(self, n: float | np.ndarray, d: float | np.ndarray = 1.0) -> np.ndarray:
        return self.function(np.array(np.broadcast_arrays(n, d), dtype=float), *self.values)

    def predict(self, n: float, d: float = 1.0) -> tuple[float, float | None]:
        """The law's loss at n (and d), and its standard error from the parameters' covariance."""
        value = float(self(n, d))
        if self.covariance is None:
            return value, None
        # the gradient in each parameter, by central differences
        gradient = np.empty(len(self.values))
        for i in range(len(self.values)):
            step = np.zeros(len(self.values))
            step[i] = 1e-6 * max(1.0, abs(self.values[i]))
            up = self.function(np.array([n, d], dtype=float), *(self.values + step))
            down = self.function(np.array([n, d], dtype=float), *(self.values - step))
            gradient[i] = (up - down) / (2 * step[i])
        return value, float(math.sqrt(max(0.0, gradient @ self.covariance @ gradient)))

    def describe(self, metric: str) -> str:
        form = "E + (N_c/N)^alpha + (D_c/D)^beta" if self.with_tokens else "E + (N_c/N)^alpha"
        errors = (
            np.sqrt(np.diag(self.covariance)) if self.covariance is not None else [None] * len(self.values)
        )

        def shown(value: float, error: float | None, digits: int = 4) -> str:
            return f"{value:.{digits}f}" + ("" if error is None else f" ± {error:.{digits}f}")

        e, log_nc, alpha = self.values[:3]
        point = "size and token count" if self.with_tokens else "size"
        lines = [
            f"{metric}(N{', D' if self.with_tokens else ''}) = {form}, N: non-embedding parameters"
            + (", D: tokens" if self.with_tokens else "")
            + f" ({self.count} points, each {point}'s best run)",
            f"  E     = {shown(e, errors[0])}",
            f"  alpha = {shown(alpha, errors[2])}",
            f"  N_c   = {math.exp(log_nc):.3g} (log10 {shown(log_nc / math.log(10), scaled(errors[1]), 3)})",
        ]
        if self.with_tokens:
            lines += [
                f"  beta  = {shown(self.values[4], errors[4])}",
                f"  D_c   = {math.exp(self.values[3]):.3g} "
                f"(log10 {shown(self.values[3] / math.log(10), scaled(errors[3]), 3)})",
            ]
        if self.covariance is None:
            lines.append("  (as many points as parameters: no uncertainties)")
        return "\n".join(lines)


def scaled(error: float | None) -> float | None:
    return None if error is None else error / math.log(10)


def points(groups: list[list[dict[str, Any]]], metric: str) -> list[Point]:
    """A point for each size and token count: its best group of runs (seeds averaged unless
    compare --runs keeps them apart), so that a learning-rate sweep at each size gives the size's
    best. Runs with no size to fit (the bigram model has no parameters but its embedding) or a
    loss that is not finite (diverged) are left out."""
    best: dict[tuple[float, float], Point] = {}
    for group in groups:
        if best_val_loss(group)[0] is None:
            continue
        summary = group[0]["summary"]
        if "non_embedding_params" not in summary:
            raise SettingError(
                f"{group[0]['dir']}/summary.json has no non_embedding_params (written before gptlab fitted "
                "scaling laws): train the run again to fit it"
            )
        loss = best_val_loss(group)[0] if metric == "val_loss" else group_mean(group, "best_val_bpc")
        point = Point(summary["non_embedding_params"], summary["tokens"], loss, group[0]["flops_budget"])
        if not (point.n > 0 and point.d > 0 and loss is not None and math.isfinite(loss)):
            continue
        if (key := (point.n, point.d)) not in best or point.loss < best[key].loss:
            best[key] = point
    return sorted(best.values(), key=lambda p: (p.n, p.d))


def fit(found: list[Point]) -> Law:
    """The law through the points: L(N) when they all saw the same tokens, else L(N, D)."""
    with_tokens = len({p.d for p in found}) > 1
    names = ("E", "N_c", "alpha", "D_c", "beta") if with_tokens else ("E", "N_c", "alpha")
    if len(found) < len(names):
        form = "E + (N_c/N)^alpha + (D_c/D)^beta" if with_tokens else "E + (N_c/N)^alpha"
        raise SettingError(
            f"--fit: {len(found)} point{'s' if len(found) != 1 else ''} (sizes with a finished run), "
            f"and the law {form} has {len(names)} parameters: give at least {len(names)}"
        )
    x = np.array([[p.n for p in found], [p.d for p in found]], dtype=float)
    y = np.array([p.loss for p in found])
    function = size_and_data_law if with_tokens else size_law
    lowest = float(y.min())
    lower = [0.0, -50.0, 0.01] + ([-50.0, 0.01] if with_tokens else [])
    upper = [lowest, 100.0, 3.0] + ([100.0, 3.0] if with_tokens else [])
    best = None
    for exponent in (0.1, 0.3, 0.6, 1.0):  # several starts: a few points leave the least squares rugged
        e = 0.5 * lowest
        log_nc = math.log(x[0].max()) + math.log(lowest - e) / exponent
        start = [e, log_nc, exponent] + ([math.log(x[1].max()), exponent] if with_tokens else [])
        try:
            with warnings.catch_warnings():  # no covariance with no degree of freedom left: said below
                warnings.simplefilter("ignore", OptimizeWarning)
                values, covariance = curve_fit(function, x, y, p0=start, bounds=(lower, upper), maxfev=20000)
        except RuntimeError:  # no convergence from this start
            continue
        residual = float(np.sum((function(x, *values) - y) ** 2))
        if best is None or residual < best[0]:
            best = (residual, values, covariance)
    if best is None:
        raise SettingError("--fit: the law did not converge on these runs")
    _, values, covariance = best
    known = len(found) > len(names) and bool(np.all(np.isfinite(covariance)))
    return Law(with_tokens, values, covariance if known else None, len(found))


def isoflop(found: list[Point]) -> list[dict[str, Any]]:
    """For each budget with three sizes or more: a parabola of loss against log N through its
    best size and up to two neighbours on each side (the curve is no parabola far from its
    minimum), and the parabola's minimum; none (`why_none` says why) where the best size is the
    smallest or largest, or where noise bends the parabola the other way."""
    rows = []
    for budget in sorted({p.budget for p in found if p.budget is not None}):
        at = sorted((p for p in found if p.budget == budget), key=lambda p: p.n)
        if len(at) < 3:
            continue
        best = min(range(len(at)), key=lambda i: at[i].loss)
        near = at[max(0, best - 2) : best + 3]
        curve = np.polyfit(np.log([p.n for p in near]), [p.loss for p in near], 2)
        row = {
            "budget": budget,
            "curve": curve,
            "sizes": len(at),
            "fitted": near,
            "n_opt": None,
            "loss_opt": None,
        }
        log_n = -curve[1] / (2 * curve[0]) if curve[0] > 0 else None
        if best in (0, len(at) - 1):
            side, other = ("smallest", "smaller") if best == 0 else ("largest", "larger")
            row["why_none"] = f"its best run is its {side} size: add a {other} one"
        elif log_n is None or not math.log(near[0].n) <= log_n <= math.log(near[-1].n):
            row["why_none"] = "the runs around its best make no parabola with a minimum among them (noise)"
        else:
            row |= {"n_opt": math.exp(log_n), "loss_opt": float(np.polyval(curve, log_n))}
        rows.append(row)
    return rows


def optimal_size_trend(rows: list[dict[str, Any]]) -> tuple[float, float] | None:
    """N_opt = k C^a through the budgets' optimal sizes: (k, a), with two budgets or more."""
    known = [r for r in rows if r["n_opt"] is not None]
    if len(known) < 2:
        return None
    a, log_k = np.polyfit(np.log([r["budget"] for r in known]), np.log([r["n_opt"] for r in known]), 1)
    return math.exp(log_k), float(a)


def describe_isoflop(rows: list[dict[str, Any]]) -> str:
    lines = ["IsoFLOP: the compute-optimal size at each budget (a parabola in log N around its best run)"]
    for r in rows:
        found = (
            f"N_opt = {r['n_opt']:.3g}, loss {r['loss_opt']:.4f} (from {len(r['fitted'])} sizes)"
            if r["n_opt"] is not None
            else r["why_none"]
        )
        lines.append(f"  C = {r['budget']:.3g} FLOPs ({r['sizes']} sizes): {found}")
    if (trend := optimal_size_trend(rows)) is not None:
        lines.append(f"  N_opt = {trend[0]:.3g} * C^{trend[1]:.3f}")
    return "\n".join(lines)


def plot(
    found: list[Point],
    law: Law,
    rows: list[dict[str, Any]],
    metric: str,
    path: Path,
    predicted: tuple[float, float] | None = None,
) -> None:
    """The runs and the law L(N) with a predicted point (N, loss), or the law L(N, D) against each
    run; the IsoFLOP parabolas."""
    plt = pyplot()
    fig, panels = plt.subplots(1, 2 if rows else 1, figsize=(13 if rows else 7, 5), squeeze=False)
    fitted = panels[0][0]
    if law.with_tokens:  # a curve per token count would be one per run: the law against each run
        measured = [p.loss for p in found]
        fitted.plot(measured, [float(law(p.n, p.d)) for p in found], "o", label="runs")
        fitted.plot([min(measured), max(measured)], [min(measured), max(measured)], "-", label="law = run")
        fitted.set(xlabel=f"best {metric}", ylabel=f"the law's {metric}", title="fitted law L(N, D)")
    else:
        largest = max([p.n for p in found] + ([predicted[0]] if predicted else []))
        n = np.geomspace(min(p.n for p in found) / 2, largest * 2, 100)
        fitted.plot([p.n for p in found], [p.loss for p in found], "o", label="runs")
        fitted.plot(n, law(n), "-", label="law")
        if predicted is not None:
            fitted.plot(*predicted, "x", markersize=10, color="black", label="predicted")
        fitted.set(
            xscale="log", xlabel="non-embedding parameters N", ylabel=f"best {metric}", title="fitted law"
        )
    fitted.legend(fontsize=7)
    if rows:
        iso = panels[0][1]
        for r in rows:
            at = [p for p in found if p.budget == r["budget"]]
            (line,) = iso.plot([p.n for p in at], [p.loss for p in at], "o", label=f"C = {r['budget']:.3g}")
            grid = np.geomspace(r["fitted"][0].n, r["fitted"][-1].n, 100)
            iso.plot(grid, np.polyval(r["curve"], np.log(grid)), "-", color=line.get_color())
            if r["n_opt"] is not None:
                iso.plot(r["n_opt"], r["loss_opt"], "*", markersize=14, color=line.get_color())
        iso.set(xscale="log", xlabel="non-embedding parameters N", ylabel=f"best {metric}", title="IsoFLOP")
        iso.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
