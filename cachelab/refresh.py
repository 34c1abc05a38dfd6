"""Refresh policies: when should a value be reloaded *before* it expires?

Herd policies decide who loads on a miss; a refresh policy tries to make the miss not happen.
Each one looks at a cached entry (its value, how long its last load took, when it expires) and
returns a verdict for *this* read:

- ``FRESH``: serve it.
- ``EARLY``: this reader should recompute now, in the foreground, while the old value is still
  valid; if someone else is already recomputing, serve the old value instead of waiting.
- ``STALE``: serve the old value at once and refresh it in the background (one refresh per key).

Policies:

- ``None`` (hard TTL): every entry is fresh until Redis expires it.
- :class:`XFetch` (Vattani, Chierichetti, Lowenstein, PVLDB 2015): recompute early when
  ``now - delta * beta * ln(rand()) >= expiry``, where ``delta`` is how long the last recompute
  took. The chance rises smoothly as expiry nears and as loads get slower; ``beta > 1`` refreshes
  earlier. Expected recomputes per expiry are about ``e^(1/beta)``, whatever the request rate.
- :class:`StaleWhileRevalidate` (after HTTP's RFC 5861): fresh for ``soft_ttl`` seconds, then
  served stale while one background refresh runs, until the hard TTL removes it.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from enum import Enum
from typing import Protocol

from .errors import ConfigurationError

__all__ = [
    "EntryTimes",
    "RefreshPolicy",
    "StaleWhileRevalidate",
    "Verdict",
    "XFetch",
    "refresh_policy",
]


class Verdict(Enum):
    FRESH = "fresh"
    EARLY = "early"
    STALE = "stale"


class EntryTimes(Protocol):
    """What a refresh policy may look at: the entry's timings (Unix seconds / milliseconds).

    Read-only (properties), so that a named tuple such as :class:`~cachelab.Entry` fits."""

    @property
    def load_ms(self) -> float: ...
    @property
    def expires_at(self) -> float: ...
    @property
    def soft_expires_at(self) -> float | None: ...


class RefreshPolicy:
    """Base class: never refresh early (a hard TTL). Subclasses override :meth:`verdict`, a pure
    function of the entry's timings and the clock; the cache's herd policy carries it out."""

    name = "none"
    soft_ttl_s: float | None = None
    """Seconds after a write at which the entry turns stale (None: never before it expires)."""

    def verdict(self, entry: EntryTimes, now: float) -> Verdict:
        return Verdict.FRESH

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


@dataclass(repr=False)
class XFetch(RefreshPolicy):
    """Probabilistic early recomputation; ``rng`` can be seeded for reproducible experiments."""

    beta: float = 1.0
    rng: random.Random | None = None

    name = "xfetch"

    def __post_init__(self) -> None:
        beta = self.beta
        if isinstance(beta, bool) or not isinstance(beta, int | float) or not 0 < beta < math.inf:
            raise ConfigurationError(
                f"XFetch beta must be a positive, finite number, got {beta!r}; 1.0 is the "
                "paper's default, larger values refresh earlier"
            )
        self._random = (self.rng or random.Random()).random

    def verdict(self, entry: EntryTimes, now: float) -> Verdict:
        delta = entry.load_ms / 1000
        if delta <= 0:
            return Verdict.FRESH  # no recompute time known (written by set()): nothing to weigh
        gap = -delta * self.beta * math.log(1.0 - self._random())  # 1 - random() is in (0, 1]
        return Verdict.EARLY if now + gap >= entry.expires_at else Verdict.FRESH

    def __repr__(self) -> str:
        return f"XFetch(beta={self.beta:g})"


@dataclass(repr=False)
class StaleWhileRevalidate(RefreshPolicy):
    """Fresh for ``soft_ttl_s`` seconds; after that, serve the old value while one refresh runs.

    With ``ttl_jitter`` the soft TTL is spread by the same factor as the TTL, so every entry
    still turns stale before it expires."""

    soft_ttl_s: float  # required here, None on the base class

    name = "swr"

    def __post_init__(self) -> None:
        soft = self.soft_ttl_s
        if (
            isinstance(soft, bool)
            or not isinstance(soft, int | float)
            or not (soft > 0 and math.isfinite(soft))
        ):
            raise ConfigurationError(
                f"stale-while-revalidate needs a positive, finite soft TTL in seconds, got "
                f"{soft!r}; it must be shorter than the cache's ttl"
            )
        self.soft_ttl_s = float(soft)

    def verdict(self, entry: EntryTimes, now: float) -> Verdict:
        soft = entry.soft_expires_at
        return Verdict.STALE if soft is not None and now >= soft else Verdict.FRESH

    def __repr__(self) -> str:
        return f"StaleWhileRevalidate(soft_ttl_s={self.soft_ttl_s:g})"


def refresh_policy(spec: str | RefreshPolicy | None) -> RefreshPolicy:
    """``None``/``"none"`` -> hard TTL; ``"xfetch"`` -> XFetch(beta=1); or an instance."""
    if spec is None or spec == "none":
        return RefreshPolicy()
    if spec == "xfetch":
        return XFetch()
    if isinstance(spec, RefreshPolicy):
        return spec
    raise ConfigurationError(
        f"unknown refresh policy {spec!r}; use None, 'xfetch', XFetch(beta=...) or "
        "StaleWhileRevalidate(soft_ttl_s=...)"
    )
