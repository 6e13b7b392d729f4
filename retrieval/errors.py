"""Exceptions whose message is a sentence for the user.

Every failure a user can cause (bad input, missing weights, a corrupt index)
raises a :class:`KgclipError` subclass; the CLI prints ``str(error)`` on one
line and exits with ``exit_code``. Anything else is a bug and keeps its
traceback.
"""


class KgclipError(Exception):
    """Base class: the message is shown to the user as it is."""

    exit_code = 1


class UsageError(KgclipError):
    """The command line or an argument is wrong (exit code 2)."""

    exit_code = 2


class ModelError(KgclipError):
    """A model spec cannot be resolved or its weights cannot be loaded."""


class WeightsNotFound(ModelError):
    """Named pretrained weights are not on this machine and cannot be fetched."""


class IndexError_(KgclipError):  # noqa: N801 - avoid shadowing the builtin
    """An index directory is missing, corrupt or inconsistent."""


class IndexNotFound(IndexError_):
    pass


class IndexCorrupt(IndexError_):
    pass


class ModelMismatch(IndexError_):
    """An index was opened with another model than the one that built it."""


class IndexLocked(IndexError_):
    """Another process is writing to the index."""


class _OSErrorSentence(OSError):
    """An OSError built as ``(errno, sentence, filename)`` whose str() is the sentence alone."""

    def __str__(self) -> str:
        return self.strerror if isinstance(self.strerror, str) else OSError.__str__(self)


class UnsafePath(IndexError_, _OSErrorSentence):
    """A file kgclip would write, lock or create inside an index is a symbolic link (or not a regular
    file): never followed. Also an OSError, so a reader that only wanted to save a cache serves from
    memory instead."""


class DiskFull(KgclipError, _OSErrorSentence):
    """No space left on the device while writing (the message names the file); what was committed
    before stays, so the same command continues once there is room. Also an OSError (see UnsafePath)."""


class SourceError(KgclipError):
    """A build source (folder, list, manifest, shard) cannot be read."""


class KGError(KgclipError):
    """A knowledge graph file is malformed or missing."""


class QueryError(UsageError):
    """A query is empty or otherwise unusable."""
