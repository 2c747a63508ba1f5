"""How an entry point fails: a bad setting, file or checkpoint ends the command with one line on
stderr (`error: ...`, naming the value and what is allowed) and exit status 1; with
HYDRA_FULL_ERROR=1 the traceback instead, as Hydra's own errors do. And how training takes
Ctrl-C outside its steps (during them, gptlab.training.preemption saves first)."""

import importlib.resources
import os
import re
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from hydra.errors import HydraException, InstantiationException
from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

from gptlab.faults import SettingError

# what bad input and faults raise: a setting gptlab refuses (SettingError), a missing or unreadable
# file and storage that refuses a write (OSError, gptlab.faults.StorageFault among them), a config
# Hydra cannot compose or an object it fails to build (a Trainer argument Lightning refuses among
# them: Hydra's instantiate wraps what the Trainer raises), a value OmegaConf refuses (of the wrong
# type, a required one not given), an extra not installed. Anything else is a bug in gptlab and
# shows its traceback, and so does a TypeError or KeyError where a run is built.
ERRORS = (
    SettingError,
    OSError,
    HydraException,
    OmegaConfBaseException,
    ImportError,  # an optional dependency not installed: its message names the extra to install
)


def setting_error(message: str, instead: str | None = None) -> SystemExit:
    """A bad launcher setting ends the sweep before any job starts, in one line (exit status 1),
    as the entry points' own errors do (SettingError's sentence)."""
    return SystemExit(f"error: {SettingError(message, instead)}")


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


def check_group_choices(arguments: list[str], config_module: str = "gptlab.conf") -> None:
    """An option of a config group that does not exist (`model=gtp`, `hydra/sweeper/pruner=medain`)
    ends the command in one line naming the options, before Hydra composes (whose own message
    lists its search path over a dozen lines). Options gptlab's conf/ holds are found as files;
    only for another (Hydra's own, a plugin's) is Hydra's config loader asked."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    conf = importlib.resources.files(config_module)
    try:
        parsed = OverridesParser.create().parse_overrides(
            [a for a in arguments if "=" in a and not a.startswith("-")]
        )
    except HydraException:
        return  # an override Hydra cannot parse: Hydra says so, naming it
    if any(override.get_key_element() == "hydra.searchpath" for override in parsed):
        return  # config folders of your own (experiment options, say): their options are Hydra's to find
    for override in parsed:
        key = override.get_key_element().split("@")[0]
        if override.is_delete() or not conf.joinpath(key).is_dir():
            continue
        try:
            values = override.sweep_string_iterator() if override.is_sweep_override() else [override.value()]
        except HydraException:  # glob(): its options are Hydra's to find
            continue
        for value in values:
            if isinstance(value, str) and not conf.joinpath(key, f"{value}.yaml").is_file():
                folder, _, option = value.rpartition("/")  # experiment=ladder/bigram
                options = group_options("/".join(filter(None, [key, folder])), config_module)
                if option not in options:
                    named = [f"{folder}/{o}" if folder else o for o in options]
                    raise SystemExit(f"error: {key}={value} is not an option: use one of {named}")


def group_options(group: str, config_module: str) -> list[str]:
    """The options of a config group, from every source Hydra reads (its own and the plugins')."""
    from hydra import initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    with initialize_config_module(config_module, version_base="1.3"):
        return GlobalHydra.instance().config_loader().get_group_options(group)


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
