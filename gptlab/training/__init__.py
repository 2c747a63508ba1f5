"""How a run trains, on top of the plain-PyTorch model: build (a composed config to a run's
objects, one step per concern), module (the LightningModule: steps and metrics), optimizer
(AdamW, Muon with AdamW, and their lr schedules), callbacks (gptlab's own Lightning callbacks),
preemption (stopping and requeueing on signals), pruning (an Optuna trial's reports and its
pruner's answer), summary (summary.json), checkpoint_io (the Trainer's atomic checkpoint writer),
precision (number formats and devices that fit the hardware) and loggers (wandb and CSV, as
gptlab decides them).

Nothing here but build reads a config, and nothing decides where files go: the entry points do."""
