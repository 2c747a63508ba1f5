"""Installed as `hydra_plugins.gptlab` (see pyproject.toml): Hydra takes launchers only from the
hydra_plugins package. The launchers themselves are gptlab.launcher and gptlab.slurm."""

from gptlab.runs.launcher import DevicePoolLauncher
from gptlab.runs.slurm import SlurmSweepLauncher


class ParallelLauncher(DevicePoolLauncher):
    """`hydra/launcher=parallel` (conf/hydra/launcher/parallel.yaml)."""


class SlurmLauncher(SlurmSweepLauncher):
    """`hydra/launcher=slurm` (conf/hydra/launcher/slurm.yaml)."""
