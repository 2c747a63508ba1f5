"""What a run directory is: where a run lives, how it resumes, when its job started.

A run directory holds Hydra's record of the run (.hydra/: the composed config and the
command-line overrides), checkpoints/, csv/metrics.csv, wandb/ and summary.json. Resuming
(`ckpt_path=<run dir, or a checkpoint in one>`) continues in that directory with the overrides
the run was started with, and appends to its records.
"""

import contextlib
import fcntl
import json
import logging
import os
import shutil
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
from omegaconf import DictConfig, OmegaConf

from gptlab.atomic import written_whole
from gptlab.faults import SettingError

log = logging.getLogger(__name__)

# where a resume's own Hydra record goes until it has passed its checks (see resume_arguments)
RESUME_RECORD = ".hydra/resume"

# time.time() at the start of the job now running: the process's start for its first job (its
# imports count), the job function's own start for the later jobs of a sweep
job_started: float | None = None


def process_started() -> float:
    return psutil.Process().create_time()


def start_job() -> None:
    global job_started
    job_started = process_started() if job_started is None else time.time()


class RunDirectoryInUse(OSError):
    """Another live process writes the run directory."""


# the run directories this process writes now (see one_writer)
writing: set[Path] = set()


@contextlib.contextmanager
def one_writer(run_dir: Path, wait: bool) -> Iterator[None]:
    """Only this process writes run_dir while the block runs: another that holds it is waited for
    (wait: a sweep's job still running from an earlier launch), or refused in one line naming it
    (RunDirectoryInUse). The lock is fcntl.flock on .hydra/launch.lock, which records who holds it;
    the kernel releases it with the process however that ends (SIGKILL too), so a run whose
    holder died is simply taken over. On NFS, Linux emulates flock with the server's byte-range
    locks, which a lost client keeps until its lease ends (about 90 s). The DDP ranks of a run
    share its directory: only rank 0 takes the lock."""
    run_dir = run_dir.resolve()
    if run_dir in writing:  # taken already, by this process's entry point
        yield
        return
    lock_file = run_dir / ".hydra" / "launch.lock"
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_file, "a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            holder = lock.read().strip() or "another process"
            if not wait:
                raise RunDirectoryInUse(
                    f"{run_dir} is in use by another run ({holder}): wait for it to end, or give another "
                    "hydra.run.dir"
                ) from None
            log.info("this job is still running from an earlier launch (%s): waiting for it to end", holder)
            fcntl.flock(lock, fcntl.LOCK_EX)
        lock.seek(0)
        lock.truncate()
        since = time.strftime("%Y-%m-%d %H:%M:%S")
        lock.write(f"process {os.getpid()} on {socket.gethostname()}, since {since}\n")
        lock.flush()
        writing.add(run_dir)
        try:
            yield
        finally:
            writing.discard(run_dir)


def named_run_dir(arguments: list[str]) -> Path | None:
    """The run directory a single run's command line names (hydra.run.dir=, which a resume adds);
    None for a sweep, or a run whose directory Hydra names by the time."""
    if "-m" in arguments or "--multirun" in arguments:
        return None
    named = [a.split("=", 1)[1] for a in arguments if a.startswith("hydra.run.dir=")]
    return Path(named[-1]) if named else None


def override_key(override: str) -> str:
    """`model.n_head` for `model.n_head=6`, `+x.y=1` or `~x.y`."""
    return override.split("=", 1)[0].lstrip("+~")


def without_ckpt_path(overrides: list[str]) -> list[str]:
    """A run's overrides as they describe it: which checkpoint it last resumed from is not one."""
    return [o for o in overrides if override_key(o) != "ckpt_path"]


def without_seed(overrides: list[str]) -> list[str]:
    """What a run tried, apart from its seed: the runs of a setting over several seeds share it."""
    return [o for o in without_ckpt_path(overrides) if override_key(o) != "seed"]


def run_dir_of(ckpt_path: str | Path) -> Path | None:
    """The run directory of a checkpoint (<run>/checkpoints/x.ckpt) or the directory itself,
    if Hydra's .hydra/ record is there; else None."""
    path = Path(ckpt_path)
    run_dir = path if path.is_dir() else path.parent.parent
    return run_dir if (run_dir / ".hydra" / "overrides.yaml").is_file() else None


def resume_arguments(arguments: list[str]) -> list[str]:
    """The command line of a resumed run: `ckpt_path=<run dir or a checkpoint of one>` (or
    `ckpt_path=last hydra.run.dir=<run dir>`) continues that run in its own directory, with the
    overrides it was started with, then those given now (which may extend it, e.g. a larger
    trainer.max_steps). Hydra and the DDP ranks Lightning starts by re-running the command line
    both see this; applied twice it changes nothing."""
    if "-m" in arguments or "--multirun" in arguments:
        return arguments  # a sweep's jobs each have their own directory
    given = {override_key(a): a.split("=", 1)[1] for a in arguments if "=" in a and not a.startswith("-")}
    ckpt_path = given.get("ckpt_path")
    if ckpt_path in (None, "null"):
        return arguments
    run_dir = Path(given["hydra.run.dir"]) if ckpt_path == "last" and "hydra.run.dir" in given else None
    run_dir = run_dir or run_dir_of(ckpt_path)
    if run_dir is None or not (run_dir / ".hydra" / "overrides.yaml").is_file():
        return arguments  # a checkpoint from elsewhere: a new run, with the overrides given
    saved = OmegaConf.to_container(OmegaConf.load(run_dir / ".hydra" / "overrides.yaml"))
    kept = [o for o in without_ckpt_path(saved) if override_key(o) not in given]
    hydra_record = run_dir / ".hydra" / "hydra.yaml"
    if "experiment" not in given and hydra_record.is_file():
        kept += composed_without_experiment(OmegaConf.load(hydra_record).hydra.runtime.choices, saved)
    added = [] if "hydra.run.dir" in given else [f"hydra.run.dir={run_dir}"]
    if "hydra.output_subdir" not in given:
        # Hydra records this command's config beside the run's own, which it replaces only once
        # the resume is known to be good (record_resume): a refused one leaves the run as it was
        added.append(f"hydra.output_subdir={RESUME_RECORD}")
    # among the overrides given, which Hydra's parser takes only as one run of words (flags such
    # as `--cfg job` may come before or after them)
    overrides = [i for i, a in enumerate(arguments) if "=" in a and not a.startswith("-")]
    first, last = overrides[0], overrides[-1] + 1
    return [*arguments[:first], *kept, *arguments[first:last], *added, *arguments[last:]]


def composed_without_experiment(choices: DictConfig, overrides: list[str]) -> list[str]:
    """`~experiment` (no experiment) for a run composed with none, as runs were before the default
    run became conf/experiment/default.yaml (the classic recipe, then): run again with its own
    overrides, it composes as it did instead of with today's default."""
    named = any(override_key(o) == "experiment" for o in overrides)
    return ["~experiment"] if choices.get("experiment") is None and not named else []


def record_resume(run_dir: Path) -> None:
    """A resume that passed its checks becomes the run's record (.hydra/), so that the next
    resume starts from its settings (a larger trainer.max_steps, say)."""
    record = run_dir / RESUME_RECORD
    if record.is_dir():
        for path in record.glob("*.yaml"):
            path.replace(run_dir / ".hydra" / path.name)
        record.rmdir()


def resume_checkpoint(ckpt_path: str, run_dir: Path) -> Path | None:
    """The checkpoint a run resumes from: a run directory's last.ckpt, `last` for the last.ckpt
    of this run's own directory (None when there is none yet: Lightning's convention is to start
    afresh), or the file given."""
    if ckpt_path == "last":
        last = run_dir / "checkpoints" / "last.ckpt"
        if not last.is_file():
            log.info("ckpt_path=last: no %s yet, so this run starts from step 0", last)
            return None
        return last
    path = Path(ckpt_path)
    if path.is_dir():
        path = path / "checkpoints" / "last.ckpt"
        if not path.is_file():
            raise FileNotFoundError(f"ckpt_path={ckpt_path}: this run directory has no {path} to resume from")
    return path


def check_same_settings(cfg: DictConfig, checkpoint: dict[str, Any], overrides: list[str]) -> None:
    """A resumed run keeps the model, data and optimizer its checkpoint was trained with: an
    override that changes one of them is refused. optim.decay_steps is compared only when given:
    it follows trainer.max_steps, which a resume may extend, and the run keeps its own."""
    saved = {
        "model": checkpoint["hyper_parameters"].get("model", {}),
        "optim": checkpoint["hyper_parameters"].get("optim", {}),
        "data": checkpoint.get("datamodule_hyper_parameters", {}),  # none before gptlab 0.1's resume
    }
    decay_steps_given = any(override_key(o) == "optim.decay_steps" for o in overrides)
    for group, values in saved.items():
        for key, value in values.items():
            if (
                key == "vocab_size"
                or (key == "decay_steps" and not decay_steps_given)
                or key not in cfg[group]
            ):
                continue
            now = cfg[group][key]
            now = OmegaConf.to_container(now) if OmegaConf.is_config(now) else now
            if now != value:
                raise SettingError(
                    f"{group}.{key}={now!r} contradicts the checkpoint, trained with "
                    f"{group}.{key}={value!r}: "
                    "a resumed run keeps its model, data and optimizer settings (to start from its weights "
                    "with other settings, fine-tune with init_from=)"
                )


# what a job without a val_loss (failed, or never validated) returns to the sweeper: the worst
# score, so an Optuna search ranks it last and goes on (hydra-optuna-sweeper stops the whole
# study at a nan)
NO_SCORE = float("inf")


def discard_unstarted(run_dir: Path) -> None:
    """Removes the directory of a run stopped before its first step (Ctrl-C), which holds
    nothing but the records of its start; one that has checkpoints or a summary stays."""
    if run_dir.is_dir() and not ((run_dir / "checkpoints").exists() or (run_dir / "summary.json").exists()):
        shutil.rmtree(run_dir, ignore_errors=True)


def record_failure(run_dir: Path, message: str) -> float:
    """A failed run leaves its reason in its summary.json (a sweep goes on): where it can be
    written, for a storage that refuses writes may be why it failed."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        with written_whole(run_dir / "summary.json") as partial:
            partial.write_text(json.dumps({"error": message}, indent=2) + "\n")
    except OSError as err:
        log.warning("the failure could not be recorded in %s: %s", run_dir / "summary.json", err)
    return NO_SCORE
