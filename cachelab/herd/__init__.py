"""Herd policies: when many callers want a key that is missing, who calls the loader?

- ``"none"``: plain cache-aside; every caller that misses loads (the stampede, as a baseline).
- ``"lock_table"``: a per-key asyncio lock; waiters re-read Redis one at a time (one process).
- ``"local"``: single-flight per process: one Redis read and one load per key per process.
- ``"distributed"``: ``local``, then a Redis lock: one load per key across every process.
- ``"lease"``: memcache leases: one load per key across every process, stale sets refused.

Each is a small class against one protocol (:class:`HerdPolicy`: load, refresh, revalidate);
see :mod:`cachelab.herd.base`.
"""

from __future__ import annotations

from typing import Any

from ..errors import ConfigurationError
from .base import NOT_REFRESHED, HerdPolicy, HerdStatistics, Loaded, Produce
from .distributed import Distributed
from .lease import Lease
from .local import LocalSingleFlight
from .lock_table import LockTablePolicy
from .none import NoProtection

__all__ = [
    "HERD_POLICIES",
    "NOT_REFRESHED",
    "Distributed",
    "HerdPolicy",
    "HerdStatistics",
    "Lease",
    "Loaded",
    "LocalSingleFlight",
    "LockTablePolicy",
    "NoProtection",
    "Produce",
    "herd_policy",
]

HERD_POLICIES: dict[str, type[HerdPolicy]] = {
    p.name: p for p in (NoProtection, LockTablePolicy, LocalSingleFlight, Distributed, Lease)
}


def herd_policy(spec: str | HerdPolicy, **options: Any) -> HerdPolicy:
    """A policy for a name (with its ``options``), or the given instance."""
    if isinstance(spec, HerdPolicy):
        return spec
    try:
        cls = HERD_POLICIES[spec]
    except (KeyError, TypeError):
        raise ConfigurationError(
            f"unknown herd policy {spec!r}; choose one of {', '.join(HERD_POLICIES)} "
            "or pass a HerdPolicy instance"
        ) from None
    try:
        return cls(**options)
    except TypeError as exc:
        raise ConfigurationError(
            f"herd policy {spec!r} does not take these options: {exc}"
        ) from None
