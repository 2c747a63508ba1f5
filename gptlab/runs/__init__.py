"""Where runs live and how they are launched. run_directory: a run's one home, how it resumes,
one writer at a time. sweep_directory: a multirun's jobs side by side, and its relaunch.
lifecycle: a training run as a process (its command line before Hydra, a failed or crashed
job, a fault's one line, a stop by a signal). cluster: what a cluster launcher says about this
process (ranks, restarts, one start time). launcher and slurm: the sweep launchers (device pool,
SLURM); optuna_sweeper and search_space: the Optuna sweeper and the search a command line
writes. Hydra loads the launchers and the sweeper from hydra_plugin/, installed as the package
hydra_plugins.gptlab. What finished runs say is gptlab.analysis."""
