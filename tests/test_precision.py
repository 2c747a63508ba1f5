"""trainer.precision=auto and float32_matmul_precision=auto, on the devices this machine has
(no device is pretended: what each resolves to is checked against what the hardware says)."""

from pathlib import Path

import pytest
import torch
import yaml

from gptlab.training.precision import auto_precision, pick_device, resolve_float32_matmul
from tests.conftest import TINY

CPUINFO = Path("/proc/cpuinfo")


def cpu_flags() -> set[str]:
    """The CPU's feature flags as the Linux kernel lists them."""
    for line in CPUINFO.read_text().splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def run_settings(run_dir: Path) -> dict:
    """The config the run logged (hparams.yaml of its CSV logger): resolved, as the Trainer got it."""
    return yaml.safe_load((run_dir / "csv" / "hparams.yaml").read_text())


@pytest.mark.skipif(not CPUINFO.exists(), reason="reads the CPU's flags from /proc/cpuinfo (Linux)")
def test_auto_precision_on_this_cpu_is_bf16_mixed_only_where_it_computes_bf16(run_train) -> None:
    native = bool({"avx512_bf16", "amx_bf16"} & cpu_flags())
    expected = "bf16-mixed" if native else "32-true"

    result = run_train(*TINY, "trainer.max_steps=2", "trainer.accelerator=cpu", "logger=csv")

    assert result.returncode == 0, result.stderr
    settings = run_settings(result.run_dir)
    assert settings["trainer"]["precision"] == expected
    assert settings["float32_matmul_precision"] == "highest"  # TF32 is a GPU's
    log = (result.run_dir / "train.log").read_text()
    assert f"trainer.precision=auto: {expected}, as " in log
    if native:  # Lightning says so when it runs under bf16 autocast
        assert "Using bfloat16 Automatic Mixed Precision" in result.stdout + result.stderr + log


def test_an_explicit_precision_is_kept(run_train) -> None:
    result = run_train(
        *TINY,
        "trainer.max_steps=2",
        "trainer.precision=32-true",
        "float32_matmul_precision=medium",
        "logger=csv",
    )

    assert result.returncode == 0, result.stderr
    settings = run_settings(result.run_dir)
    assert settings["trainer"]["precision"] == "32-true"
    assert settings["float32_matmul_precision"] == "medium"
    assert "trainer.precision=auto" not in (result.run_dir / "train.log").read_text()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_auto_precision_on_this_gpu() -> None:
    ampere_or_later = torch.cuda.get_device_capability() >= (8, 0)
    precision, reason = auto_precision(pick_device("auto"))
    assert precision == ("bf16-mixed" if ampere_or_later else "32-true"), reason
    assert resolve_float32_matmul("auto", pick_device("auto")) == ("high" if ampere_or_later else "highest")
    # the GPU's own choices do not leak to a run told to use the CPU
    assert resolve_float32_matmul("auto", torch.device("cpu")) == "highest"
