import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.slurm.cluster import SlurmCluster, missing

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


def run_entry(
    entry: str, *arguments: str, cwd: Path = REPO_ROOT, timeout: float = 300
) -> subprocess.CompletedProcess:
    """`python -m gptlab.<entry>` with these arguments and nothing else (a resume, say)."""
    return subprocess.run(
        [sys.executable, "-m", f"gptlab.{entry}", *arguments],
        cwd=cwd,
        env=offline_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def sweep(sweep_dir: Path, *overrides: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """Runs `python -m gptlab.train -m` (a Hydra multirun) for real, into sweep_dir."""
    command = train_command(sweep_dir, *overrides)
    command[3:4] = ["-m", f"hydra.sweep.dir={sweep_dir}"]  # in place of hydra.run.dir
    return subprocess.run(
        command, cwd=REPO_ROOT, env=offline_env(), capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture
def run_train(tmp_path: Path, shakespeare: Path):
    """train() into a fresh run directory under tmp_path."""

    def run(
        *overrides: str, run_name: str = "run", timeout: float = 300, env: dict[str, str] | None = None
    ) -> Result:
        return train(tmp_path / run_name, *overrides, timeout=timeout, env=env)

    return run


@pytest.fixture
def compose():
    """Composes conf/config.yaml with overrides, as `python -m gptlab.train` would."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    def run(*overrides: str, return_hydra_config: bool = False):
        with initialize_config_dir(config_dir=str(REPO_ROOT / "conf"), version_base="1.3"):
            return hydra_compose(
                config_name="config", overrides=list(overrides), return_hydra_config=return_hydra_config
            )

    return run


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SlurmCluster]:
    """A real single-node SLURM cluster (tests/slurm/), started once for the test run. Without
    the packages or root its tests are skipped, except in CI (CI=true), where .ci/run installs
    them; a cluster that does not come up fails the run."""
    if reason := missing():
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI needs the SLURM cluster: {reason}")
        pytest.skip(reason)
    cluster = SlurmCluster(tmp_path_factory.mktemp("slurm"))
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
