"""An in-process L1 cache in front of Redis: bounded by entries (LRU), by age, and by the entry.

A dictionary lookup is thousands of times cheaper than a network round trip, so a near cache
absorbs hot reads. Its price is coherence: another process may change a key that this process
still holds. Invalidators (:mod:`cachelab.l1.invalidators`) tell the near cache which keys
changed; because such messages can be lost, every entry also has a maximum age, so staleness is
bounded even when nothing arrives. An entry never outlives what it copies: it leaves L1 when the
Redis entry expires (or turns stale, under stale-while-revalidate), whichever comes first.

The near cache stores what the cache gives it: immutable values as they are, anything else
:class:`Serialized`, so that each hit decodes a fresh copy (mutating a returned dict cannot change
later reads, and a value reads back exactly as Redis would give it: a tuple as a list, in JSON).

One race needs care: a read that fetched the old value from Redis *before* a write, but puts it
into L1 *after* the write's invalidation arrived, would leave the old value in L1 until its age
runs out. So every fill is bracketed: :meth:`NearCache.begin` hands out a ticket carrying the
key's version, :meth:`NearCache.invalidate` (and :meth:`NearCache.clear`) move versions on, and
:meth:`NearCache.put` refuses a ticket whose version is no longer current.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import asdict, dataclass
from typing import Any

from ..errors import ConfigurationError

__all__ = ["NearCache", "NearStats", "Serialized", "Ticket"]


@dataclass(slots=True)
class NearStats:
    """Counters of one near cache."""

    hits: int = 0
    misses: int = 0
    puts: int = 0
    refused: int = 0  # fills that lost the race against an invalidation
    evictions: int = 0  # dropped to stay within max_entries (least recently used first)
    expirations: int = 0  # dropped because older than max_age_s, or past the entry's TTL
    invalidations: int = 0  # keys dropped because someone said they changed
    flushes: int = 0  # whole-cache drops (e.g. after lost invalidations)
    flushed: int = 0  # entries those drops took with them

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


class Serialized:
    """A value kept as its serialized bytes: each hit decodes a fresh copy of it."""

    __slots__ = ("loads", "payload")

    def __init__(self, payload: bytes, loads: Callable[[bytes], Any]) -> None:
        self.payload, self.loads = payload, loads


@dataclass(frozen=True, slots=True)
class Ticket:
    """Proof of when a fill started; :meth:`NearCache.put` accepts it only if still current."""

    key: Hashable
    version: int
    epoch: int


class NearCache:
    """At most ``max_entries`` items, none older than ``max_age_s`` seconds nor than its entry.

    ``clock`` returns seconds (``time.monotonic`` by default); tests may pass their own.
    """

    def __init__(
        self,
        max_entries: int = 10_000,
        max_age_s: float = 5.0,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not isinstance(max_entries, int) or isinstance(max_entries, bool) or max_entries < 1:
            raise ConfigurationError(f"max_entries must be a positive int, got {max_entries!r}")
        if (
            not isinstance(max_age_s, int | float)
            or isinstance(max_age_s, bool)
            or not (max_age_s > 0 and math.isfinite(max_age_s))
        ):
            raise ConfigurationError(
                f"max_age_s must be a positive, finite number of seconds, got {max_age_s!r}; it "
                "bounds how long a lost invalidation can leave a stale value here"
            )
        self.max_entries = max_entries
        self.max_age_s = float(max_age_s)
        self.stats = NearStats()
        self._clock = clock
        self._entries: OrderedDict[Hashable, tuple[Any, float]] = OrderedDict()
        self._versions: dict[Hashable, int] = {}  # keys with a fill in flight
        self._in_flight: dict[Hashable, int] = {}
        self._epoch = 0

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: Hashable) -> bool:
        return self.get(key, count=False)[0]

    def __repr__(self) -> str:
        return (
            f"<NearCache {len(self)}/{self.max_entries} entries, max age {self.max_age_s:g}s, "
            f"{self.stats.hits} hits>"
        )

    def get(self, key: Hashable, *, count: bool = True) -> tuple[bool, Any]:
        """``(found, value)``; an entry past its deadline is dropped and reads missing. A value
        kept :class:`Serialized` is decoded afresh for each hit."""
        found = self._entries.get(key)
        if found is not None:
            item, deadline = found
            if self._clock() < deadline:
                self._entries.move_to_end(key)
                if count:
                    self.stats.hits += 1
                if type(item) is Serialized:
                    return True, item.loads(item.payload)
                return True, item
            del self._entries[key]
            self.stats.expirations += 1
        if count:
            self.stats.misses += 1
        return False, None

    def begin(self, key: Hashable) -> Ticket:
        """Start a fill of ``key`` (before reading Redis); pass the ticket to put() and end()."""
        self._in_flight[key] = self._in_flight.get(key, 0) + 1
        version = self._versions.setdefault(key, 0)
        return Ticket(key, version, self._epoch)

    def put(self, ticket: Ticket, item: Any, *, ttl_s: float | None = None) -> bool:
        """Keep ``item`` (for at most ``ttl_s``, the entry's time left) if no invalidation of its
        key (or flush) happened since ``begin``."""
        if not self._current(ticket):
            self.stats.refused += 1
            return False
        self._store(ticket.key, item, ttl_s)
        return True

    def end(self, ticket: Ticket) -> None:
        """Finish a fill (always call it, e.g. in ``finally``)."""
        left = self._in_flight.get(ticket.key, 0) - 1
        if left > 0:
            self._in_flight[ticket.key] = left
        else:
            self._in_flight.pop(ticket.key, None)
            self._versions.pop(ticket.key, None)

    def set(
        self, key: Hashable, item: Any, ticket: Ticket | None = None, *, ttl_s: float | None = None
    ) -> bool:
        """Keep ``item`` now (this process's own write) and void fills still in flight.

        With the ``ticket`` of a :meth:`begin` made before the write was sent, an invalidation
        (or flush) that arrived since means another write overtook this one: nothing is stored
        (counted as refused) and False is returned.
        """
        if ticket is not None and not self._current(ticket):
            self.stats.refused += 1
            return False
        if key in self._versions:
            self._versions[key] += 1
        self._store(key, item, ttl_s)
        return True

    def _current(self, ticket: Ticket) -> bool:
        return ticket.epoch == self._epoch and self._versions.get(ticket.key) == ticket.version

    def _store(self, key: Hashable, item: Any, ttl_s: float | None) -> None:
        age = self.max_age_s if ttl_s is None else min(self.max_age_s, ttl_s)
        if not age > 0:  # already past its entry's TTL: nothing to keep
            self._entries.pop(key, None)
            return
        self._entries[key] = (item, self._clock() + age)
        self._entries.move_to_end(key)
        self.stats.puts += 1
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)
            self.stats.evictions += 1

    def invalidate(self, key: Hashable) -> bool:
        """Drop ``key`` and void fills of it in flight; True if an entry was dropped."""
        if key in self._versions:
            self._versions[key] += 1
        dropped = self._entries.pop(key, None) is not None
        self.stats.invalidations += dropped
        return dropped

    def clear(self) -> int:
        """Drop everything and void every fill in flight; returns how many entries were dropped."""
        dropped = len(self._entries)
        self._entries.clear()
        self._epoch += 1
        self.stats.flushes += 1
        self.stats.flushed += dropped
        return dropped
