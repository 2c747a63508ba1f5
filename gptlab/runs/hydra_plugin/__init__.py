"""Installed as `hydra_plugins.gptlab` (see pyproject.toml): Hydra takes launchers and sweepers
only from the hydra_plugins package, and imports it in every entry point (so what it imports must
be light: Lightning and Optuna are imported only when a sweep launches). The plugins themselves
are in gptlab.runs: launcher, slurm and optuna_sweeper."""

from gptlab.runs.launcher import DevicePoolLauncher
from gptlab.runs.optuna_sweeper import OptunaStudySweeper
from gptlab.runs.slurm import SlurmSweepLauncher


class ParallelLauncher(DevicePoolLauncher):
    """`hydra/launcher=parallel` (conf/hydra/launcher/parallel.yaml)."""


class SlurmLauncher(SlurmSweepLauncher):
    """`hydra/launcher=slurm` (conf/hydra/launcher/slurm.yaml)."""


class OptunaSweeper(OptunaStudySweeper):
    """`hydra/sweeper=optuna` (conf/hydra/sweeper/optuna.yaml)."""
