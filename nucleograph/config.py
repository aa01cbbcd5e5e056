"""Typed settings read once from the environment and passed explicitly (no module-level globals)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from nucleograph.errors import ConfigError

LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1", "[::1]"}
DEFAULT_PORT = 7687


@dataclass(frozen=True)
class Settings:
    """Where nucleograph keeps its state and how it reaches Neo4j and the SQL run records.

    Attributes
    ----------
    home : Path
        Local state (``NUCLEOGRAPH_HOME``, default ``./.nucleograph``): the local Neo4j store and its
        password file, the SQLite run records, caches, checkpoints.
    neo4j_uri : str
        ``NEO4J_URI``; default ``bolt://127.0.0.1:7687``. A loopback URI means "the local Neo4j that
        ``nucleograph db start`` runs"; any other host is used as it is and nothing starts locally.
    neo4j_user, neo4j_password, neo4j_database : str
        ``NEO4J_USER`` (neo4j), ``NEO4J_PASSWORD`` (else the local password file), ``NEO4J_DATABASE``
        (neo4j).
    sql_url : str
        ``NUCLEOGRAPH_SQL_URL``: any SQLAlchemy URL; default a SQLite file under ``home``.
    heap, pagecache : str
        ``NUCLEOGRAPH_NEO4J_HEAP`` (1g) and ``NUCLEOGRAPH_NEO4J_PAGECACHE`` (512m) for the local Neo4j.
    retry_seconds : float
        ``NUCLEOGRAPH_NEO4J_RETRY_SECONDS`` (60): how long a write is retried while Neo4j is unreachable.
    jobs_keep_days, jobs_keep_rows : float, int
        ``NUCLEOGRAPH_JOBS_KEEP_DAYS`` (30) and ``NUCLEOGRAPH_JOBS_KEEP_ROWS`` (100000): the finished job
        history (job runs, done files of the watch ledger) the scheduler keeps; 0 lifts that limit.
    """

    home: Path
    neo4j_uri: str
    neo4j_user: str = "neo4j"
    neo4j_password: str | None = field(default=None, repr=False)
    neo4j_database: str = "neo4j"
    sql_url: str = ""
    heap: str = "1g"
    pagecache: str = "512m"
    retry_seconds: float = 60.0
    jobs_keep_days: float = 30.0
    jobs_keep_rows: int = 100_000

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Settings:
        """Read the settings from ``env`` (default: ``os.environ``)."""
        env = dict(os.environ if env is None else env)
        home = Path(env.get("NUCLEOGRAPH_HOME") or ".nucleograph").expanduser().resolve()
        uri = env.get("NEO4J_URI") or f"bolt://127.0.0.1:{DEFAULT_PORT}"
        parts = urlsplit(uri)
        if parts.scheme not in {"bolt", "bolt+s", "bolt+ssc", "neo4j", "neo4j+s", "neo4j+ssc"} or not parts.hostname:
            raise ConfigError(
                f"NEO4J_URI={uri!r} is not a Neo4j URI: use e.g. bolt://127.0.0.1:7687 or neo4j+s://host"
            )
        sql_url = env.get("NUCLEOGRAPH_SQL_URL") or f"sqlite:///{home / 'records.sqlite'}"
        return cls(
            home=home,
            neo4j_uri=uri,
            neo4j_user=env.get("NEO4J_USER") or "neo4j",
            neo4j_password=env.get("NEO4J_PASSWORD") or None,
            neo4j_database=env.get("NEO4J_DATABASE") or "neo4j",
            sql_url=sql_url,
            heap=env.get("NUCLEOGRAPH_NEO4J_HEAP") or "1g",
            pagecache=env.get("NUCLEOGRAPH_NEO4J_PAGECACHE") or "512m",
            retry_seconds=float(env.get("NUCLEOGRAPH_NEO4J_RETRY_SECONDS") or 60.0),
            jobs_keep_days=_limit(env, "NUCLEOGRAPH_JOBS_KEEP_DAYS", 30.0, float),
            jobs_keep_rows=_limit(env, "NUCLEOGRAPH_JOBS_KEEP_ROWS", 100_000, int),
        )

    @property
    def is_local(self) -> bool:
        """True when NEO4J_URI names this machine, so ``db start`` runs the embedded server."""
        return (urlsplit(self.neo4j_uri).hostname or "") in LOOPBACK_HOSTS

    @property
    def neo4j_host(self) -> str:
        return urlsplit(self.neo4j_uri).hostname or "127.0.0.1"

    @property
    def neo4j_port(self) -> int:
        return urlsplit(self.neo4j_uri).port or DEFAULT_PORT

    @property
    def neo4j_home(self) -> Path:
        """Data directory of the local Neo4j (its password file lies beside the store)."""
        return self.home / "neo4j"

    @property
    def password_file(self) -> Path:
        return self.neo4j_home / "password"

    def password(self) -> str:
        """The Neo4j password: ``NEO4J_PASSWORD``, else the local server's generated password file."""
        if self.neo4j_password:
            return self.neo4j_password
        if self.is_local and self.password_file.exists():
            return self.password_file.read_text().strip()
        if self.is_local:
            raise ConfigError(
                f"no Neo4j password: set NEO4J_PASSWORD, or run `nucleograph db start` once so that "
                f"{self.password_file} is generated"
            )
        raise ConfigError(f"NEO4J_PASSWORD is not set for the remote Neo4j at {self.neo4j_uri}")


def _limit(env: dict[str, str], name: str, default, kind):
    """A history limit from ``env[name]``: a number >= 0 (0: no limit)."""
    raw = env.get(name) or ""
    try:
        value = kind(raw) if raw.strip() else default
    except ValueError:
        value = -1
    if not value >= 0:  # also NaN
        raise ConfigError(f"{name}={raw!r} must be a number >= 0 ({kind.__name__}; 0 keeps everything)")
    return value
