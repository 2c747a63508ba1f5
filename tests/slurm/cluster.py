"""A real single-node SLURM cluster on this machine, for the tests: munged, slurmctld and slurmd
started as root from tests/slurm/slurm.conf, each with the test run's own key, socket, ports,
state and logs, and stopped by their own process ids (never a SLURM or munge already running).

Needs Debian's slurm-wlm and munge (`apt-get install slurm-wlm munge`) and root. By hand:
`sudo python -m tests.slurm.cluster /tmp/slurm` starts one and prints the SLURM_CONF to use.
"""

import os
import shutil
import socket
import string
import subprocess
import sys
import time
from pathlib import Path

import psutil

HERE = Path(__file__).resolve().parent
DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "squeue", "scancel", "scontrol", "srun", "sinfo")
START_TIMEOUT_S = 60


def missing() -> str | None:
    """Why a cluster cannot start here, in one line, or None when it can."""
    if os.geteuid() != 0:
        return "a SLURM cluster for the tests needs root (slurmd runs jobs as root here)"
    if absent := [name for name in (*DAEMONS, *CLIENTS, "munge") if shutil.which(name) is None]:
        return f"{', '.join(absent)} not installed: apt-get install slurm-wlm munge"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class SlurmCluster:
    """One node, two partitions: `debug` (the default) and `urgent`, whose jobs preempt debug's
    (PreemptMode=REQUEUE). KillWait and GraceTime are short, so tests wait seconds, not minutes.
    Processes are tracked by their parents (proctrack/linuxproc), so a signal to a job's steps
    reaches every process the tasks started, as the issue that asked for this cluster saw it:
    the harder case (proctrack/cgroup, where the machine has cgroups for it, signals only the
    tasks themselves, and kills the rest only with SIGKILL)."""

    def __init__(
        self,
        root: Path,
        kill_wait_s: int = 10,
        grace_time_s: int = 20,
        proctrack: str = "linuxproc",
        first_job_id: int = 1,
    ):
        self.root = root
        self.proctrack = proctrack
        self.kill_wait_s = kill_wait_s
        self.grace_time_s = grace_time_s
        self.first_job_id = first_job_id
        self.conf = root / "etc" / "slurm.conf"
        self.munge_socket = root / "munge" / "munge.socket"
        self.processes: list[subprocess.Popen] = []

    @property
    def env(self) -> dict[str, str]:
        """What a process needs to use this cluster (sbatch, squeue, submitit)."""
        return {"SLURM_CONF": str(self.conf)}

    def run(self, *command: str, check: bool = True) -> subprocess.CompletedProcess:
        """A SLURM client command against this cluster."""
        return subprocess.run(
            command, env=os.environ | self.env, capture_output=True, text=True, check=check, timeout=60
        )

    def start(self) -> "SlurmCluster":
        for folder in ("etc", "munge", "state", "spool", "log", "run"):
            (self.root / folder).mkdir(parents=True, exist_ok=True)
        self.start_munge()
        self.write_config()
        log = self.root / "log"
        self.daemon("slurmctld", "-D")
        self.daemon("slurmd", "-D")
        deadline = time.monotonic() + START_TIMEOUT_S
        while self.node_state() != "idle":
            if time.monotonic() > deadline or any(p.poll() is not None for p in self.processes):
                raise RuntimeError(f"the SLURM cluster did not come up: see {log}")
            time.sleep(0.2)
        return self

    def start_munge(self) -> None:
        munge = self.root / "munge"
        key = munge / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        munge.chmod(0o700)
        self.daemon(
            "munged",
            "--foreground",
            "--force",  # a socket left by an earlier, killed test run is not in use
            f"--socket={self.munge_socket}",
            f"--key-file={key}",
            f"--log-file={munge / 'munged.log'}",
            f"--pid-file={munge / 'munged.pid'}",
            f"--seed-file={munge / 'munged.seed'}",
        )
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self.munge_socket.exists():
            if time.monotonic() > deadline or self.processes[-1].poll() is not None:
                raise RuntimeError(f"munged did not start: see {munge / 'munged.log'}")
            time.sleep(0.05)

    def write_config(self) -> None:
        memory_mb = psutil.virtual_memory().total // 2**20 * 9 // 10
        fields = {
            "host": socket.gethostname().split(".")[0],
            "slurmctld_port": free_port(),
            "slurmd_port": free_port(),
            "munge_socket": self.munge_socket,
            "state": self.root / "state",
            "spool": self.root / "spool",
            "run": self.root / "run",
            "log": self.root / "log",
            "proctrack": self.proctrack,
            "kill_wait": self.kill_wait_s,
            "grace_time": self.grace_time_s,
            "first_job_id": self.first_job_id,
            "cpus": os.cpu_count(),
            "memory_mb": memory_mb,
        }
        template = string.Template((HERE / "slurm.conf").read_text())
        self.conf.write_text(template.substitute(fields))
        shutil.copy(HERE / "cgroup.conf", self.conf.parent / "cgroup.conf")

    def daemon(self, name: str, *arguments: str) -> None:
        """Starts a daemon in the foreground (its log is its file under log/)."""
        self.processes.append(
            subprocess.Popen(
                [name, *arguments],
                env=os.environ | self.env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )

    def node_state(self) -> str:
        result = self.run("sinfo", "--noheader", "--format=%t", "--partition=debug", check=False)
        return result.stdout.strip()

    def jobs(self, *states: str) -> list[str]:
        """The ids of the jobs this cluster has in these states (by default, any not yet ended)."""
        chosen = [f"--states={','.join(states)}"] if states else []
        out = self.run("squeue", "--noheader", "--format=%i", *chosen, check=False).stdout
        return out.split()

    def cancel_all(self) -> None:
        """Cancels every job and waits for them to leave the node."""
        self.run("scancel", "--full", "--user=root", check=False)
        deadline = time.monotonic() + self.kill_wait_s + 30
        while self.jobs() and time.monotonic() < deadline:
            time.sleep(0.5)

    def stop(self) -> None:
        if self.processes and self.processes[0].poll() is None:
            self.cancel_all()
        for process in reversed(self.processes):  # slurmd, slurmctld, then munged
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self.processes.clear()


if __name__ == "__main__":
    cluster = SlurmCluster(Path(sys.argv[1]).resolve()).start()
    pids = " ".join(str(p.pid) for p in cluster.processes)
    print(f"export SLURM_CONF={cluster.conf}   # stop with: kill {pids}")
