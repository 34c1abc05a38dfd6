"""cachelab: see a cache stampede happen on Redis, and measure every known fix side by side.

The public API is re-exported here; the modules behind it are small and each holds one idea:
``connection`` (find or start a Redis), ``cache`` (read-/write-through), ``breaker`` (stop calling
a Redis that is down), ``policies`` (who loads on a miss), ``refresh`` (when to reload early),
``singleflight`` (LockTable, SingleFlight), ``redis_lock`` (a notification-woken, fenced Redis
lock), ``subscriber`` (one shared pub/sub connection), ``fencing`` (the version counter and its
Lua), ``near_cache`` (the L1) and ``invalidation`` (keeping it true), ``streams``,
``serializers``, ``errors`` and ``experiments``.
"""

from .breaker import CircuitBreaker
from .cache import Cache, Entry, Lookup
from .connection import RedisSource, clone_client, connect, redact_url, source_of
from .errors import (
    AuthenticationError,
    CachelabError,
    CacheUnavailableError,
    ConfigurationError,
    ExperimentError,
    InvalidURLError,
    LockError,
    LockLostError,
    LockTimeoutError,
    NotebookError,
    RedisUnavailableError,
    RemoteLoadError,
    SerializationError,
    StreamError,
    ValueTooLargeError,
)
from .invalidation import (
    Invalidator,
    PubSubInvalidator,
    StreamInvalidator,
    TrackingInvalidator,
)
from .metrics import Outcome, Stats
from .near_cache import NearCache
from .policies import (
    HERD_POLICIES,
    Distributed,
    HerdPolicy,
    Lease,
    LocalSingleFlight,
    LockTablePolicy,
    NoProtection,
)
from .redis_lock import RedisLock
from .refresh import RefreshPolicy, StaleWhileRevalidate, XFetch
from .serializers import JsonSerializer, PickleSerializer, Serializer
from .singleflight import LockTable, SingleFlight

__version__ = "0.1.0"

__all__ = [
    "HERD_POLICIES",
    "AuthenticationError",
    "Cache",
    "CacheUnavailableError",
    "CachelabError",
    "CircuitBreaker",
    "ConfigurationError",
    "Distributed",
    "Entry",
    "ExperimentError",
    "HerdPolicy",
    "InvalidURLError",
    "Invalidator",
    "JsonSerializer",
    "Lease",
    "LocalSingleFlight",
    "LockError",
    "LockLostError",
    "LockTable",
    "LockTablePolicy",
    "LockTimeoutError",
    "Lookup",
    "NearCache",
    "NoProtection",
    "NotebookError",
    "Outcome",
    "PickleSerializer",
    "PubSubInvalidator",
    "RedisLock",
    "RedisSource",
    "RedisUnavailableError",
    "RefreshPolicy",
    "RemoteLoadError",
    "SerializationError",
    "Serializer",
    "SingleFlight",
    "StaleWhileRevalidate",
    "Stats",
    "StreamError",
    "StreamInvalidator",
    "TrackingInvalidator",
    "ValueTooLargeError",
    "XFetch",
    "clone_client",
    "connect",
    "redact_url",
    "source_of",
]
