"""Compare runs: `python -m gptlab.compare outputs/multirun/DATE/TIME` prints a table of the
run directories below a folder, best first, read from their files alone (summary.json,
.hydra/, csv/metrics.csv); wandb is never needed. Runs that differ only in `seed` make one row:
the mean of their best val_loss with its 95% confidence interval (Student's t), and how many seeds.

    --baseline K=V    each row's difference from the row whose overrides have K=V (several:
                      K=V,K2=V2), with its 95% confidence interval and Welch's t-test p-value:
                      a difference whose interval holds 0 may be the seeds' noise
    --time-to LOSS    the seconds each setting took to a val_loss of LOSS: start-up, then training
                      steps up to the first validation at or below it
    --runs            one row a run, seeds not grouped
    --plot runs.png   val_loss curves of every run, and best val_loss against parameters
    --csv / --json    the table for machines, on stdout
    --best-per KEY    the best run for each value of an override (the best optim.lr per model.n_embd)
    --fit [bpc]       a scaling law through the runs' best val_loss (or bpc), and IsoFLOP optima
                      (gptlab/analysis/scaling.py); with --plot, the law is drawn instead of the curves
    --predict N       with --fit: the law's loss at N non-embedding parameters (--tokens D: and D tokens)

Every multirun also prints the table, in job order, when its last job ends (a Hydra callback,
see conf/hydra/default.yaml).
"""

import argparse
import csv
import json
import math
import sys
from pathlib import Path

from gptlab import cli
from gptlab.analysis.results import (
    Comparison,
    best_first,
    best_per,
    console,
    find_baseline,
    find_runs,
    group_seeds,
    plot,
    records,
    runs_table,
)
from gptlab.faults import SettingError


def arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m gptlab.compare", description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path, help="a run directory, or a folder holding run directories")
    parser.add_argument(
        "--plot", type=Path, metavar="FILE.png", help="draw val_loss curves and best val_loss by size"
    )
    parser.add_argument("--runs", action="store_true", help="one row a run: runs that differ in seed apart")
    parser.add_argument(
        "--baseline",
        metavar="KEY=VALUE[,...]",
        help="each row's difference from the row with these overrides, its 95%% CI and Welch's p-value",
    )
    parser.add_argument(
        "--time-to", type=float, metavar="LOSS", help="seconds to the first validation at or below LOSS"
    )
    parser.add_argument(
        "--best-per", metavar="KEY", help="the best run for each value of this override, e.g. model.n_embd"
    )
    parser.add_argument(
        "--fit",
        nargs="?",
        const="val_loss",
        choices=["val_loss", "bpc"],
        help="fit a scaling law to the best val_loss (or bpc) against non-embedding parameters (and tokens)",
    )
    parser.add_argument(
        "--predict", type=float, metavar="N", help="with --fit: the law's loss at N parameters"
    )
    parser.add_argument("--tokens", type=float, metavar="D", help="with --predict: and D tokens")
    output = parser.add_mutually_exclusive_group()
    output.add_argument("--csv", action="store_true", help="print CSV instead of the table")
    output.add_argument("--json", action="store_true", help="print JSON instead of the table")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = arguments(argv)
    with cli.errors_in_one_line():
        if not args.folder.is_dir():
            raise SettingError(f"{args.folder} is not a directory: give a run or sweep directory")
        runs = find_runs(args.folder)
        if not runs:
            raise SettingError(f"no run directories (with a .hydra/ folder) under {args.folder}")
        if args.predict is not None and not args.fit:
            raise SettingError("--predict needs --fit: it asks the fitted law")
        if args.tokens is not None and args.predict is None:
            raise SettingError("--tokens goes with --predict: the tokens of the size predicted")
        for flag, value in (("--predict", args.predict), ("--tokens", args.tokens)):
            if value is not None and not (math.isfinite(value) and value > 0):
                raise SettingError(f"{flag} {value:g}", "give a positive number")
        if (args.json or args.csv) and (args.fit or args.best_per):
            raise SettingError("--json and --csv print the runs table alone: leave out --fit and --best-per")
        if args.time_to is not None and not (math.isfinite(args.time_to) and args.time_to > 0):
            raise SettingError(f"--time-to {args.time_to:g}", "give a positive val_loss")
        groups = best_first([[run] for run in runs] if args.runs else group_seeds(runs))
        baseline = find_baseline(groups, args.baseline) if args.baseline else None
    comparison = Comparison(baseline, args.time_to)
    if args.json:
        print(json.dumps(records(groups, not args.runs, comparison), indent=2))
    elif args.csv:
        rows = records(groups, not args.runs, comparison)
        writer = csv.DictWriter(sys.stdout, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    else:
        console().print(runs_table(groups, str(args.folder), comparison))
    if args.best_per:
        with cli.errors_in_one_line():
            console().print(best_per(groups, args.best_per, title=str(args.folder)))
    if args.fit:
        with cli.errors_in_one_line():
            fit(groups, args)
    elif args.plot:
        plot(groups, args.plot)
        print(f"wrote {args.plot}", file=sys.stderr)


def fit(groups: list, args: argparse.Namespace) -> None:
    """--fit: the law and its parameters, the IsoFLOP optima, a prediction, the plot."""
    from gptlab.analysis import scaling  # SciPy, only when fitting

    points = scaling.points(groups, args.fit)
    law = scaling.fit(points)
    print(law.describe(args.fit))
    if rows := scaling.isoflop(points):
        print(scaling.describe_isoflop(rows))
    predicted = None
    if args.predict is not None:
        if law.with_tokens and args.tokens is None:
            raise SettingError("--predict: the law has D (the runs differ in tokens): give --tokens D too")
        if not law.with_tokens and args.tokens is not None:
            raise SettingError(
                "--tokens: the law has no D (every run saw the same tokens): give --predict N alone"
            )
        value, error = law.predict(args.predict, args.tokens or 1.0)
        predicted = (args.predict, value)
        shown = f"{value:.4f}" + ("" if error is None else f" ± {error:.4f}")
        tokens = f" and D = {args.tokens:.3g}" if law.with_tokens else ""
        print(f"predicted best {args.fit} at N = {args.predict:.3g}{tokens}: {shown}")
    if args.plot:
        scaling.plot(points, law, rows, args.fit, args.plot, predicted)
        print(f"wrote {args.plot}", file=sys.stderr)


if __name__ == "__main__":
    main()
