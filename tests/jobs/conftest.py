"""Fixtures of the scheduler tests: a throwaway PostgreSQL server, SQL URLs for both backends, watch
folders with images whose content is new to Neo4j, and scheduler subprocesses.

PostgreSQL comes from Debian's packages (``apt-get install postgresql``): ``initdb`` and ``pg_ctl``
from ``/usr/lib/postgresql/<version>/bin`` start a cluster in a temporary folder on a free loopback
port, for the test session only. PostgreSQL refuses to run as root, so as root the server runs as
the ``postgres`` user the package creates.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
NUCLEOGRAPH = str(Path(sys.executable).with_name("nucleograph"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _postgres_bin() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[4]))
    if not found:
        pytest.fail("PostgreSQL server binaries not found (no /usr/lib/postgresql/*/bin/initdb): the scheduler tests "
                    "run against a real PostgreSQL; install it with `sudo apt-get install -y postgresql`",
                    pytrace=False)
    return Path(found[-1]).parent


@pytest.fixture(scope="session")
def postgres_server():
    """A PostgreSQL cluster for the session; yields its base URL (user postgres, trust auth on loopback)."""
    bindir = _postgres_bin()
    base = Path(tempfile.mkdtemp(prefix="nucleograph-pg-"))
    data, sock = base / "data", base / "sock"
    sock.mkdir()
    as_user: list[str] = []
    if os.geteuid() == 0:
        try:
            pw = pwd.getpwnam("postgres")
        except KeyError:
            pytest.fail("running as root and there is no 'postgres' user to run PostgreSQL as; "
                        "`apt-get install -y postgresql` creates it", pytrace=False)
        for p in (base, sock):
            os.chown(p, pw.pw_uid, pw.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"]
    port = _free_port()

    def run(*cmd: str) -> subprocess.CompletedProcess:
        return subprocess.run([*as_user, *cmd], capture_output=True, text=True, cwd=base)

    proc = run(str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust", "--no-sync", "-E", "UTF8")
    if proc.returncode != 0:
        pytest.fail(f"initdb failed:\n{proc.stdout}\n{proc.stderr}", pytrace=False)
    opts = f"-p {port} -k {sock} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200"
    proc = run(str(bindir / "pg_ctl"), "-D", str(data), "-o", opts, "-l", str(base / "postgres.log"), "-w", "start")
    if proc.returncode != 0:
        log = (base / "postgres.log").read_text() if (base / "postgres.log").exists() else ""
        pytest.fail(f"pg_ctl start failed:\n{proc.stdout}\n{proc.stderr}\n{log}", pytrace=False)
    try:
        yield f"postgresql+psycopg2://postgres@127.0.0.1:{port}"
    finally:
        run(str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop")
        shutil.rmtree(base, ignore_errors=True)


def _create_database(base_url: str) -> str:
    import psycopg2

    name = "t" + uuid.uuid4().hex[:12]
    dsn = base_url.replace("postgresql+psycopg2://", "postgresql://") + "/postgres"
    conn = psycopg2.connect(dsn)
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{name}"')  # a generated identifier, not user text
    finally:
        conn.close()
    return f"{base_url}/{name}"


@pytest.fixture
def pg_url(postgres_server) -> str:
    """A fresh, empty database on the session's PostgreSQL."""
    return _create_database(postgres_server)


@pytest.fixture(params=["sqlite", "postgresql"])
def sql_url(request, tmp_path) -> str:
    """The SQL URL of the run records and the job store: a SQLite file, or a PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'records.sqlite'}"
    return _create_database(request.getfixturevalue("postgres_server"))


# --- images ------------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def image_pool(tmp_path_factory) -> list[tuple[Path, str]]:
    """Twelve small synthetic H&E images (512x512) with labels, as ``(path, label)``."""
    from nucleograph.ingest.cohort import discover
    from nucleograph.ingest.synth import synthesize_cohort

    out = tmp_path_factory.mktemp("pool")
    synthesize_cohort("breast", n_per_class=6, out_dir=out, seed=41, size=(512, 512))
    by_label: dict[str, list] = {}
    for r in discover(out):
        by_label.setdefault(r.label, []).append((r.path, r.label))
    # alternate the classes, so any first n images hold both
    return [item for group in zip(*by_label.values(), strict=True) for item in group]


def fresh_copy(src: Path, dst: Path, tag: str) -> Path:
    """``src`` re-saved with a text chunk: the same pixels, but content (and so an image id) new to
    Neo4j, so each test really detects and stores instead of linking an image another test stored."""
    from PIL import Image, PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text("nucleograph-test", tag)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name("." + dst.name + ".part")  # hidden while written, then renamed: never half-seen
    with Image.open(src) as im:
        im.save(tmp, format="PNG", pnginfo=info)
    os.replace(tmp, dst)
    return dst


@pytest.fixture
def fresh_images(image_pool, tmp_path) -> Callable[[int], list[tuple[Path, str]]]:
    """``fresh_images(n)``: n images new to Neo4j, in a staging folder, as ``(path, label)``."""
    tag = uuid.uuid4().hex

    def make(n: int) -> list[tuple[Path, str]]:
        if n > len(image_pool):
            raise ValueError(f"the pool has {len(image_pool)} images")
        return [(fresh_copy(p, tmp_path / "staging" / label / p.name, tag), label) for p, label in image_pool[:n]]

    return make


# --- scheduler processes -----------------------------------------------------------------------------
class SchedulerProcess:
    def __init__(self, args: list[str], env: dict[str, str], log: Path):
        self.log = log
        self._fh = log.open("ab")
        self.proc = subprocess.Popen([NUCLEOGRAPH, "scheduler", *args], env=env, cwd=ROOT, stdout=self._fh,
                                     stderr=subprocess.STDOUT, start_new_session=True)

    def kill9(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self, timeout: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._fh.close()
        return self.proc.returncode

    def output(self) -> str:
        return self.log.read_text(errors="replace")


@pytest.fixture
def scheduler_env(test_environ, sql_url) -> dict[str, str]:
    """The environment of a scheduler subprocess: the test Neo4j and this test's SQL database."""
    env = dict(os.environ)
    env["NUCLEOGRAPH_SQL_URL"] = sql_url
    env["PYTHONUNBUFFERED"] = "1"
    return env


@pytest.fixture
def start_scheduler(tmp_path):
    """``start_scheduler(args, env)`` runs ``nucleograph scheduler ARGS``; all are stopped at the end."""
    started: list[SchedulerProcess] = []

    def start(args: list[str], env: dict[str, str]) -> SchedulerProcess:
        p = SchedulerProcess(args, env, tmp_path / f"scheduler{len(started)}.log")
        started.append(p)
        return p

    yield start
    for p in started:
        p.stop()


