"""Compare runs: `python -m gptlab.compare outputs/multirun/DATE/TIME` prints a table of the
run directories below a folder, best val_loss first, read from their files alone (summary.json,
.hydra/, csv/metrics.csv); wandb is never needed.

    --plot runs.png   val_loss curves of every run, and best val_loss against parameters
    --csv / --json    the table for machines, on stdout

Every multirun also prints the table, in job order, when its last job ends (a Hydra callback,
see conf/hydra/default.yaml).
"""

import argparse
import csv
import json
import math
import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.table import Table

from gptlab.runs import without_ckpt_path


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
    return {
        "dir": run_dir,
        # a resumed run's overrides name its checkpoint: not what tells runs apart
        "overrides": without_ckpt_path(list(OmegaConf.load(hydra_dir / "overrides.yaml"))),
        "reference_val_loss": OmegaConf.load(hydra_dir / "config.yaml").get("reference_val_loss"),
        "summary": summary,
    }


def find_runs(folder: Path) -> list[dict[str, Any]]:
    """Every run directory (one with a .hydra/ folder) under folder, in job order."""
    run_dirs = sorted(
        (p.parent for p in folder.rglob(".hydra")),
        key=lambda d: [int(part) if part.isdigit() else part for part in d.relative_to(folder).parts],
    )
    return [load_run(d) for d in run_dirs]


def shared_overrides(runs: list[dict[str, Any]]) -> set[str]:
    """The overrides all runs have in common (none for a single run)."""
    return set.intersection(*(set(run["overrides"]) for run in runs)) if len(runs) > 1 else set()


def runs_table(runs: list[dict[str, Any]], title: str) -> Table:
    with_reference = any(run["reference_val_loss"] is not None for run in runs)
    # overrides every run shares go into the title; the column shows what tells runs apart
    shared = shared_overrides(runs)
    table = Table(title=" ".join([title, *sorted(shared)]))
    table.add_column("run", no_wrap=True)
    table.add_column("overrides", overflow="fold")
    table.add_column("val_loss", justify="right", no_wrap=True)  # the best one
    table.add_column("bpc", justify="right", no_wrap=True)  # bits per character at the best val_loss
    if with_reference:
        table.add_column("ref", justify="right", no_wrap=True)
        table.add_column("diff", justify="right", no_wrap=True)
    for column in ("params", "steps", "train s", "tok/s"):
        table.add_column(column, justify="right", no_wrap=True)
    failures = any(run["summary"] and "error" in run["summary"] for run in runs)
    if failures:
        table.add_column("error", overflow="fold")
    for run in runs:
        summary, reference = run["summary"], run["reference_val_loss"]
        name = run["dir"].name
        overrides = " ".join(o for o in run["overrides"] if o not in shared)
        if summary is None or "error" in summary:
            status = "no summary" if summary is None else "failed"
            row = [name, overrides, status] + [""] * (len(table.columns) - 3)
            if summary is not None:
                row[-1] = summary["error"]
        else:
            best = summary["best_val_loss"]
            bpc = summary.get("best_val_bpc")  # none in summaries from before bits per character
            row = [
                name,
                overrides,
                "not validated" if best is None else f"{best:.4f}",
                "" if bpc is None else f"{bpc:.4f}",
            ]
            if with_reference:
                known = reference is not None and best is not None
                row += [f"{reference:.2f}" if known else "", f"{best - reference:+.3f}" if known else ""]
            row += [
                f"{summary['params']:,}",
                str(summary["steps"]),
                f"{summary['train_seconds']:.0f}",
                f"{summary['tokens_per_second'] or 0:,.0f}",
            ]
            if failures:
                row.append("")
        table.add_row(*row)
    return table


def console() -> Console:
    # a terminal sets its own width; logs and pipes get room for a whole row instead of 80
    return Console(width=None if sys.stdout.isatty() else 140)


class PrintRunsAtMultirunEnd(Callback):
    """Hydra callback: after the last job of a sweep, print the table of its runs."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        console().print(runs_table(find_runs(sweep_dir), title=str(sweep_dir)))


def by_val_loss(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Completed runs, best first, then the failed and unfinished ones."""

    def key(run: dict[str, Any]) -> float:
        summary = run["summary"] or {}
        return summary.get("best_val_loss") or math.inf

    return sorted(runs, key=key)


def records(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One flat dict a run, for --csv and --json."""
    fields = (
        "best_val_loss",
        "best_val_bpc",
        "final_val_loss",
        "params",
        "steps",
        "train_seconds",
        "tokens_per_second",
        "error",
    )
    return [
        {"run_dir": str(run["dir"]), "overrides": " ".join(run["overrides"])}
        | {"reference_val_loss": run["reference_val_loss"]}
        | {f: (run["summary"] or {"error": "no summary.json"}).get(f) for f in fields}
        for run in runs
    ]


def val_loss_curve(run_dir: Path) -> tuple[list[int], list[float]]:
    metrics = run_dir / "csv" / "metrics.csv"
    if not metrics.exists():
        return [], []
    with metrics.open() as f:
        rows = [row for row in csv.DictReader(f) if row.get("val_loss")]
    return [int(row["step"]) + 1 for row in rows], [float(row["val_loss"]) for row in rows]


def plot(runs: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display needed
    import matplotlib.pyplot as plt

    shared = shared_overrides(runs)
    done = [run for run in runs if (run["summary"] or {}).get("best_val_loss") is not None]
    fig, (curves, sizes) = plt.subplots(1, 2, figsize=(13, 5))
    for run in done:
        label = " ".join(o for o in run["overrides"] if o not in shared) or run["dir"].name
        curves.plot(*val_loss_curve(run["dir"]), marker=".", label=label)
        sizes.scatter(run["summary"]["params"], run["summary"]["best_val_loss"])
        sizes.annotate(label, (run["summary"]["params"], run["summary"]["best_val_loss"]), fontsize=7)
    curves.set(xlabel="step", ylabel="val_loss", title="validation loss")
    curves.legend(fontsize=7)
    sizes.set(
        xlabel="parameters", ylabel="best val_loss", title="best val_loss against model size", xscale="log"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m gptlab.compare", description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path, help="a run directory, or a folder holding run directories")
    parser.add_argument(
        "--plot", type=Path, metavar="FILE.png", help="draw val_loss curves and best val_loss by size"
    )
    output = parser.add_mutually_exclusive_group()
    output.add_argument("--csv", action="store_true", help="print CSV instead of the table")
    output.add_argument("--json", action="store_true", help="print JSON instead of the table")
    args = parser.parse_args(argv)
    if not args.folder.is_dir():
        parser.exit(1, f"error: {args.folder} is not a directory: give a run or sweep directory\n")
    runs = by_val_loss(find_runs(args.folder))
    if not runs:
        parser.exit(1, f"error: no run directories (with a .hydra/ folder) under {args.folder}\n")
    if args.json:
        print(json.dumps(records(runs), indent=2))
    elif args.csv:
        rows = records(runs)
        writer = csv.DictWriter(sys.stdout, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    else:
        console().print(runs_table(runs, title=str(args.folder)))
    if args.plot:
        plot(runs, args.plot)
        print(f"wrote {args.plot}", file=sys.stderr)


if __name__ == "__main__":
    main()
