"""gptlab: train and study small GPT language models.

train.py sample.py eval.py prepare.py compare.py convert.py bench.py
    the entry points (`python -m gptlab.<name>`): each composes its config, calls the
    library's named steps and reports; they import the library, never each other
cli.py        how an entry point fails: one line, an exit status, HYDRA_FULL_ERROR=1 for the traceback
config.py     the settings' schema (types, defaults) and the checks a type cannot express
model.py      the GPT in plain PyTorch (no Lightning, Hydra or data code), one file
attention_math.py   the lecture's derivation of self-attention, fact by fact
data/         text in, batches out: tokenizers, the prepared corpus, the Lightning data module
training/     how a run trains: the LightningModule, callbacks, checkpoints, precision, loggers
runs/         where runs live and how they are launched: run and sweep directories, cluster
              environments, the sweep launchers and their Hydra plugin, the runs' results
interop/      checkpoints to and from other codebases (nanoGPT)
"""
