"""Every error cachelab raises, in one tree.

Catch :class:`CachelabError` to handle anything the library itself decided to raise. Errors that
come from *your* code (a loader or a writer that fails) are never wrapped: they reach you unchanged,
because you know best what they mean.

::

    CachelabError
    ├── ConfigurationError          (also a ValueError)  bad argument; the message names the fix
    │   └── InvalidURLError                               a Redis URL that cannot be parsed
    ├── SerializationError          (also a TypeError)    a value that cannot be encoded/decoded
    ├── RedisUnavailableError       (also a ConnectionError) the Redis you asked for does not answer
    ├── RemoteLoadError                                   the load you waited for failed elsewhere
    ├── ExperimentError                                   an experiment's worker process failed
    ├── StreamError                                       a stream or consumer group is missing
    └── LockError                                         a RedisLock could not do what you asked
        ├── LockTimeoutError        (also a TimeoutError) waited longer than the timeout
        └── LockLostError                                 the lock expired or was taken over

Every message says what was wrong and what to do instead. Passwords in URLs are replaced by
``***`` before a URL appears in any message.
"""

from __future__ import annotations

__all__ = [
    "CachelabError",
    "ConfigurationError",
    "ExperimentError",
    "InvalidURLError",
    "LockError",
    "LockLostError",
    "LockTimeoutError",
    "RedisUnavailableError",
    "RemoteLoadError",
    "SerializationError",
    "StreamError",
]


class CachelabError(Exception):
    """Base class of every error raised by cachelab itself."""


class ConfigurationError(CachelabError, ValueError):
    """An argument is not acceptable (unknown policy, TTL <= 0, empty namespace, ...).

    Raised before anything is written to Redis.
    """


class InvalidURLError(ConfigurationError):
    """A Redis URL that cannot be parsed, or whose scheme cachelab does not understand."""


class SerializationError(CachelabError, TypeError):
    """A value could not be encoded (on write) or a stored payload decoded (on read)."""


class RedisUnavailableError(CachelabError, ConnectionError):
    """The Redis server you pointed cachelab at (explicitly or with ``REDIS_URL``) did not answer.

    cachelab never falls back silently from a server you asked for by name: your numbers would
    quietly come from somewhere else.
    """


class LockError(CachelabError):
    """A :class:`~cachelab.RedisLock` operation failed."""


class LockTimeoutError(LockError, TimeoutError):
    """Waiting for a lock took longer than the timeout you gave."""


class LockLostError(LockError):
    """The lock expired (or was taken over) while you thought you held it.

    Whatever the lock protected may now be done by someone else at the same time: stop, and do not
    write results without a fencing check.
    """


class RemoteLoadError(CachelabError):
    """The load this caller waited for ran in another process and failed there.

    In the process that ran it, callers get the loader's own exception; across processes only its
    type and message travel (in the lock's release message), so they arrive wrapped in this.
    """


class ExperimentError(CachelabError):
    """An experiment could not finish: a worker process failed, died or timed out.

    The message carries the worker's own traceback, so the cause is visible from the notebook.
    """


class StreamError(CachelabError):
    """A stream command cannot run: the stream or the consumer group does not exist (yet)."""
