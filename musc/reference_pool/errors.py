"""The pool's errors, apart from the pool's code (no numerical library imported): the command
line names them before any work."""
from ..store.catalog import ArtifactError


class PoolError(ArtifactError):
    """A pool refuses an operation; one line saying why."""


class HistoryError(PoolError):
    """A history kept beside a pool (of days, of verdicts) that cannot be read as one; the message
    names the file and what to do."""
