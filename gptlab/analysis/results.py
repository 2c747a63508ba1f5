"""What run directories say of themselves, read from their files alone (summary.json, .hydra/,
csv/metrics.csv; wandb is never needed): the runs below a folder, grouped by seed, best first, as
a table, records or a plot. gptlab.compare prints them, and so does every multirun when its last
job ends (PrintRunsAtMultirunEnd, a Hydra callback in conf/hydra/default.yaml)."""

import csv
import json
import math
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.table import Table

from gptlab.analysis import seeds
from gptlab.faults import SettingError
from gptlab.runs.run_directory import override_key, without_ckpt_path, without_seed


def load_run(run_dir: Path) -> dict[str, Any]:
    """What one run directory says of itself; `summary` is None while it has none (a run that
    failed or is still going)."""
    summary_file = run_dir / "summary.json"
    hydra_dir = run_dir / ".hydra"
    summary = None
    if summary_file.exists():
        try:
            summary = json.loads(summary_file.read_text())
        except json.JSONDecodeError as err:
            summary = {"error": f"unreadable summary.json ({err})"}
    config = OmegaConf.load(hydra_dir / "config.yaml")
    return {
        "dir": run_dir,
        # a resumed run's overrides name its checkpoint: not what tells runs apart
        "overrides": without_ckpt_path(list(OmegaConf.load(hydra_dir / "overrides.yaml"))),
        "reference_val_loss": config.get("reference_val_loss"),
        "flops_budget": config.get("flops_budget"),
        "summary": summary,
    }


def find_runs(folder: Path) -> list[dict[str, Any]]:
    """Every run directory (one with a .hydra/ folder) under folder, in job order."""
    run_dirs = sorted(
        (p.parent for p in folder.rglob(".hydra")),
        key=lambda d: [int(part) if part.isdigit() else part for part in d.relative_to(folder).parts],
    )
    return [load_run(d) for d in run_dirs]


def settings(run: dict[str, Any]) -> tuple[str, ...]:
    """What a run tried, apart from its seed."""
    return tuple(without_seed(run["overrides"]))


def finished(run: dict[str, Any]) -> bool:
    return run["summary"] is not None and "error" not in run["summary"]


def group_seeds(runs: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """The finished runs that differ only in seed, together, in the order of their first run;
    a failed or unfinished run stays on its own."""
    groups: dict[Any, list[dict[str, Any]]] = {}
    for n, run in enumerate(runs):
        groups.setdefault(settings(run) if finished(run) else n, []).append(run)
    return list(groups.values())


def described(group: list[dict[str, Any]]) -> tuple[str, ...] | list[str]:
    """A row's overrides: a group's apart from seed, a single run's all of them."""
    return settings(group[0]) if len(group) > 1 else group[0]["overrides"]


def best_val_losses(group: list[dict[str, Any]]) -> list[float]:
    """The best val_loss of each run of a group; none for a failed or unfinished run, or one never
    validated."""
    if not finished(group[0]):
        return []
    return [run["summary"]["best_val_loss"] for run in group if run["summary"]["best_val_loss"] is not None]


def best_val_loss(group: list[dict[str, Any]]) -> tuple[float | None, float | None]:
    """The mean of a group's best val_loss, and its sample standard deviation (None for fewer
    than two seeds); (None, None) for a failed or unfinished run, or one never validated."""
    values = best_val_losses(group)
    if not values:
        return None, None
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None


def time_to_loss(run: dict[str, Any], loss: float) -> float | None:
    """Seconds from the job's start to its first validation at or below `loss`: its start-up
    (summary.json's startup_seconds, less what trainer.precision=auto spent timing precisions, a
    once-per-shape cost) plus its training time at that step (metrics.csv's train/time, Lightning's
    ThroughputMonitor's, which leaves validations out; the row logged at or before the step, as
    trainer.log_every_n_steps lays them); None if it never got there."""
    metrics = run["dir"] / "csv" / "metrics.csv"
    if not finished(run) or run["summary"].get("startup_seconds") is None or not metrics.exists():
        return None
    with metrics.open() as f:
        rows = list(csv.DictReader(f))
    reached = next((int(r["step"]) for r in rows if r.get("val_loss") and float(r["val_loss"]) <= loss), None)
    if reached is None:
        return None
    times = [float(r["train/time"]) for r in rows if r.get("train/time") and int(r["step"]) <= reached]
    if not times:
        return None
    return run["summary"]["startup_seconds"] - run["summary"].get("precision_seconds", 0.0) + times[-1]


def step_milliseconds(group: list[dict[str, Any]]) -> float | None:
    """A training step's time, from the tokens a step sees and the tokens a second of training steps."""
    rates = [
        1e3 * run["summary"]["tokens"] / run["summary"]["steps"] / run["summary"]["tokens_per_second"]
        for run in group
        if finished(run) and run["summary"].get("tokens_per_second") and run["summary"].get("steps")
    ]
    return statistics.fmean(rates) if rates else None


@dataclass(frozen=True)
class Comparison:
    """What compare's table adds to the runs' own figures: each group's difference from a baseline
    group (--baseline), and the time each run took to a val_loss (--time-to)."""

    baseline: list[dict[str, Any]] | None = None
    time_to: float | None = None


def find_baseline(groups: list[list[dict[str, Any]]], spec: str) -> list[dict[str, Any]]:
    """The group whose overrides hold every KEY=VALUE of `spec` (comma-separated); numbers compare
    as numbers (Hydra records optim.lr=1e-3 of a sweep as optim.lr=0.001)."""
    wanted = [pair.split("=", 1) for pair in spec.split(",")]
    if not all(len(pair) == 2 for pair in wanted):
        raise SettingError(f"--baseline {spec}", "give KEY=VALUE[,KEY=VALUE...], e.g. optim=adamw")

    def value(group: list[dict[str, Any]], key: str) -> str | None:
        return next(
            (o.split("=", 1)[1] for o in described(group) if override_key(o) == key and "=" in o), None
        )

    def same(a: str | None, b: str) -> bool:
        try:
            return a is not None and float(a) == float(b)
        except ValueError:
            return a == b

    matching = [group for group in groups if all(same(value(group, key), v) for key, v in wanted)]
    if len(matching) == 1:
        return matching[0]
    if matching:
        raise SettingError(
            f"--baseline {spec}: {len(matching)} groups of runs have it; add KEY=VALUE to tell one"
        )
    key, _ = next(pair for pair in wanted if not any(same(value(g, pair[0]), pair[1]) for g in groups))
    found = sorted({v for group in groups if (v := value(group, key)) is not None})
    raise SettingError(
        f"--baseline {spec}: no group of runs has {key} so; "
        + (f"its values here: {', '.join(found)}" if found else f"no run here has an override {key}=...")
    )


def shared_overrides(runs: list[dict[str, Any]]) -> set[str]:
    """The overrides all runs have in common (none for a single run)."""
    return set.intersection(*(set(run["overrides"]) for run in runs)) if len(runs) > 1 else set()


def runs_table(
    groups: list[list[dict[str, Any]]], title: str, comparison: Comparison = Comparison()
) -> Table:
    """One row a group of runs (see group_seeds; `--runs`: one a run). A group's figures are the
    means over its seeds; its val_loss also the 95% confidence interval of that mean, and with a
    baseline group the difference from it, that difference's 95% confidence interval and Welch's
    p-value (gptlab/analysis/seeds.py)."""
    runs = [run for group in groups for run in group]
    with_reference = any(run["reference_val_loss"] is not None for run in runs)
    with_seeds = any(len(group) > 1 for group in groups)
    # overrides every run shares go into the title; the column shows what tells runs apart
    shared = shared_overrides(runs)
    table = Table(title=" ".join([title, *sorted(shared)]))
    table.add_column("run", overflow="fold", max_width=24)  # a group lists each of its runs
    table.add_column("overrides", overflow="fold", min_width=20)
    # the best one (the mean over seeds, ± the half width of its 95% confidence interval)
    table.add_column("val_loss ± 95% CI" if with_seeds else "val_loss", justify="right", no_wrap=True)
    if with_seeds:
        table.add_column("n", justify="right", no_wrap=True)
    if comparison.baseline is not None:
        table.add_column("vs baseline ± 95% CI", justify="right", no_wrap=True)
        table.add_column("p", justify="right", no_wrap=True)
    if comparison.time_to is not None:
        table.add_column(f"s to {comparison.time_to:g}", justify="right", no_wrap=True)
    table.add_column("bpc", justify="right", no_wrap=True)  # bits per character at the best val_loss
    if with_reference:
        table.add_column("ref", justify="right", no_wrap=True)
        table.add_column("diff", justify="right", no_wrap=True)
    for column in ("params", "steps", "step ms", "train s", "tok/s"):
        table.add_column(column, justify="right", no_wrap=True)
    failures = any(run["summary"] and "error" in run["summary"] for run in runs)
    if failures:
        table.add_column("error", overflow="fold")
    for group in groups:
        first = group[0]
        summary, reference = first["summary"], first["reference_val_loss"]
        name = " ".join(run["dir"].name for run in group)
        overrides = " ".join(o for o in described(group) if o not in shared)
        if not finished(first):
            status = "no summary" if summary is None else "failed"
            row = [name, overrides, status] + [""] * (len(table.columns) - 3)
            if summary is not None:
                row[-1] = summary["error"]
            table.add_row(*row)
            continue
        losses = best_val_losses(group)
        bpc = group_mean(group, "best_val_bpc")  # none in summaries from before bits per character
        val_loss = str(seeds.interval(losses)) if losses else "not validated"
        if pruned(group):
            val_loss += " pruned"  # its best until the Optuna study stopped it
        row = [name, overrides, val_loss]
        if with_seeds:
            row.append(str(len(group)))
        if comparison.baseline is not None:
            row += versus_baseline(group, comparison.baseline)
        if comparison.time_to is not None:
            row.append(time_to_column(group, comparison.time_to))
        row.append("" if bpc is None else f"{bpc:.4f}")
        if with_reference:
            known = reference is not None and losses
            mean = statistics.fmean(losses) if losses else 0.0
            row += [f"{reference:.2f}" if known else "", f"{mean - reference:+.3f}" if known else ""]
        step_ms = step_milliseconds(group)
        row += [
            f"{summary['params']:,}",
            str(summary["steps"]),
            "" if step_ms is None else f"{step_ms:.1f}",
            f"{group_mean(group, 'train_seconds'):.0f}",
            f"{group_mean(group, 'tokens_per_second') or 0:,.0f}",
        ]
        if failures:
            row.append("")
        table.add_row(*row)
    return table


def versus_baseline(group: list[dict[str, Any]], baseline: list[dict[str, Any]]) -> list[str]:
    """The difference and p columns of a group's row."""
    if group is baseline:
        return ["baseline", ""]
    losses, baseline_losses = best_val_losses(group), best_val_losses(baseline)
    if not losses or not baseline_losses:
        return ["", ""]
    difference = seeds.difference(losses, baseline_losses)
    shown = f"{difference.value:+.4f}" + (
        "" if difference.half_width is None else f" ± {difference.half_width:.4f}"
    )
    return [shown, "" if difference.p is None else f"{difference.p:.3g}"]


def time_to_column(group: list[dict[str, Any]], loss: float) -> str:
    """The mean seconds to a val_loss (± its 95% CI), or how many seeds got there if not all did."""
    times = [t for run in group if (t := time_to_loss(run, loss)) is not None]
    if len(times) < len(group):
        return f"{len(times)} of {len(group)} got there"
    return seeds.interval(times).shown(1)


def best_per(groups: list[list[dict[str, Any]]], key: str, title: str) -> Table:
    """The best row for each value of one override (groups come best first): `--best-per
    model.n_embd` shows which optim.lr won at each width."""
    best: dict[str, list[dict[str, Any]]] = {}
    for group in groups:
        values = [o.split("=", 1)[1] for o in described(group) if "=" in o and override_key(o) == key]
        if values and best_val_loss(group)[0] is not None:
            best.setdefault(values[0], group)
    if not best:
        raise SettingError(f"--best-per {key}: no finished run has the override {key}=...")
    shared = shared_overrides([run for group in groups for run in group])
    table = Table(title=f"{title}: the best run for each {key}")
    for column in (key, "run", "overrides", "val_loss ± 95% CI"):
        table.add_column(column, justify="left" if column == "overrides" else "right")

    def order(value: str) -> tuple[int, float | str]:
        try:
            return 0, float(value)
        except ValueError:
            return 1, value

    for value in sorted(best, key=order):
        group = best[value]
        others = " ".join(o for o in described(group) if o not in shared and override_key(o) != key)
        shown = str(seeds.interval(best_val_losses(group)))
        table.add_row(value, " ".join(run["dir"].name for run in group), others, shown)
    return table


def pruned(group: list[dict[str, Any]]) -> bool:
    """Whether an Optuna search's pruner stopped a run of the group early."""
    return any(run["summary"].get("pruned") for run in group if run["summary"])


def group_mean(group: list[dict[str, Any]], field: str) -> float | None:
    """The mean of one summary field over a group's runs that have it (their value, if they agree)."""
    values = [run["summary"][field] for run in group if run["summary"].get(field) is not None]
    if not values:
        return None
    return values[0] if len(set(values)) == 1 else statistics.fmean(values)


def console() -> Console:
    # a terminal sets its own width; logs and pipes get room for a whole row instead of 80
    return Console(width=None if sys.stdout.isatty() else 200)


class PrintRunsAtMultirunEnd(Callback):
    """Hydra callback: after the last job of a sweep, print the table of its runs."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        console().print(runs_table(group_seeds(find_runs(sweep_dir)), title=str(sweep_dir)))
        wandb_dir = sweep_dir / "wandb"
        if wandb_dir.is_dir():
            print(f"wandb, the whole sweep: wandb leet {wandb_dir}")
            if any(wandb_dir.glob("offline-run-*")):
                print(f"wandb, upload it: wandb sync {wandb_dir}/offline-run-*")


def best_first(groups: list[list[dict[str, Any]]]) -> list[list[dict[str, Any]]]:
    """Groups with finished runs, best first, then the failed and unfinished. Best is the lowest
    (mean) best_val_bpc, which compares runs whatever their tokenizer (val_loss is per token);
    best_val_loss if a run's summary has no bpc (written before gptlab logged it)."""
    finished = [g for g in groups if best_val_loss(g)[0] is not None]
    by_bpc = all(group_mean(g, "best_val_bpc") is not None for g in finished)

    def key(group: list[dict[str, Any]]) -> float:
        if best_val_loss(group)[0] is None:  # failed, unfinished (still running) or never validated
            return math.inf
        best = group_mean(group, "best_val_bpc") if by_bpc else best_val_loss(group)[0]
        return math.inf if best is None else best

    return sorted(groups, key=key)


SUMMARY_FIELDS = (
    "best_val_loss",
    "best_val_bpc",
    "final_val_loss",
    "params",
    "steps",
    "train_seconds",
    "tokens_per_second",
)


def records(
    groups: list[list[dict[str, Any]]], seeds_grouped: bool, comparison: Comparison = Comparison()
) -> list[dict[str, Any]]:
    """One flat dict a row, for --csv and --json. With seeds grouped, a row's figures are the
    means over its runs (run_dir: their directories, space-separated), with n_seeds,
    best_val_loss_mean, best_val_loss_std and best_val_loss_ci95 (the half width of its 95%
    confidence interval; null for one seed); with a baseline, the difference from it
    (vs_baseline, vs_baseline_ci95, p_value); with --time-to, seconds_to_loss (null unless every
    seed got there) and its ci95; step_ms, a training step's time."""
    rows = []
    for group in groups:
        first = group[0]
        row: dict[str, Any] = {
            "run_dir": " ".join(str(run["dir"]) for run in group),
            "overrides": " ".join(described(group)),
            "reference_val_loss": first["reference_val_loss"],
        }
        if not finished(first):
            row |= {field: None for field in SUMMARY_FIELDS}
        else:
            row |= {field: group_mean(group, field) for field in SUMMARY_FIELDS}
        row["step_ms"] = step_milliseconds(group)
        losses = best_val_losses(group)
        if seeds_grouped:
            mean, std = best_val_loss(group)
            ci95 = seeds.interval(losses).half_width if losses else None
            row |= {"n_seeds": len(group), "best_val_loss_mean": mean, "best_val_loss_std": std}
            row["best_val_loss_ci95"] = ci95
        if comparison.baseline is not None:
            baseline_losses = best_val_losses(comparison.baseline)
            difference = seeds.Difference(None, None, None)  # a row never validated
            if group is comparison.baseline:
                difference = seeds.Difference(0.0, None, None)
            elif losses and baseline_losses:
                difference = seeds.difference(losses, baseline_losses)
            row |= {
                "vs_baseline": difference.value,
                "vs_baseline_ci95": difference.half_width,
                "p_value": difference.p,
            }
        if comparison.time_to is not None:
            times = [t for run in group if (t := time_to_loss(run, comparison.time_to)) is not None]
            every_seed = bool(times) and len(times) == len(group)
            reached = seeds.interval(times) if every_seed else seeds.Interval(None, None, len(times))
            row |= {"seconds_to_loss": reached.mean, "seconds_to_loss_ci95": reached.half_width}
        row["pruned"] = pruned(group)
        row["error"] = (first["summary"] or {"error": "no summary.json"}).get("error")
        rows.append(row)
    return rows


def val_loss_curve(run_dir: Path) -> tuple[list[int], list[float]]:
    metrics = run_dir / "csv" / "metrics.csv"
    if not metrics.exists():
        return [], []
    with metrics.open() as f:
        rows = [row for row in csv.DictReader(f) if row.get("val_loss")]
    return [int(row["step"]) + 1 for row in rows], [float(row["val_loss"]) for row in rows]


def pyplot() -> Any:
    """matplotlib.pyplot, drawing to files only (no display needed); imported when a plot is asked for."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot(groups: list[list[dict[str, Any]]], path: Path) -> None:
    plt = pyplot()
    runs = [run for group in groups for run in group]
    shared = shared_overrides(runs)
    done = [group for group in groups if best_val_loss(group)[0] is not None]
    fig, (curves, sizes) = plt.subplots(1, 2, figsize=(13, 5))
    for group in done:
        label = " ".join(o for o in described(group) if o not in shared) or group[0]["dir"].name
        for run in group:
            seed = [o for o in run["overrides"] if override_key(o) == "seed"] if len(group) > 1 else []
            curves.plot(*val_loss_curve(run["dir"]), marker=".", label=" ".join([label, *seed]))
        loss = seeds.interval(best_val_losses(group))
        params = group[0]["summary"]["params"]
        # error bars: the 95% confidence interval of the mean over the seeds
        sizes.errorbar(params, loss.mean, yerr=loss.half_width or 0, fmt="o", capsize=4)
        sizes.annotate(label, (params, loss.mean), fontsize=7)
    curves.set(xlabel="step", ylabel="val_loss", title="validation loss")
    curves.legend(fontsize=7)
    sizes.set(
        xlabel="parameters",
        ylabel="best val_loss (mean ± 95% CI over seeds)",
        title="best val_loss against model size",
        xscale="log",
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
