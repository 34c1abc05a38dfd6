"""cachelab: see a cache stampede happen on Redis, and measure every known fix side by side.

The public API is re-exported here. The core is layered, each layer looking only down:
``keys`` (Redis key names) and ``codec`` (values to stored entries); ``store`` (every Redis command
and Lua script of the cache, under the circuit breaker of ``breaker``); ``redis_lock`` and
``singleflight``; ``herd`` (who loads on a miss) and ``refresh`` (when to reload early); ``l1``
(the near cache and its invalidators); and ``cache``, the facade. Around it: ``connection`` (find
or start a Redis), ``streams``, ``serializers``, ``errors``, ``testing`` and ``experiments``.
"""

from .breaker import CircuitBreaker
from .cache import Cache, Lookup
from .cluster import RedisClient
from .codec import Entry
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
from .herd import (
    HERD_POLICIES,
    Distributed,
    HerdPolicy,
    Lease,
    LocalSingleFlight,
    LockTablePolicy,
    NoProtection,
)
from .l1 import (
    Invalidator,
    NearCache,
    PubSubInvalidator,
    StreamInvalidator,
    TrackingInvalidator,
)
from .metrics import Outcome, Stats
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
    "RedisClient",
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
