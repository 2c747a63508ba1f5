"""gptlab: train and study small GPT language models with Lightning, Hydra and wandb."""
