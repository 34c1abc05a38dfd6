"""Counters a cache keeps about itself, and the outcome of a single lookup."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from enum import StrEnum

__all__ = ["Outcome", "Stats"]


class Outcome(StrEnum):
    """How one ``lookup`` / ``get_or_set`` call was answered."""

    HIT = "hit"  # a fresh value from Redis (possibly through a read shared with other callers)
    STALE = "stale"  # an old value served at once while it is refreshed in the background
    REFRESH = "refresh"  # the value was cached, but this caller recomputed it early (XFetch)
    LOAD = "load"  # it was missing and this caller ran the loader
    SHARED = "shared"  # it was missing and another caller's load answered this one (coalesced)
    BYPASS = "bypass"  # Redis was unavailable (on_redis_error="open"): the loader answered
    ERROR = "error"  # the caller got an exception (reported by experiments, never returned)


@dataclass(slots=True)
class Stats:
    """Running counts for one :class:`~cachelab.Cache`.

    Every lookup ends as exactly one of ``hits`` (a fresh value from Redis), ``stale`` (an old
    value served during a background refresh), ``refreshes`` (recomputed early by this caller),
    ``misses`` (not cached, answered by a load), ``bypassed`` (Redis unavailable, answered by the
    loader without caching) or ``errors`` (raised). A miss was answered either by this cache's own
    loader call or by another caller's load (``coalesced``).

    ``loads`` counts loader calls of every kind (misses, early and background refreshes, failed
    ones too): the backend load this cache causes. ``rejected`` counts loaded values that were not
    stored because the key's fence moved on meanwhile (a newer lock grant, write or delete).
    ``corrupt`` counts stored entries that could not be decoded and were treated as missing.

    When Redis is down: ``redis_errors`` counts commands that tried Redis and failed (refused,
    reset, timed out); ``breaker_rejected`` those the open circuit breaker kept from trying at all;
    ``pool_timeouts`` those that found every connection of the pool busy (Redis may be fine; the
    breaker does not count them); ``unwritten`` the writes and deletes that, with
    ``on_redis_error="open"``, were given up.
    """

    hits: int = 0
    stale: int = 0
    refreshes: int = 0
    misses: int = 0
    errors: int = 0
    coalesced: int = 0
    loads: int = 0
    rejected: int = 0
    background_refreshes: int = 0
    background_errors: int = 0
    corrupt: int = 0
    bypassed: int = 0
    redis_errors: int = 0
    breaker_rejected: int = 0
    pool_timeouts: int = 0
    unwritten: int = 0

    @property
    def lookups(self) -> int:
        return self.hits + self.stale + self.refreshes + self.misses + self.bypassed + self.errors

    @property
    def hit_ratio(self) -> float:
        """Lookups answered from the cache (fresh or stale) per lookup (0.0 before any)."""
        lookups = self.lookups
        return (self.hits + self.stale) / lookups if lookups else 0.0

    def count(self, outcome: Outcome) -> None:
        """Record the outcome of one successful lookup."""
        if outcome is Outcome.HIT:
            self.hits += 1
        elif outcome is Outcome.STALE:
            self.stale += 1
        elif outcome is Outcome.REFRESH:
            self.refreshes += 1
        elif outcome is Outcome.BYPASS:
            self.bypassed += 1
        else:
            self.misses += 1
            if outcome is Outcome.SHARED:
                self.coalesced += 1

    def as_dict(self) -> dict[str, int]:
        return asdict(self)

    def reset(self) -> None:
        for f in fields(self):
            setattr(self, f.name, 0)
