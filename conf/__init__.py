"""gptlab's Hydra configs, installed as the package gptlab.conf (see pyproject.toml)."""
