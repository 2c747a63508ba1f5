"""How an entry point fails: a bad setting, file or checkpoint ends the command with one line on
stderr (`error: ...`, naming the value and what is allowed) and exit status 1; with
HYDRA_FULL_ERROR=1 the traceback instead, as Hydra's own errors do."""

import os
import re
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
