"""Where runs live and how they are launched. run_directory: a run's one home and how it resumes.
sweep_directory: a multirun's jobs side by side. results: what run directories say, as tables;
seeds: what a setting's seeds say together (confidence intervals, Welch's test); scaling: the
laws fitted through them (gptlab.compare --fit).
cluster: what a cluster launcher says about this process (ranks, restarts, one start time).
launcher and slurm: the sweep launchers (device pool, SLURM), which Hydra loads from
hydra_plugin/, installed as the package hydra_plugins.gptlab."""
