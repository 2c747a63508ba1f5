"""Installed as `hydra_plugins.gptlab` (see pyproject.toml): Hydra takes launchers only from the
hydra_plugins package. The launcher itself is gptlab.launcher."""

from gptlab.launcher import DevicePoolLauncher


class ParallelLauncher(DevicePoolLauncher):
    """`hydra/launcher=parallel` (conf/hydra/launcher/parallel.yaml)."""
