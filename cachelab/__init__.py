"""cachelab: see a cache stampede happen on Redis, and measure every known fix side by side.

The public API is re-exported here; the modules behind it are small and each holds one idea:
``connection`` (find or start a Redis), ``cache`` (read-/write-through), ``policies`` (who loads
on a miss), ``singleflight`` (LockTable and SingleFlight), ``serializers``, ``errors`` and
``experiments``.
"""

from .cache import Cache, Lookup
from .connection import RedisSource, clone_client, connect, redact_url, source_of
from .errors import (
    CachelabError,
    ConfigurationError,
    InvalidURLError,
    RedisUnavailableError,
    SerializationError,
)
from .metrics import Outcome, Stats
from .policies import HERD_POLICIES, HerdPolicy
from .serializers import JsonSerializer, Serializer
from .singleflight import LockTable, SingleFlight

__version__ = "0.1.0"

__all__ = [
    "HERD_POLICIES",
    "Cache",
    "CachelabError",
    "ConfigurationError",
    "HerdPolicy",
    "InvalidURLError",
    "JsonSerializer",
    "LockTable",
    "Lookup",
    "Outcome",
    "RedisSource",
    "RedisUnavailableError",
    "SerializationError",
    "Serializer",
    "SingleFlight",
    "Stats",
    "clone_client",
    "connect",
    "redact_url",
    "source_of",
]
