"""One exception hierarchy with a single root, so callers can catch everything nucleograph raises."""


class NucleographError(Exception):
    """Root of every error nucleograph raises on purpose."""


class ConfigError(NucleographError, ValueError):
    """A setting is missing or wrong; the message names the setting to fix."""


class DatabaseError(NucleographError):
    """Neo4j or the SQL database failed or refused; the message says what to do."""


class InputError(NucleographError, ValueError):
    """An input file or argument is unusable; the message names the file and the fix."""


class ModelError(NucleographError):
    """A model run, checkpoint or training step is unusable."""
