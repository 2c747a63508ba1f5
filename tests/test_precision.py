"""trainer.precision=auto and float32_matmul_precision=auto, on the devices this machine has
(no device is pretended: what each resolves to is checked against what the hardware says), and
the choice by measurement on CPUs with native bf16: its timing with an injected clock, its cache
shared by processes (real ones, started together), its inheritance by the processes a run starts."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from gptlab.config import OptimConfig
from gptlab.model import GPTConfig
from gptlab.training.build import time_steps
from gptlab.training.precision import (
    CHOICES_VARIABLE,
    auto_precision,
    measured_choice,
    pick_device,
    resolve_float32_matmul,
    step_times,
)
from tests.conftest import TINY, offline_env

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
def test_auto_precision_on_this_cpu_is_the_faster_one_where_bf16_is_native(run_train, tmp_path: Path) -> None:
    native = bool({"avx512_bf16", "amx_bf16"} & cpu_flags())
    cache = {"XDG_CACHE_HOME": str(tmp_path / "cache")}

    result = run_train(*TINY, "trainer.max_steps=2", "trainer.accelerator=cpu", "logger=csv", env=cache)

    assert result.returncode == 0, result.stderr
    precision = run_settings(result.run_dir)["trainer"]["precision"]
    assert run_settings(result.run_dir)["float32_matmul_precision"] == "highest"  # TF32 is a GPU's
    log = (result.run_dir / "train.log").read_text()
    if not native:  # bf16 emulated: never faster, nothing to measure
        assert precision == "32-true" and "trainer.precision=auto: 32-true, as no native bf16" in log
        return
    # timed, and the faster one taken: the cache holds what was measured
    (entry,) = json.loads((tmp_path / "cache" / "gptlab" / "precision.json").read_text()).values()
    seconds = entry["seconds"]
    assert precision == min(seconds, key=seconds.get)
    assert f"trainer.precision=auto: {precision}, as a step of this model took " in log
    assert "(measured now;" in log
    if precision == "bf16-mixed":  # Lightning says so when it runs under bf16 autocast
        assert "Using bfloat16 Automatic Mixed Precision" in result.stdout + result.stderr + log

    again = run_train(*TINY, "trainer.max_steps=2", "logger=csv", run_name="again", env=cache)
    assert again.returncode == 0, again.stderr
    assert run_settings(again.run_dir)["trainer"]["precision"] == precision
    assert f"(measured {entry['measured_at']};" in (again.run_dir / "train.log").read_text()


class FakeClock:
    """A clock that steps advance: each precision's step costs its own seconds, and one step in
    five of bf16-mixed is slowed by a spike (another process, say), which medians leave out."""

    def __init__(self, costs: dict[str, float]):
        self.now, self.costs, self.steps = 0.0, costs, []

    def __call__(self) -> float:
        return self.now

    def step(self, precision: str) -> None:
        self.steps.append(precision)
        spike = 1.0 if precision == "bf16-mixed" and len(self.steps) % 5 == 0 else 0.0
        self.now += self.costs[precision] + spike


def test_step_times_are_medians_of_alternating_rounds() -> None:
    clock = FakeClock({"32-true": 0.030, "bf16-mixed": 0.025})

    seconds = step_times(clock.step, clock, rounds=5)

    assert seconds == pytest.approx({"32-true": 0.030, "bf16-mixed": 0.025})
    # one warm-up step each, one to size the rounds, then rounds of 3 steps (about 0.1 s), alternating
    rounds = clock.steps[3:]
    assert clock.steps[:3] == ["32-true", "bf16-mixed", "32-true"] and len(rounds) == 5 * 2 * 3
    firsts = [rounds[i] for i in range(0, len(rounds), 3)]
    assert firsts == ["32-true", "bf16-mixed", "bf16-mixed", "32-true"] * 2 + ["32-true", "bf16-mixed"]


def test_a_slow_model_is_timed_for_one_round_only() -> None:
    clock = FakeClock({"32-true": 16.0, "bf16-mixed": 8.0})  # the lecture's model on a 2-core CPU

    seconds = step_times(clock.step, clock, rounds=5, budget_seconds=5.0)

    assert len(clock.steps) == 3 + 2  # warm-ups, sizing, one round of one step each
    assert seconds["bf16-mixed"] < seconds["32-true"]


def test_a_measured_choice_is_the_faster_and_is_measured_once(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.delenv(CHOICES_VARIABLE, raising=False)
    measured = []

    def measure(seconds: dict[str, float]):
        return lambda: measured.append(seconds) or seconds

    precision, reason = measured_choice("model A", measure({"32-true": 0.034, "bf16-mixed": 0.040}))
    assert precision == "32-true"
    assert reason.startswith("a step of this model took 34.0 ms in it against 40.0 ms in bf16-mixed")
    assert precision == measured_choice("model A", measure({"32-true": 1.0, "bf16-mixed": 0.1}))[0]
    assert measured_choice("model B", measure({"32-true": 0.2, "bf16-mixed": 0.1}))[0] == "bf16-mixed"
    assert len(measured) == 2  # model A's second choice came from the cache

    # a process this one starts (a DDP rank) takes this one's choice, whatever its cache holds
    (tmp_path / "gptlab" / "precision.json").unlink()
    child = subprocess.run(
        [sys.executable, "-c", CHOOSE, "model B", "0.1", "0.2"], capture_output=True, text=True, check=True
    )
    assert child.stdout.startswith("bf16-mixed a step of this model took")
    assert f"the choice of process {os.getpid()}, which started this one" in child.stdout


# measured_choice(key) in a process of its own, with the times its measurement would give
CHOOSE = """
import sys, time
from gptlab.training.precision import measured_choice
key, fp32, bf16 = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
def measure():
    time.sleep(0.5)  # long enough for the other process to ask meanwhile
    return {"32-true": fp32, "bf16-mixed": bf16}
print(*measured_choice(key, measure))
"""


def test_a_near_tie_goes_to_float32_and_a_damaged_cache_is_measured_again(
    monkeypatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.delenv(CHOICES_VARIABLE, raising=False)
    # bf16 2% faster: within the margin, so float32, exact, is kept
    assert measured_choice("tie", lambda: {"32-true": 0.100, "bf16-mixed": 0.098})[0] == "32-true"
    assert measured_choice("win", lambda: {"32-true": 0.100, "bf16-mixed": 0.090})[0] == "bf16-mixed"
    cache = tmp_path / "gptlab" / "precision.json"
    cache.write_text(json.dumps({"tie": {"seconds": {"32-true": 0.1}}}))  # half an entry
    assert measured_choice("tie", lambda: {"32-true": 0.2, "bf16-mixed": 0.1})[0] == "bf16-mixed"


def test_runs_starting_together_measure_once_and_agree(tmp_path: Path) -> None:
    env = offline_env() | {"XDG_CACHE_HOME": str(tmp_path)}
    # two processes whose measurements would disagree
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", CHOOSE, "model", *times], env=env, stdout=subprocess.PIPE, text=True
        )
        for times in (["0.1", "0.2"], ["0.2", "0.1"])
    ]
    outputs = [process.communicate(timeout=120)[0] for process in processes]

    choices = {output.split()[0] for output in outputs}
    assert len(choices) == 1  # the first to measure decided for both
    assert sum("(measured now;" in output for output in outputs) == 1


def test_timing_precisions_leaves_the_runs_random_numbers_alone() -> None:
    config = GPTConfig(n_layer=1, n_head=2, n_embd=16, block_size=8, vocab_size=65, dropout=0.1)
    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    seconds = time_steps(config, OptimConfig(), batch_size=2)
    assert torch.equal(torch.rand(3), expected)
    assert set(seconds) == {"32-true", "bf16-mixed"} and all(s > 0 for s in seconds.values())


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

    def measure() -> dict[str, float]:
        raise AssertionError("a GPU's choice is not measured")

    precision, reason = auto_precision(pick_device("auto"), measure, key="")
    assert precision == ("bf16-mixed" if ampere_or_later else "32-true"), reason
    assert resolve_float32_matmul("auto", pick_device("auto")) == ("high" if ampere_or_later else "highest")
    # the GPU's own choices do not leak to a run told to use the CPU
    assert resolve_float32_matmul("auto", torch.device("cpu")) == "highest"
