"""gptlab: train and study small GPT language models.

train.py sample.py eval.py prepare.py compare.py convert.py, bench/
    the entry points (`python -m gptlab.<name>`): each composes its config, calls the
    library's named steps and reports; they import the library, never each other
cli.py        how an entry point fails: one line, an exit status, HYDRA_FULL_ERROR=1 for the traceback
faults.py     what fails without being a bug: bad input (SettingError), storage, divergence
config.py     the settings' schema (types, defaults) and the checks a type cannot express
model.py      the GPT in plain PyTorch (no Lightning, Hydra or data code), one file
generation.py a prompt's continuations, sampled as one batch and decoded
checkpoint.py checkpoints found and loaded as plain data, with torch alone
atomic.py     files written whole or not at all
attention_math.py   the lecture's derivation of self-attention, fact by fact
data/         text in, batches out: tokenizers, the prepared corpus, the Lightning data module
training/     how a run trains: the LightningModule, optimizers, callbacks, precision, loggers
runs/         where runs live and how they are launched: run and sweep directories, a run's life
              as a process, cluster environments, the sweep launchers and their Hydra plugin
analysis/     what finished runs say: tables, seeds' confidence intervals, scaling laws
interop/      checkpoints to and from other codebases (nanoGPT, Hugging Face transformers)
"""
