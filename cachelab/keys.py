"""Where a cache's data lives in Redis: one namespace, and one hash tag per cache key.

A cache key ``K`` of namespace ``users`` is stored at ``users:{K}``; the helpers the cache keeps
beside it (its fence, lock, lease, stale copy, and the channel its lock holder announces on) are
``users:{K}:fence`` and so on. The braces are a Redis Cluster *hash tag*: every key of ``K`` hashes
to one slot, so one Lua script may touch them all. This module is the only place that spells
these names.
"""

from __future__ import annotations

from .errors import ConfigurationError

__all__ = ["ROLES", "KeySpace", "check_namespace"]

ROLES = ("fence", "lock", "lease", "stale", "filled")
"""The helper keys (and the one channel) that live beside each cached value."""


def check_namespace(namespace: object) -> str:
    """``namespace`` if it can prefix Redis keys; a ConfigurationError naming the fix if not."""
    if (
        not isinstance(namespace, str)
        or not namespace
        or namespace != namespace.strip()
        or "{" in namespace
        or "}" in namespace
        or not _encodable(namespace)
    ):
        raise ConfigurationError(
            f"namespace must be a non-empty string without surrounding spaces, braces or lone "
            f"surrogates, got {namespace!r}; e.g. namespace='users'"
        )
    return namespace


def _encodable(text: str) -> bool:
    if text.isascii():  # the common case, checked in C
        return True
    try:
        text.encode()
    except UnicodeEncodeError:  # a lone surrogate, e.g. from a badly decoded file name
        return False
    return True


class KeySpace:
    """The Redis names of one namespace's keys."""

    __slots__ = ("_known", "channel", "namespace", "prefix", "stream")

    _REMEMBERED = 4096
    """Key names checked and built recently: a hot key is looked up, not rebuilt, on each hit."""

    def __init__(self, namespace: str) -> None:
        self._known: dict[str, str] = {}
        self.namespace = check_namespace(namespace)
        self.prefix = f"{namespace}:{{"
        self.channel = f"{namespace}:invalidations"
        """Where pub/sub invalidations of this namespace are published."""
        self.stream = f"{namespace}:invalidation-log"
        """The stream that Streams invalidation appends to (one key, outside any hash tag)."""

    def value(self, key: str) -> str:
        """The Redis key that stores ``key``'s value: ``namespace:{key}``."""
        try:
            return self._known[key]
        except (KeyError, TypeError):  # TypeError: not hashable, so not a valid key either
            pass
        if type(key) is not str or not key or key[0] == "}" or not _encodable(key):
            raise ConfigurationError(
                f"cache keys must be non-empty strings, not starting with '}}' and without lone "
                f"surrogates, got {key!r} (a leading '}}' would empty the Redis Cluster hash tag "
                "in 'namespace:{key}' and split the key from its lock); build one with e.g. "
                "f'user:{user_id}'"
            )
        name = self.prefix + key + "}"
        if len(self._known) >= self._REMEMBERED:
            self._known.clear()
        self._known[key] = name
        return name

    def helper(self, key: str, role: str) -> str:
        """The key of ``key``'s fence, lock, lease, stale copy or fill channel (same slot)."""
        return f"{self.value(key)}:{role}"

    def key_of(self, redis_key: str | bytes) -> str | None:
        """The cache key stored at ``redis_key``; None if it is not one of this namespace's
        values (helper keys end in ``:fence``, ``:lock``, ...)."""
        if isinstance(redis_key, bytes):
            try:
                redis_key = redis_key.decode()
            except UnicodeDecodeError:
                return None
        if redis_key.startswith(self.prefix) and redis_key.endswith("}"):
            return redis_key[len(self.prefix) : -1]
        return None

    def pattern(self) -> str:
        """A SCAN pattern matching every key of this namespace (values and helpers)."""
        return "".join("\\" + ch if ch in "*?[]\\" else ch for ch in self.prefix) + "*"

    def __repr__(self) -> str:
        return f"KeySpace({self.namespace!r})"
