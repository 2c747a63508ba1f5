import io
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.slurm.cluster import SlurmCluster, missing

# One thread for torch in the tests and every process they start: the suite runs on as many
# workers as the machine has cores (pytest-xdist), and a run compared with the same run left
# alone computes the same numbers when both have the same threads
os.environ["OMP_NUM_THREADS"] = "1"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The SLURM tests first, then the slow ones, then the rest (pyproject.toml keeps
    pytest-xdist from reordering its groups by size): the SLURM tests are the longest group (one
    worker runs them all, one after another, on the one cluster) and spend most of it waiting for
    the cluster, so the other worker's tests fit beside them rather than after, the long ones
    started early and the short ones filling in at the end."""
    items.sort(
        key=lambda item: (
            item.get_closest_marker("xdist_group") is None,
            item.get_closest_marker("slow") is None,
        )
    )


if TYPE_CHECKING:
    from omegaconf import DictConfig

REPO_ROOT = Path(__file__).resolve().parents[1]
SHAKESPEARE = REPO_ROOT / "data" / "tinyshakespeare" / "input.txt"

# A model and run small enough for a few seconds of CPU: overrides on top of the defaults.
TINY = [
    "model.n_layer=1",
    "model.n_head=2",
    "model.n_embd=32",
    "model.block_size=16",
    "data.batch_size=8",
    "data.val_tokens=256",
    "trainer.max_steps=30",
    "trainer.val_check_interval=15",
    "optim.warmup_steps=5",
    "callbacks.text_samples=null",  # tested on its own
]


@pytest.fixture(scope="session", autouse=True)
def cache_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """$XDG_CACHE_HOME for the tests and every process they start: a folder of the test run's, which
    its pytest-xdist workers share, not the user's ~/.cache. What it keeps (auto precision's
    measured choices, wandb's and matplotlib's caches) then never carries over from an earlier
    run, nor into the user's own runs."""
    base = tmp_path_factory.getbasetemp()
    folder = (base.parent if "PYTEST_XDIST_WORKER" in os.environ else base) / "cache"
    folder.mkdir(exist_ok=True)
    os.environ["XDG_CACHE_HOME"] = str(folder)
    return folder


@pytest.fixture(scope="session")
def shakespeare() -> Path:
    if not SHAKESPEARE.exists():
        pytest.fail(f"{SHAKESPEARE} is missing: copy Tiny Shakespeare there (.ci/run does)")
    return SHAKESPEARE


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str
    seconds: float
    run_dir: Path


def read_summary(run_dir: Path) -> dict:
    """A run directory's summary.json."""
    return json.loads((run_dir / "summary.json").read_text())


def offline_env() -> dict[str, str]:
    """The environment of a machine with no wandb credentials."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env["NETRC"] = os.devnull
    return env


def train_command(run_dir: Path, *overrides: str) -> list[str]:
    """`python -m gptlab.train` into run_dir, on the shared Tiny Shakespeare unless told otherwise."""
    data = [] if any(o.startswith("data.path=") for o in overrides) else [f"data.path={SHAKESPEARE}"]
    return [sys.executable, "-m", "gptlab.train", f"hydra.run.dir={run_dir}", *overrides, *data]


def train(run_dir: Path, *overrides: str, timeout: float = 300, env: dict[str, str] | None = None) -> Result:
    """Runs `python -m gptlab.train` for real, in a subprocess, into run_dir."""
    start = time.perf_counter()
    proc = subprocess.run(
        train_command(run_dir, *overrides),
        cwd=REPO_ROOT,
        env=offline_env() | (env or {}),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return Result(proc.returncode, proc.stdout, proc.stderr, time.perf_counter() - start, run_dir)


@contextmanager
def command_line(arguments: list[str], env: dict[str, str], cwd: Path) -> Iterator[None]:
    """sys.argv, the environment and the working directory of a command, for as long as it runs
    in this process; put back after, and so is the logging Hydra sets up for it (its job logging
    configuration disables, or reroutes, the loggers that exist when it starts), and Ctrl-C's
    handler, which the command sets."""
    saved = sys.argv, dict(os.environ), os.getcwd(), signal.getsignal(signal.SIGINT)
    loggers = [
        logging.root,
        *(v for v in logging.root.manager.loggerDict.values() if isinstance(v, logging.Logger)),
    ]
    saved_loggers = [(lg, lg.disabled, lg.level, lg.propagate, lg.handlers[:]) for lg in loggers]
    sys.argv = arguments
    os.environ.clear()
    os.environ.update(env)
    os.chdir(cwd)
    try:
        yield
    finally:
        sys.argv = saved[0]
        os.environ.clear()
        os.environ.update(saved[1])
        os.chdir(saved[2])
        signal.signal(signal.SIGINT, saved[3])
        for logger, disabled, level, propagate, handlers in saved_loggers:
            logger.disabled, logger.level, logger.propagate, logger.handlers = (
                disabled,
                level,
                propagate,
                handlers,
            )


def run_here(
    entry: str,
    *arguments: str,
    env: dict[str, str] | None = None,
    cwd: Path = REPO_ROOT,
    run_dir: Path = Path(),
) -> Result:
    """`python -m gptlab.<entry> <arguments>` run in this process: the entry point's main() with
    its command line, what it prints and its exit status, without starting Python and importing
    torch and Lightning again. For runs whose process itself is not what is tested: signals, DDP
    ranks, launchers and schedulers run in processes of their own, and so do tracebacks
    (HYDRA_FULL_ERROR=1)."""
    import importlib

    from hydra.core.global_hydra import GlobalHydra

    from gptlab.runs import run_directory

    main = importlib.import_module(f"gptlab.{entry}").main
    stdout, stderr = io.StringIO(), io.StringIO()
    start, status = time.perf_counter(), 0
    run_directory.job_started = 0.0  # not this process's first job: the job starts now, not the process
    with command_line([f"gptlab.{entry}", *arguments], offline_env() | (env or {}), cwd):
        try:
            with redirect_stdout(stdout), redirect_stderr(stderr):
                main()
        except SystemExit as exit:  # what a process would exit with, its message on stderr
            if isinstance(exit.code, str):
                print(exit.code, file=stderr)
            status = exit.code if isinstance(exit.code, int) else 1
        finally:
            GlobalHydra.instance().clear()
    return Result(status, stdout.getvalue(), stderr.getvalue(), time.perf_counter() - start, run_dir)


def train_here(run_dir: Path, *overrides: str, env: dict[str, str] | None = None) -> Result:
    """train(), in this process (see run_here)."""
    return run_here("train", *train_command(run_dir, *overrides)[3:], env=env, run_dir=run_dir)


def sweep_here(sweep_dir: Path, *overrides: str, env: dict[str, str] | None = None) -> Result:
    """sweep(), in this process (see run_here): Hydra's basic launcher runs the jobs here too."""
    arguments = train_command(sweep_dir, *overrides)[3:]
    arguments[0:1] = ["-m", f"hydra.sweep.dir={sweep_dir}"]  # in place of hydra.run.dir
    return run_here("train", *arguments, env=env, run_dir=sweep_dir)


def started(
    command: list[str], env: dict[str, str] | None = None, new_session: bool = False
) -> subprocess.Popen:
    """A command started now, in a process of its own, its output kept (new_session: it and the
    processes it starts a group of their own, which a test can signal at once)."""
    return subprocess.Popen(
        command,
        cwd=REPO_ROOT,
        env=offline_env() | (env or {}),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=new_session,
    )


def wait_until(done: Callable[[], bool], process: subprocess.Popen, timeout: float = 120) -> None:
    """Waits for done() while the process runs."""
    deadline = time.monotonic() + timeout
    while not done() and process.poll() is None:
        assert time.monotonic() < deadline, f"not done in {timeout} s"
        time.sleep(0.05)


def sweep(sweep_dir: Path, *overrides: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """Runs `python -m gptlab.train -m` (a Hydra multirun) for real, into sweep_dir."""
    command = train_command(sweep_dir, *overrides)
    command[3:4] = ["-m", f"hydra.sweep.dir={sweep_dir}"]  # in place of hydra.run.dir
    return subprocess.run(
        command, cwd=REPO_ROOT, env=offline_env(), capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory: pytest.TempPathFactory, shakespeare: Path) -> Path:
    """One run of the tiny model trained for real, made once for the tests that read a run
    directory or its checkpoints and leave them as they are."""
    run_dir = tmp_path_factory.mktemp("trained") / "run"
    result = train_here(run_dir, *TINY, "trainer.max_steps=60", "optim.lr=1e-2", "logger=csv")
    assert result.returncode == 0, result.stderr
    return run_dir


# Runs gptlab.train with an audit hook that records every rename (how each file came to be) and,
# at its end, which of some packages it imported, and from where
AUDIT = """
import builtins, json, os, runpy, sys
renames, importers = [], {}
sys.addaudithook(lambda event, args: renames.append(args[:2]) if event == "os.rename" else None)
WATCHED = ("wandb", "matplotlib", "optuna", "submitit", "sqlalchemy")
plain_import = builtins.__import__
def recording_import(name, globals=None, locals=None, fromlist=(), level=0):
    top = name.split(".")[0]
    if level == 0 and top in WATCHED and top not in sys.modules:
        importers.setdefault(top, (globals or {}).get("__name__"))
    return plain_import(name, globals, locals, fromlist, level)
builtins.__import__ = recording_import
sys.argv[0] = "train.py"
try:
    runpy.run_module("gptlab.train", run_name="__main__")
finally:
    imported = {top: importers.get(top) for top in WATCHED if top in sys.modules}
    with open(os.environ["AUDIT"], "w") as f:
        json.dump({"renames": [[os.fspath(a) for a in r] for r in renames], "imported": imported}, f)
"""


@dataclass
class AuditedRun:
    run_dir: Path
    renames: list[tuple[Path, Path]]
    imported: dict[str, str | None]  # a watched package the run imported: which module did first


@pytest.fixture(scope="session")
def audited_run(tmp_path_factory: pytest.TempPathFactory, shakespeare: Path) -> AuditedRun:
    """A tiny run (logger=none) under an audit: what it renamed, what it imported."""
    folder = tmp_path_factory.mktemp("audited")
    run_dir, audit = folder / "run", folder / "audit.json"
    proc = subprocess.run(
        [sys.executable, "-c", AUDIT, *train_command(run_dir, *TINY, "logger=none")[3:]],
        cwd=REPO_ROOT,
        env=offline_env() | {"AUDIT": str(audit), "TMPDIR": str(folder)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    recorded = json.loads(audit.read_text())
    renames = [(Path(source), Path(target)) for source, target in recorded["renames"]]
    return AuditedRun(run_dir, renames, recorded["imported"])


@pytest.fixture
def run_train(tmp_path: Path, shakespeare: Path):
    """train_here() into a fresh run directory under tmp_path."""

    def run(*overrides: str, run_name: str = "run", env: dict[str, str] | None = None) -> Result:
        return train_here(tmp_path / run_name, *overrides, env=env)

    return run


def composed(config_name: str, overrides: list[str], run_dir: Path) -> "DictConfig":
    """The config a job of `python -m gptlab.<entry point>` gets, composed here in this process as
    the entry point composes it, with Hydra's runtime set as in that job (HydraConfig.get(),
    ${hydra:runtime.output_dir} is run_dir): the entry point's own steps then run on it here."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    from omegaconf import open_dict

    import gptlab.config  # noqa: F401 (the schemas the configs name)
    import gptlab.runs.cluster  # noqa: F401 (${gptlab.now:...})

    with initialize_config_dir(config_dir=str(REPO_ROOT / "conf"), version_base="1.3"):
        cfg = hydra_compose(config_name=config_name, overrides=overrides, return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(run_dir)
        cfg.hydra.mode = RunMode.RUN
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):  # a job's config has no hydra node (Hydra keeps it in HydraConfig)
        del cfg["hydra"]
    return cfg


@pytest.fixture
def compose():
    """Composes conf/config.yaml with overrides, as `python -m gptlab.train` would."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    import gptlab.config  # noqa: F401 (the schemas the configs name)

    def run(*overrides: str, return_hydra_config: bool = False):
        with initialize_config_dir(config_dir=str(REPO_ROOT / "conf"), version_base="1.3"):
            return hydra_compose(
                config_name="config", overrides=list(overrides), return_hydra_config=return_hydra_config
            )

    return run


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SlurmCluster]:
    """A real single-node SLURM cluster (tests/slurm/), started once per test process. Without
    the packages or root its tests are skipped, except in CI (CI=true), where .ci/run installs
    them; a cluster that does not come up fails the run."""
    if reason := missing():
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI needs the SLURM cluster: {reason}")
        pytest.skip(reason)
    # under pytest-xdist each worker that runs SLURM tests has a cluster of its own
    worker = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw"))
    cluster = SlurmCluster(tmp_path_factory.mktemp("slurm"), first_job_id=1 + 10_000 * worker)
    try:
        cluster.start()
    except RuntimeError as err:
        cluster.stop()
        pytest.fail(str(err))
    yield cluster
    cluster.stop()


@pytest.fixture
def slurm(slurm_cluster: SlurmCluster) -> Iterator[SlurmCluster]:
    """The SLURM cluster, with no job of this test left on it afterwards."""
    yield slurm_cluster
    slurm_cluster.cancel_all()
