"""Devices and number formats that fit the hardware: which device a setting names; what
`trainer.precision=auto` and `float32_matmul_precision=auto` become on the device a run uses;
and the weights' dtype for generating.

bf16 autocast pays on GPUs that compute bf16 natively (CUDA, Ampere and later): auto takes it
there. Where bf16 is emulated (older GPUs, CPUs without AVX512-BF16 or AMX) it is slower than
float32, and auto stays with 32-true. On a CPU that computes bf16 natively it depends: autocast's
casts can cost more than bf16 saves in a small model, even on AMX. There auto times a few steps
of the run's model in each precision and takes the faster, remembered for this CPU, torch and
model shape in a cache file (measured_choice), so that later runs of the same shape, and the
ranks of a DDP run, take the same choice without measuring.
"""

import fcntl
import json
import logging
import os
import platform
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from gptlab.atomic import written_whole
from gptlab.faults import SettingError

log = logging.getLogger(__name__)

MATMUL_PRECISIONS = ("highest", "high", "medium")
# what a Trainer precision autocasts to, where gptlab runs a model outside the Trainer in the same
# precision (eval, the bench's bare loop, auto's timed steps): None, float32 throughout
AUTOCAST_DTYPES: dict[str, torch.dtype | None] = {"32-true": None, "32": None, "bf16-mixed": torch.bfloat16}


def autocast(device_type: str, precision: str) -> torch.autocast:
    """The autocast a Trainer precision runs the model in, outside the Trainer (off for float32)."""
    dtype = AUTOCAST_DTYPES[str(precision)]
    return torch.autocast(device_type, dtype or torch.bfloat16, enabled=dtype is not None)


INFERENCE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def native_bf16(device: torch.device) -> str | None:
    """Why this device computes bf16 natively, or None when it does not."""
    if device.type == "cuda" and torch.cuda.is_bf16_supported(including_emulation=False):
        return f"{torch.cuda.get_device_name(device)} computes bf16 natively"
    if device.type == "cpu":
        features = [
            name
            for name, supported in (
                ("AVX512-BF16", torch.cpu._is_avx512_bf16_supported()),
                ("AMX", torch.cpu._is_amx_tile_supported()),
            )
            if supported
        ]
        if features:
            return f"this CPU computes bf16 natively ({' and '.join(features)})"
    return None


CANDIDATES = ("32-true", "bf16-mixed")  # what auto chooses from, on a CPU with native bf16
# the choices of this process's runs, which the DDP ranks Lightning starts from it inherit
CHOICES_VARIABLE = "GPTLAB_PRECISION_CHOICES"


def auto_precision(
    device: torch.device, measure: Callable[[], dict[str, float]], key: str
) -> tuple[str, str]:
    """What trainer.precision=auto is on this device, and why: 32-true where bf16 is emulated,
    bf16-mixed on a GPU that computes it natively, and on a CPU that does, the faster of the two
    by `measure` (seconds a step in each), remembered under `key` (see measured_choice)."""
    reason = native_bf16(device)
    if reason is None:
        return "32-true", f"no native bf16 on this device ({device})"
    if device.type != "cpu":
        return "bf16-mixed", reason
    return measured_choice(key, measure)


# bf16-mixed only if it is this much faster: a tie goes to the exact one
BF16_MARGIN = 0.03


def measured_choice(key: str, measure: Callable[[], dict[str, float]]) -> tuple[str, str]:
    """The faster precision for `key` (this CPU, torch, threads and the model's shape), bf16-mixed
    only if at least BF16_MARGIN faster: the choice of the process that started this one (a DDP
    rank's parent), else what the cache file holds, else measured now and cached. The cache is
    locked while it is read, measured and written, so runs starting together measure once, one
    at a time, and agree. To measure again, delete the file."""
    inherited = json.loads(os.environ.get(CHOICES_VARIABLE, "{}"))
    if key in inherited and (chosen := inherited[key])[2] != os.getpid():
        precision, reason, pid = chosen
        return precision, f"{reason}: the choice of process {pid}, which started this one"
    with locked(cache_file()) as cache:
        entry = cache.get(key)
        if not (isinstance(entry, dict) and set(entry.get("seconds", ())) == set(CANDIDATES)):
            log.info(
                "trainer.precision=auto: timing steps of this model in %s on this CPU (once for its "
                "shape; remembered in %s)",
                " and ".join(CANDIDATES),
                cache_file(),
            )
            entry = cache[key] = {"seconds": measure(), "measured_at": time.strftime("%Y-%m-%d %H:%M")}
            how = "measured now"
        else:
            how = f"measured {entry.get('measured_at', 'before')}"
    seconds = entry["seconds"]
    precision = "bf16-mixed" if seconds["bf16-mixed"] < (1 - BF16_MARGIN) * seconds["32-true"] else "32-true"
    other = next(p for p in CANDIDATES if p != precision)
    reason = (
        f"a step of this model took {1e3 * seconds[precision]:.1f} ms in it against "
        f"{1e3 * seconds[other]:.1f} ms in {other} on this CPU ({how}; {cache_file()})"
    )
    os.environ[CHOICES_VARIABLE] = json.dumps(inherited | {key: (precision, reason, os.getpid())})
    return precision, reason


def cache_file() -> Path:
    """Where measured choices are kept: $XDG_CACHE_HOME/gptlab (~/.cache/gptlab)."""
    cache_home = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache_home) / "gptlab" / "precision.json"


@contextmanager
def locked(path: Path) -> Iterator[dict]:
    """The JSON object in path, for the block to read and change, with path locked against other
    processes until the block ends (fcntl.flock on a file beside it), then written back whole.
    A cache that cannot be written (a read-only home, say) is read, and the choice not kept."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        lock = open(path.with_suffix(".lock"), "a")  # noqa: SIM115 (held for the block)
    except OSError:
        yield {}
        return
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            content = json.loads(path.read_text()) if path.is_file() else {}
        except (OSError, json.JSONDecodeError):
            content = {}  # a damaged cache is measured again
        before = json.dumps(content, sort_keys=True)
        yield content
        if json.dumps(content, sort_keys=True) != before:
            try:
                with written_whole(path) as partial:
                    partial.write_text(json.dumps(content, indent=2, sort_keys=True) + "\n")
            except OSError:
                pass  # measured again next time


def cpu_name() -> str:
    """The CPU's model name (Linux: /proc/cpuinfo), which the cache tells machines apart by."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def step_times(
    step: Callable[[str], None],
    clock: Callable[[], float] = time.perf_counter,
    rounds: int = 5,
    budget_seconds: float = 5.0,
) -> dict[str, float]:
    """The median seconds of a step (`step(precision)`: one training step in that precision) for
    each candidate precision, timed in alternating rounds, so that the machine's noise falls on
    both alike. A round is as many steps as take about 0.1 s; after budget_seconds of rounds no
    new round starts (a large model on a CPU takes seconds a step: one round each tells)."""
    for precision in CANDIDATES:  # the first steps allocate, and autocast caches its casts
        step(precision)
    start = clock()
    step(CANDIDATES[0])
    steps_per_round = max(1, round(0.1 / max(clock() - start, 1e-6)))
    times: dict[str, list[float]] = {precision: [] for precision in CANDIDATES}
    began = clock()
    for n in range(rounds):
        if n > 0 and clock() - began > budget_seconds:
            break
        for precision in CANDIDATES if n % 2 == 0 else CANDIDATES[::-1]:
            start = clock()
            for _ in range(steps_per_round):
                step(precision)
            times[precision].append((clock() - start) / steps_per_round)
    return {precision: statistics.median(seconds) for precision, seconds in times.items()}


def resolve_float32_matmul(setting: str, device: torch.device) -> str:
    """torch.set_float32_matmul_precision's argument: auto is high (TF32 tensor cores) on CUDA
    GPUs that have them (Ampere and later) and highest (plain float32) elsewhere."""
    if setting != "auto":
        if setting not in MATMUL_PRECISIONS:
            raise SettingError(
                f"float32_matmul_precision={setting!r}", f"use auto or one of {list(MATMUL_PRECISIONS)}"
            )
        return setting
    on_tf32_gpu = device.type == "cuda" and torch.cuda.get_device_capability(device) >= (8, 0)
    return "high" if on_tf32_gpu else "highest"


def inference_dtype(setting: str) -> torch.dtype:
    """The weights' dtype for generating, by name."""
    if setting not in INFERENCE_DTYPES:
        raise SettingError(f"dtype={setting!r}", f"use one of {list(INFERENCE_DTYPES)}")
    return INFERENCE_DTYPES[setting]


def pick_device(name: str, key: str = "device") -> torch.device:
    """The device a setting names, checked to be on this machine. auto (and Lightning's gpu)
    picks as Lightning's Trainer does: CUDA, then Apple's MPS, then (auto only) the CPU."""
    if name in ("auto", "gpu"):
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        if name == "auto":
            return torch.device("cpu")
    else:
        try:
            device = torch.device(name)
        except (RuntimeError, TypeError):
            raise SettingError(
                f"{key}={name!r} is not a device: use auto, cpu, cuda, cuda:N or mps"
            ) from None
        available = {
            "cpu": True,
            "cuda": torch.cuda.is_available() and (device.index or 0) < torch.cuda.device_count(),
            "mps": torch.backends.mps.is_available(),
        }
        if available.get(device.type, False):
            return device
    raise SettingError(f"{key}={name} is not available on this machine: use {key}=auto or {key}=cpu")
