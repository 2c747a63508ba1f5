"""gptlab as people install it: a wheel carrying its configs, console scripts, Trainer arguments."""

import inspect
import subprocess
import sys
import zipfile
from pathlib import Path

import lightning
import pytest

from tests.conftest import REPO_ROOT


@pytest.mark.slow
def test_the_wheel_runs_from_any_folder_with_its_own_configs(tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    build = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(wheels)]
    proc = subprocess.run([*build, str(REPO_ROOT)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    (wheel,) = wheels.glob("gptlab-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {"gptlab/conf/config.yaml", "gptlab/conf/model/gpt.yaml", "gptlab/conf/eval.yaml"} <= set(names)
    assert "hydra_plugins/gptlab/__init__.py" in names  # the parallel launcher, where Hydra looks

    # installed on its own (its dependencies are this environment's), away from the repository
    site = tmp_path / "site"
    install = [sys.executable, "-m", "pip", "install", "--no-deps", "--target", str(site), str(wheel)]
    proc = subprocess.run(install, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    elsewhere = tmp_path / "anywhere"
    elsewhere.mkdir()
    env = {"PYTHONPATH": str(site), "PATH": f"{site / 'bin'}:/usr/bin:/bin", "HOME": str(tmp_path)}
    where = subprocess.run(
        [sys.executable, "-c", "import gptlab; print(gptlab.__file__)"],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
    )
    assert where.stdout.startswith(str(site)), where.stdout + where.stderr  # the wheel's copy
    for command in ([sys.executable, "-m", "gptlab.train"], [str(site / "bin" / "gptlab-train")]):
        proc = subprocess.run(
            [*command, "--cfg", "job", "model.n_head=6"],
            cwd=elsewhere,
            env=env,
            capture_output=True,
            text=True,
        )
        assert proc.returncode == 0, proc.stderr
        assert "n_head: 6" in proc.stdout and "max_steps: 2000" in proc.stdout
    # Hydra's own plugin scan finds the parallel launcher in the installed wheel
    launchers = subprocess.run(
        [
            sys.executable,
            "-c",
            "from hydra.core.plugins import Plugins; from hydra.plugins.launcher import Launcher; "
            "print(*(f'{c.__module__}.{c.__name__}' for c in Plugins.instance().discover(Launcher)))",
        ],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
    )
    assert "hydra_plugins.gptlab.ParallelLauncher" in launchers.stdout.split(), launchers.stderr
    for script in ("gptlab-sample", "gptlab-eval", "gptlab-compare", "gptlab-convert", "gptlab-bench"):
        assert (site / "bin" / script).exists()
    assert list(elsewhere.iterdir()) == []  # --cfg job makes no run directory


def test_every_trainer_argument_is_an_override(compose) -> None:
    arguments = set(inspect.signature(lightning.Trainer.__init__).parameters) - {
        "self",
        "logger",
        "callbacks",
    }
    assert set(compose().trainer) - {"_target_"} == arguments
    cfg = compose(
        "trainer.accumulate_grad_batches=4", "trainer.limit_val_batches=0", "trainer.max_time=00:00:10:00"
    )
    assert (cfg.trainer.accumulate_grad_batches, cfg.trainer.limit_val_batches) == (4, 0)


@pytest.mark.slow
def test_a_run_imports_only_what_it_uses(audited_run) -> None:
    """A run without wandb, sweeps or SLURM imports neither wandb nor Optuna (nor its database
    layer) nor submitit: their imports cost start-up time. matplotlib comes with torchmetrics,
    which Lightning imports, whenever it is installed: gptlab itself only imports it to plot."""
    imported = audited_run.imported
    assert not {"wandb", "optuna", "sqlalchemy", "submitit"} & set(imported), imported
    assert imported.get("matplotlib", "torchmetrics").startswith("torchmetrics"), imported


def test_entry_points_that_train_nothing_start_without_lightning() -> None:
    """compare reads run directories: it imports neither torch nor Lightning. sample and convert
    read checkpoints and run the model: torch, without Lightning. (Lightning and what it imports
    take seconds to import.)"""
    code = (
        "import sys; import gptlab.compare; print('torch' in sys.modules, 'lightning' in sys.modules); "
        "import gptlab.sample, gptlab.convert; print('lightning' in sys.modules)"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["False", "False", "False"]
