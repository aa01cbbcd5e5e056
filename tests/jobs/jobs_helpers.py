"""Helpers of the scheduler tests (imported by name: tests/ has no packages)."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest


def drop(images: list[tuple[Path, str]], watch: Path) -> list[Path]:
    """Put images into ``watch/<label>/`` atomically (written hidden, then renamed)."""
    out = []
    for path, label in images:
        dst = watch / label / path.name
        dst.parent.mkdir(parents=True, exist_ok=True)
        tmp = dst.with_name("." + dst.name + ".part")
        shutil.copyfile(path, tmp)
        os.replace(tmp, dst)
        out.append(dst)
    return out



def wait_for(condition: Callable[[], object], *, timeout: float, what: str, procs=(), interval: float = 0.3):
    """Poll ``condition`` until truthy; on timeout fail with the scheduler logs."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        for p in procs:
            if p.proc.poll() is not None:
                pytest.fail(f"scheduler exited ({p.proc.returncode}) while waiting for {what}:\n{p.output()[-4000:]}")
        time.sleep(interval)
    logs = "\n---\n".join(p.output()[-4000:] for p in procs)
    pytest.fail(f"timed out after {timeout} s waiting for {what}\n{logs}")


class TcpProxy:
    """A loopback TCP forwarder to ``target_port`` that can be taken down and brought back, as a
    server outage looks to its clients: while down, its port refuses connections and the open ones
    are cut. Clients are pointed at :attr:`port`."""

    def __init__(self, target_port: int):
        self.target = ("127.0.0.1", target_port)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self._listener: socket.socket | None = None
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()

    def up(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        listener.settimeout(0.1)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def down(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.close()
        with self._lock:
            conns, self._open = list(self._open), set()
        for c in conns:
            with contextlib.suppress(OSError):
                c.shutdown(socket.SHUT_RDWR)
            c.close()

    def _accept(self, listener: socket.socket) -> None:
        while self._listener is listener:
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                server = socket.create_connection(self.target)
            except OSError:
                client.close()
                continue
            client.settimeout(None)
            with self._lock:
                self._open.update((client, server))
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:  # one side ended: end both (the other pump then stops too)
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()
            with self._lock:
                self._open.difference_update((src, dst))
