"""Every error cachelab raises, in one tree.

Catch :class:`CachelabError` to handle anything the library itself decided to raise. Errors that
come from *your* code (a loader or a writer that fails) are never wrapped: they reach you unchanged,
because you know best what they mean.

::

    CachelabError
    ├── ConfigurationError          (also a ValueError)  bad argument; the message names the fix
    │   └── InvalidURLError                               a Redis URL that cannot be parsed
    ├── SerializationError          (also a TypeError)    a value that cannot be encoded/decoded
    └── RedisUnavailableError       (also a ConnectionError) the Redis you asked for does not answer

Every message says what was wrong and what to do instead. Passwords in URLs are replaced by
``***`` before a URL appears in any message.
"""

from __future__ import annotations

__all__ = [
    "CachelabError",
    "ConfigurationError",
    "InvalidURLError",
    "RedisUnavailableError",
    "SerializationError",
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
