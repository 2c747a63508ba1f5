"""How an entry point fails: a bad setting, file or checkpoint ends the command with one line on
stderr (`error: ...`, naming the value and what is allowed) and exit status 1; with
HYDRA_FULL_ERROR=1 the traceback instead, as Hydra's own errors do. And how training takes
Ctrl-C outside its steps (during them, gptlab.training.preemption saves first)."""

import os
import re
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from hydra.errors import InstantiationException
from omegaconf.errors import MissingMandatoryValue

# what bad input raises: a setting out of range or of the wrong type, a required one not given, a
# missing or unreadable file, an object the config failed to build (a Trainer argument Lightning
# refuses among them: Hydra's instantiate wraps what the Trainer raises)
ERRORS = (
    ValueError,
    TypeError,
    KeyError,
    OSError,
    MissingMandatoryValue,
    InstantiationException,
)


def full_error_wanted() -> bool:
    return os.environ.get("HYDRA_FULL_ERROR") == "1"


def one_line(err: BaseException) -> str:
    """One line for what went wrong: for an object the config failed to build, the error it
    raised, named by its config key."""
    if isinstance(err, InstantiationException) and err.__cause__ is not None:
        message = " ".join(str(err.__cause__).split())
        key = re.search(r"full_key: (\S+)", str(err))
        return message if key is None or key.group(1) in message else f"{key.group(1)}: {message}"
    if isinstance(err, MissingMandatoryValue):
        return f"{err.full_key} is required: give {err.full_key}=..."
    if isinstance(err, KeyError) and err.args:  # str() of a KeyError is its key, quoted
        return " ".join(str(err.args[0]).split())
    return " ".join(str(err).split())


@contextmanager
def errors_in_one_line() -> Iterator[None]:
    """Around an entry point's work: bad input (ERRORS) exits with its one line, status 1."""
    try:
        yield
    except ERRORS as err:
        if full_error_wanted():
            raise
        sys.exit(f"error: {one_line(err)}")


# the exit status of a command stopped by Ctrl-C, as of a process SIGINT killed
STOPPED_BY_CTRL_C = 128 + signal.SIGINT


class Interrupted(BaseException):
    """Ctrl-C before the first step. A BaseException, like KeyboardInterrupt, but not one:
    Lightning turns a KeyboardInterrupt into a shutdown of its own that exits with status 1."""


class CtrlC:
    """SIGINT outside training (StopWhenPreempted has it during training). While Hydra sets a job
    up (composes, makes its directory) and while a run closes its records, Ctrl-C is held: the
    records are finished whole, and a job (a sweep's next) stops as it starts, where its
    directory is known. From a job's start to its training's, Ctrl-C stops it at once."""

    held = False

    @classmethod
    def hold(cls) -> None:
        signal.signal(signal.SIGINT, cls.remember)

    @classmethod
    def remember(cls, signum: int, frame: object) -> None:
        cls.held = True

    @classmethod
    def stop_at_once(cls) -> None:
        signal.signal(signal.SIGINT, cls.interrupt)
        if cls.held:
            raise Interrupted

    @staticmethod
    def interrupt(signum: int, frame: object) -> None:
        raise Interrupted
