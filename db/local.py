"""The local Neo4j 5.26 Community server: embedded in a small Java launcher, with Bolt on loopback.

Production uses the official ``neo4j:5.26-community`` image (docker-compose.yml); this module is for
machines without Docker. The launcher's Maven project lives in ``db/neo4j``; it is built once into
``$NUCLEOGRAPH_HOME/launcher`` and run in the background with a pid file and a log.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from nucleograph.config import Settings
from nucleograph.errors import ConfigError, DatabaseError

SOURCE_DIR = Path(__file__).resolve().parent / "neo4j"
MAIN_CLASS = "nucleograph.Launcher"
# The flags the stock neo4j.conf adds for Java 17 (netty and the page cache use these internals).
JAVA_FLAGS = [
    "--add-opens=java.base/java.nio=ALL-UNNAMED",
    "--add-opens=java.base/sun.nio.ch=ALL-UNNAMED",
    "--add-opens=java.base/java.io=ALL-UNNAMED",
    "--add-opens=java.base/java.lang=ALL-UNNAMED",
    "-Dio.netty.tryReflectionSetAccessible=true",
    "-XX:+UseG1GC",
    "-XX:-OmitStackTraceInFastThrow",
]
WAIT_REPORT_SECONDS = 10.0


@dataclass(frozen=True)
class LocalPaths:
    build: Path
    data: Path
    pid: Path
    log: Path

    @classmethod
    def of(cls, settings: Settings) -> LocalPaths:
        return cls(
            build=settings.home / "launcher",
            data=settings.neo4j_home,
            pid=settings.home / "neo4j.pid",
            log=settings.home / "neo4j.log",
        )


def _require_local(settings: Settings) -> None:
    if not settings.is_local:
        raise ConfigError(
            f"NEO4J_URI={settings.neo4j_uri} names a remote server: nucleograph starts and stops only the "
            "local one; manage the remote server where it runs (e.g. `docker compose up -d neo4j`)"
        )


def _silent(message: str) -> None:
    pass


def build_launcher(settings: Settings, *, quiet: bool = True, say: Callable[[str], None] = _silent) -> Path:
    """Build the launcher (compile + copy Neo4j's jars) unless it is already built; return its folder.

    ``say`` is told, before the build, that it runs (the first build downloads Neo4j's jars: minutes).
    """
    paths = LocalPaths.of(settings)
    stamp = paths.build / "source.sha256"
    digest = _source_digest()
    if stamp.exists() and stamp.read_text() == digest and (paths.build / "target" / "lib").is_dir():
        return paths.build
    if shutil.which("mvn") is None or shutil.which("java") is None:
        raise ConfigError("the local Neo4j needs Java 17 and Maven on PATH (apt-get install openjdk-17-jdk maven)")
    paths.build.mkdir(parents=True, exist_ok=True)
    shutil.copy2(SOURCE_DIR / "pom.xml", paths.build / "pom.xml")
    if (paths.build / "src").exists():
        shutil.rmtree(paths.build / "src")
    shutil.copytree(SOURCE_DIR / "src", paths.build / "src")
    cmd = ["mvn", "-B", "-q" if quiet else "-ntp", "package", "-DskipTests"]
    say(f"building the Neo4j launcher with Maven in {paths.build} (first start only: downloads Neo4j's "
        "jars, ~120 MB; 1-3 minutes)")
    t0 = time.monotonic()
    proc = subprocess.run(cmd, cwd=paths.build, capture_output=True, text=True)
    if proc.returncode != 0:
        raise DatabaseError(
            f"building the Neo4j launcher failed (mvn package in {paths.build}):\n{proc.stdout[-3000:]}{proc.stderr[-2000:]}"
        )
    stamp.write_text(digest)
    say(f"built the launcher in {time.monotonic() - t0:.0f} s")
    return paths.build


def _source_digest() -> str:
    h = hashlib.sha256()
    for path in sorted([SOURCE_DIR / "pom.xml", *(SOURCE_DIR / "src").rglob("*.java")]):
        h.update(path.name.encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def read_pid(settings: Settings) -> int | None:
    """The pid of the running local server, or None (a stale pid file is removed)."""
    pid_file = LocalPaths.of(settings).pid
    try:
        pid = int(pid_file.read_text().strip())
    except (FileNotFoundError, ValueError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        pid_file.unlink(missing_ok=True)
        return None
    # A recycled pid would belong to another program: check it is our launcher.
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        cmdline = MAIN_CLASS
    if MAIN_CLASS not in cmdline:
        pid_file.unlink(missing_ok=True)
        return None
    return pid


def start(settings: Settings, *, timeout: float = 180.0, say: Callable[[str], None] = _silent) -> dict:
    """Start the local Neo4j in the background and wait until Bolt answers; a no-op if it runs.

    ``say`` is told each stage (building the launcher, starting, waiting for Bolt) and, while it
    waits, every ``WAIT_REPORT_SECONDS``, so a first start is not minutes of silence.

    Returns a dict with ``pid``, ``started`` (False if it was already running) and ``seconds``.
    """
    _require_local(settings)
    from nucleograph.db.driver import open_driver  # late: the driver is only needed once the server runs

    t0 = time.perf_counter()
    pid = read_pid(settings)
    if pid is not None:
        return {"pid": pid, "started": False, "seconds": 0.0}
    paths = LocalPaths.of(settings)
    build = build_launcher(settings, say=say)
    paths.data.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env.update(
        NUCLEOGRAPH_NEO4J_HOME=str(paths.data),
        NUCLEOGRAPH_NEO4J_HOST=settings.neo4j_host.strip("[]"),
        NUCLEOGRAPH_NEO4J_PORT=str(settings.neo4j_port),
        NUCLEOGRAPH_NEO4J_PAGECACHE=settings.pagecache,
    )
    if settings.neo4j_password:
        env["NEO4J_PASSWORD"] = settings.neo4j_password
    else:
        env.pop("NEO4J_PASSWORD", None)
    classpath = f"{build / 'target' / 'classes'}{os.pathsep}{build / 'target' / 'lib' / '*'}"
    cmd = ["java", f"-Xmx{settings.heap}", f"-Xms{settings.heap}", *JAVA_FLAGS, "-cp", classpath, MAIN_CLASS]
    offset = paths.log.stat().st_size if paths.log.exists() else 0
    java = shutil.which("java") or "java"
    # posix_spawn, not Popen: the server outlives this process, and a Popen object would complain
    # about a child still running when it is collected. setsid keeps Ctrl-C in a shell from killing it.
    pid = os.posix_spawn(
        java,
        [java, *cmd[1:]],
        env,
        file_actions=[
            (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
            (os.POSIX_SPAWN_OPEN, 1, str(paths.log), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600),
            (os.POSIX_SPAWN_DUP2, 1, 2),
        ],
        setsid=True,
    )
    paths.pid.write_text(str(pid))
    say(f"starting Neo4j (pid {pid}, heap {settings.heap}, log {paths.log}); waiting for Bolt at {settings.neo4j_uri}")
    deadline = time.monotonic() + timeout
    next_report = time.monotonic() + WAIT_REPORT_SECONDS
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        if time.monotonic() >= next_report:
            say(f"still waiting for Bolt ({time.perf_counter() - t0:.0f} s)")
            next_report += WAIT_REPORT_SECONDS
        exited, status = os.waitpid(pid, os.WNOHANG)
        if exited == pid:
            paths.pid.unlink(missing_ok=True)
            tail = _read_from(paths.log, offset).decode(errors="replace")[-3000:]
            raise DatabaseError(
                f"the local Neo4j exited with status {os.waitstatus_to_exitcode(status)}; "
                f"its log ({paths.log}) ends:\n{tail}"
            )
        if b"READY" in _read_from(paths.log, offset):
            try:
                driver = open_driver(settings)
                driver.close()
                return {"pid": pid, "started": True, "seconds": round(time.perf_counter() - t0, 2)}
            except Exception as exc:  # retried until the deadline; the last one is reported
                last_error = exc
        time.sleep(0.25)
    stop(settings)
    raise DatabaseError(f"the local Neo4j did not answer within {timeout:.0f} s (see {paths.log}): {last_error}")


def _read_from(log: Path, offset: int) -> bytes:
    # The log is appended across restarts: READY must come after this process's start.
    with open(log, "rb") as fh:
        fh.seek(offset)
        return fh.read()


def stop(settings: Settings, *, timeout: float = 60.0) -> bool:
    """Stop the local Neo4j cleanly (SIGTERM runs its shutdown hook). Returns False if none ran."""
    _require_local(settings)
    pid = read_pid(settings)
    if pid is None:
        return False
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        _reap(pid)
        time.sleep(0.2)
    else:
        os.kill(pid, signal.SIGKILL)
    LocalPaths.of(settings).pid.unlink(missing_ok=True)
    return True


def _reap(pid: int) -> None:
    # When this process started the server it is its parent: collect the zombie so kill(pid, 0) fails.
    with contextlib.suppress(ChildProcessError):  # not our child: its own parent reaps it
        os.waitpid(pid, os.WNOHANG)


def store_size(settings: Settings) -> int:
    """Bytes used by the local store (0 for a remote server)."""
    data = LocalPaths.of(settings).data / "data"
    if not settings.is_local or not data.exists():
        return 0
    return sum(p.stat().st_size for p in data.rglob("*") if p.is_file())


@contextlib.contextmanager
def temporary_server(*, launcher_from: Path | None = None, heap: str = "512m", pagecache: str = "128m"):
    """A throwaway local Neo4j (own store, free loopback port) for benchmarks and fault tests.

    Yields ``(settings, env)``: the settings, and the environment variables that point a
    ``nucleograph`` subprocess at it. ``launcher_from`` reuses an already built launcher folder.
    Stops the server and deletes its store on exit.
    """
    import socket
    import tempfile

    work = Path(tempfile.mkdtemp(prefix="nucleograph-neo4j-"))
    home = work / "home"
    home.mkdir()
    if launcher_from is not None and Path(launcher_from).exists():
        (home / "launcher").symlink_to(Path(launcher_from).resolve(), target_is_directory=True)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {"NUCLEOGRAPH_HOME": str(home), "NEO4J_URI": f"bolt://127.0.0.1:{port}",
           "NUCLEOGRAPH_NEO4J_HEAP": heap, "NUCLEOGRAPH_NEO4J_PAGECACHE": pagecache}
    settings = Settings.from_env(env)
    start(settings)
    try:
        yield settings, env
    finally:
        if read_pid(settings) is not None:
            stop(settings)
        shutil.rmtree(work, ignore_errors=True)
