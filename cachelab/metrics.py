"""Counters a cache keeps about itself, and the outcome of a single lookup."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from enum import StrEnum

__all__ = ["Outcome", "Stats"]


class Outcome(StrEnum):
    """How one ``get_or_set`` call was answered."""

    HIT = "hit"  # the value came from Redis (possibly through a read shared with other callers)
    LOAD = "load"  # it was missing and this caller ran the loader
    SHARED = "shared"  # it was missing and another caller's load answered this one (coalesced)
    ERROR = "error"  # the caller got an exception (reported by experiments, never returned)


@dataclass(slots=True)
class Stats:
    """Running counts for one :class:`~cachelab.Cache`.

    Every lookup ends as exactly one of ``hits`` (answered from Redis), ``misses`` (answered by a
    load) or ``errors`` (raised). A miss was answered either by this cache's own loader call
    (``loads`` counts loader calls, failed ones included) or by another caller's load
    (``coalesced``). ``corrupt`` counts stored entries that could not be decoded and were treated
    as missing. The backend load a cache causes is ``loads``.
    """

    hits: int = 0
    misses: int = 0
    loads: int = 0
    coalesced: int = 0
    errors: int = 0
    corrupt: int = 0

    @property
    def hit_ratio(self) -> float:
        """Hits per lookup (0.0 before the first lookup)."""
        lookups = self.hits + self.misses
        return self.hits / lookups if lookups else 0.0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)

    def reset(self) -> None:
        for f in fields(self):
            setattr(self, f.name, 0)
