"""A real Dask cluster on loopback for the tests: a ``dask scheduler`` and ``dask worker`` processes started
here, on free ports, in a temporary folder; stopped at the end (only these processes, by their pids).

Workers run without a nanny, so a worker killed with SIGKILL stays dead and its tasks are rerun on another.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from distributed import Client

DASK = str(Path(sys.executable).with_name("dask"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class LoopbackCluster:
    """The scheduler's address, a client of it, and the worker processes by address."""

    address: str
    client: Client
    scheduler: subprocess.Popen
    workers: dict[str, subprocess.Popen] = field(default_factory=dict)

    def pids(self) -> dict[int, str]:
        """Worker pid -> address, for the workers still running."""
        return {p.pid: a for a, p in self.workers.items() if p.poll() is None}

    def kill(self, pid: int) -> str:
        """SIGKILL the worker ``pid`` (one of ours, checked) and wait until the scheduler dropped it; its address."""
        address = self.pids()[pid]
        os.kill(pid, signal.SIGKILL)
        self.workers[address].wait(10)
        deadline = time.monotonic() + 30
        while address in self.client.scheduler_info()["workers"]:
            if time.monotonic() > deadline:
                raise TimeoutError(f"the scheduler still lists the killed worker {address}")
            time.sleep(0.05)
        return address


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


@contextlib.contextmanager
def loopback_cluster(root: Path, *, workers: int = 2) -> Iterator[LoopbackCluster]:
    """Start a scheduler and ``workers`` single-thread workers on 127.0.0.1 under ``root``; stop them after."""
    root.mkdir(parents=True, exist_ok=True)
    address = f"tcp://127.0.0.1:{free_port()}"
    logs = []

    def start(cmd: list[str], name: str) -> subprocess.Popen:
        log = open(root / f"{name}.log", "wb")  # closed below, after the process
        logs.append(log)
        return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=root, start_new_session=True)

    scheduler = start([DASK, "scheduler", "--host", "127.0.0.1", "--port", address.rpartition(":")[2],
                       "--dashboard-address", f"127.0.0.1:{free_port()}"], "scheduler")
    procs: list[subprocess.Popen] = [scheduler]
    client = None
    try:
        client = Client(address, timeout=60)
        for i in range(workers):
            procs.append(start([DASK, "worker", address, "--host", "127.0.0.1", "--nthreads", "1", "--no-nanny",
                                "--no-dashboard", "--memory-limit", "0", "--death-timeout", "60",
                                "--local-directory", str(root / f"w{i}"), "--name", f"w{i}"], f"worker{i}"))
        client.wait_for_workers(workers, timeout=120)
        info = client.scheduler_info()["workers"]
        by_pid = client.run(os.getpid)
        pid_to_proc = {p.pid: p for p in procs[1:]}
        cluster = LoopbackCluster(address, client, scheduler,
                                  {addr: pid_to_proc[by_pid[addr]] for addr in info})
        yield cluster
    finally:
        if client is not None:
            client.close()
        for proc in reversed(procs):
            _stop(proc)
        for log in logs:
            log.close()
