"""How much memory a measurement took: peak and current memory of this process or a device, the
high-water mark of a child process, a command's time and memory."""

import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import torch

CLEAR_REFS = Path("/proc/self/clear_refs")
STATUS = Path("/proc/self/status")


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    elif CLEAR_REFS.exists():
        CLEAR_REFS.write_text("5")  # Linux: the resident set's high-water mark starts again from now


def peak_memory_mb(device: torch.device) -> float:
    """CUDA: peak memory allocated by tensors. CPU: the process's peak resident set size (since
    the last reset on Linux; since process start elsewhere). On Linux that is VmHWM, not
    getrusage's ru_maxrss: the latter also holds the peak of the process that started this one
    (a vfork shares its memory until the exec), a whole pytest worker's, say."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    if STATUS.exists():
        hwm = next(line for line in STATUS.read_text().splitlines() if line.startswith("VmHWM:"))
        return int(hwm.split()[1]) / 2**10  # kB
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**10 if sys.platform != "darwin" else peak / 2**20  # kB elsewhere, bytes on macOS


def current_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.memory_allocated(device) / 2**20
    return psutil.Process().memory_info().rss / 2**20


def high_water_mb(pid: int) -> float | None:
    """A running process's peak resident memory so far (VmHWM, Linux), or None."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    hwm = [line for line in status.splitlines() if line.startswith("VmHWM:")]
    return int(hwm[0].split()[1]) / 2**10 if hwm else None


def run_measured(command: list[str]) -> tuple[float, float]:
    """Runs command; its wall-clock seconds and its own peak resident memory in MB. On Linux that
    is the child's VmHWM, read every 10 ms while it runs: the maxrss getrusage gives for a child
    also holds this process's peak (the child's memory was a copy of this process's until its
    exec), which would hide the child's own whenever that is smaller."""
    with tempfile.TemporaryFile() as stderr:
        start = time.perf_counter()
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=stderr)
        peaks = []
        while not (ended := os.wait4(process.pid, os.WNOHANG))[0]:
            if (peak := high_water_mb(process.pid)) is not None:
                peaks.append(peak)
            time.sleep(0.01)
        seconds = time.perf_counter() - start
        _, status, usage = ended
        if os.waitstatus_to_exitcode(status):
            stderr.seek(0)
            raise RuntimeError(
                f"{' '.join(command)} failed:\n{stderr.read()[-3000:].decode(errors='replace')}"
            )
    return seconds, max(peaks) if peaks else usage.ru_maxrss / 2**10  # kB where there is no /proc
