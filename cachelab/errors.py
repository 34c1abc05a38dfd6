"""Every error cachelab raises, in one tree.

Catch :class:`CachelabError` to handle anything the library itself decided to raise. Errors that
come from *your* code (a loader or a writer that fails) are never wrapped: they reach you unchanged,
because you know best what they mean.

::

    CachelabError
    ├── ConfigurationError          (also a ValueError)  bad argument; the message names the fix
    │   └── InvalidURLError                               a Redis URL that cannot be parsed
    ├── SerializationError          (also a TypeError)    a value that cannot be encoded/decoded
    │   └── ValueTooLargeError      (also a ValueError)   encoded, but above the cache's size limit
    ├── RedisUnavailableError       (also a ConnectionError) the Redis you asked for does not answer
    │   ├── AuthenticationError                           it answered, but refused the credentials
    │   └── CacheUnavailableError                         a cache call could not reach Redis
    ├── RemoteLoadError                                   the load you waited for failed elsewhere
    ├── ExperimentError                                   an experiment's worker process failed
    ├── NotebookError                                     a notebook cell failed, or JupyterLab
    │                                                     did not start
    ├── StreamError                                       a stream or consumer group is missing
    └── LockError                                         a RedisLock could not do what you asked
        ├── LockTimeoutError        (also a TimeoutError) waited longer than the timeout
        └── LockLostError                                 the lock expired or was taken over

Every message says what was wrong and what to do instead. Passwords in URLs are replaced by
``***`` before a URL appears in any message.
"""

from __future__ import annotations

__all__ = [
    "AuthenticationError",
    "CacheUnavailableError",
    "CachelabError",
    "ConfigurationError",
    "ExperimentError",
    "InvalidURLError",
    "LockError",
    "LockLostError",
    "LockTimeoutError",
    "NotebookError",
    "RedisUnavailableError",
    "RemoteLoadError",
    "SerializationError",
    "StreamError",
    "ValueTooLargeError",
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


class ValueTooLargeError(SerializationError, ValueError):
    """A value encodes to more bytes than the cache's ``max_value_bytes``; nothing was written.

    Large values block Redis's single thread while they travel and crowd out many small entries,
    so a cache refuses them unless told otherwise: store a smaller projection of the value, or
    raise (or disable, with ``None``) the limit.
    """


class RedisUnavailableError(CachelabError, ConnectionError):
    """The Redis server you pointed cachelab at (explicitly or with ``REDIS_URL``) did not answer.

    cachelab never falls back silently from a server you asked for by name: your numbers would
    quietly come from somewhere else.
    """


class AuthenticationError(RedisUnavailableError):
    """The server answered but refused the user name or password in the URL (or an ACL rule
    forbids a command cachelab needs). The message names the URL with the password as ``***``.
    """


class CacheUnavailableError(RedisUnavailableError):
    """A cache operation needed Redis and could not reach it (refused, reset, timed out), or the
    cache's circuit breaker is open after repeated failures, so Redis was not even tried.

    Raised only by caches with ``on_redis_error="closed"`` (the default); with ``"open"`` the cache
    answers from the loader instead. The message names the server (password as ``***``), says
    whether the breaker is open and when it probes again, and the original error is chained.
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


class NotebookError(CachelabError):
    """A notebook could not be run or served: a cell raised under ``cachelab notebook run``, or
    JupyterLab did not start under ``cachelab lab``.

    The message names the failing cell and its error, and where the partly executed notebook is.
    """


class StreamError(CachelabError):
    """A stream command cannot run: the stream or the consumer group does not exist (yet)."""
