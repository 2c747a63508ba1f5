"""How a run trains, on top of the plain-PyTorch model: module (the LightningModule: steps and
metrics), optimizer (AdamW, Muon with AdamW, and their lr schedules), callbacks (gptlab's own
Lightning callbacks), preemption (stopping and requeueing on signals), summary (summary.json),
checkpoint (finding and loading checkpoints as plain data, with torch alone), checkpoint_io (the
Trainer's atomic checkpoint writer), precision (number formats and devices that fit the
hardware) and loggers (wandb and CSV, as gptlab decides them).

Nothing here reads a config file or decides where files go: the entry points do."""
