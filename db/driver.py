"""Opening the Neo4j driver once and turning driver failures into errors that say what to fix."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import neo4j
from neo4j import GraphDatabase
from neo4j import exceptions as neo4j_exc

from nucleograph.config import Settings
from nucleograph.errors import ConfigError, DatabaseError

#: The server's answer to a login after too many wrong passwords in a row (a plain ClientError).
AUTH_RATE_LIMIT = "Neo.ClientError.Security.AuthenticationRateLimit"


def open_driver(settings: Settings, *, verify: bool = True) -> neo4j.Driver:
    """Create the driver (once per process; pass it on) and check that the server answers.

    Raises
    ------
    ConfigError
        The password or user is wrong (names ``NEO4J_PASSWORD``/``NEO4J_USER``).
    DatabaseError
        Nothing answers at ``NEO4J_URI`` (says how to start the local server).
    """
    driver = GraphDatabase.driver(
        settings.neo4j_uri,
        auth=(settings.neo4j_user, settings.password()),
        max_connection_pool_size=16,
        # managed transactions (all of ingest's writes) are retried this long when the connection
        # drops or the server restarts; then the error reaches the caller
        max_transaction_retry_time=settings.retry_seconds,
        connection_acquisition_timeout=60,
        # Server notifications (e.g. "label does not exist yet") are hints for interactive use, not
        # warnings for a pipeline; the console reports query errors itself.
        notifications_min_severity="OFF",
        # Bolt over loopback is not encrypted; remote URIs choose with their scheme (neo4j+s://).
    )
    if verify:
        try:
            with translate_errors(settings):
                driver.verify_connectivity()
        except BaseException:
            driver.close()
            raise
    return driver


@contextlib.contextmanager
def translate_errors(settings: Settings) -> Iterator[None]:
    """Re-raise the driver's authentication and connection errors as nucleograph errors."""
    try:
        yield
    except neo4j_exc.AuthError as exc:
        raise ConfigError(
            f"Neo4j at {settings.neo4j_uri} refused user {settings.neo4j_user!r}: fix NEO4J_PASSWORD "
            f"(and NEO4J_USER); the local server's password is in {settings.password_file}"
        ) from exc
    except neo4j_exc.ClientError as exc:
        if exc.code != AUTH_RATE_LIMIT:
            raise
        # not an AuthError to the driver: after a few wrong passwords in a row the server locks the
        # user for a while and answers every login, even a right one, with this code instead
        raise ConfigError(
            f"Neo4j at {settings.neo4j_uri} is refusing logins for user {settings.neo4j_user!r} for now: the "
            f"password was wrong too many times in a row ({exc.code}). Fix NEO4J_PASSWORD (and NEO4J_USER; "
            f"the local server's password is in {settings.password_file}), then wait a few seconds (the "
            "server's dbms.security.auth_lock_time, 5 s by default) before trying again"
        ) from exc
    except (neo4j_exc.ServiceUnavailable, neo4j_exc.SessionExpired, OSError) as exc:
        hint = (
            "start it with `nucleograph db start`"
            if settings.is_local
            else "check that the server runs and that NEO4J_URI is right"
        )
        raise DatabaseError(f"no Neo4j answers at {settings.neo4j_uri}: {hint} ({exc})") from exc
