"""The near cache (L1) and the invalidators that keep it true across processes."""

from .invalidators import (
    INVALIDATORS,
    InvalidationStats,
    Invalidator,
    PubSubInvalidator,
    StreamInvalidator,
    TrackingInvalidator,
    invalidator,
    kill_connections,
)
from .near import NearCache, NearStats, Serialized, Ticket

__all__ = [
    "INVALIDATORS",
    "InvalidationStats",
    "Invalidator",
    "NearCache",
    "NearStats",
    "PubSubInvalidator",
    "Serialized",
    "StreamInvalidator",
    "Ticket",
    "TrackingInvalidator",
    "invalidator",
    "kill_connections",
]
