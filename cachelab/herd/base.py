"""What every herd policy is: settings that a cache binds to its store, and three verbs.

A herd policy decides, when many callers want a key, who calls the loader. It talks to Redis
only through the cache's :class:`~cachelab.store.RedisStore` and never reaches into the cache:
the cache hands it a :class:`~cachelab.store.Read` (what the lookup found, and the key's fence)
and a ``produce`` callable (call the loader once, time it, encode the value), and asks one of:

- :meth:`~HerdPolicy.load`: the key is missing; return its value and how it was obtained;
- :meth:`~HerdPolicy.refresh`: a refresh policy (XFetch) wants the key reloaded early, in the
  foreground; do it, or return :data:`NOT_REFRESHED` if someone else already is (the caller then
  serves the value it has);
- :meth:`~HerdPolicy.revalidate`: stale-while-revalidate wants it reloaded in the background.

Loads and refreshes are kept apart (as Caffeine keeps its ``refreshes`` map beside the data map),
so a miss never receives what a refresh returns. Every fill is fenced (see
:mod:`cachelab.store`), so no policy can store a value a write has superseded.

The object a user makes (``Distributed(lock_ttl=5)``) holds settings only. Each cache calls
:meth:`~HerdPolicy.bind`, which returns a working copy with its own in-flight state, so one
policy object may configure many caches without mixing their keys.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Self

from ..codec import Packed
from ..errors import ConfigurationError
from ..metrics import Outcome

if TYPE_CHECKING:
    from ..store import Read, RedisStore

__all__ = [
    "NOT_REFRESHED",
    "HerdPolicy",
    "HerdStatistics",
    "Loaded",
    "Produce",
    "non_negative_seconds",
    "quietly",
]


@dataclass(frozen=True, slots=True)
class Loaded:
    """A loader's value, with its serialized payload and the entry to store."""

    value: Any
    payload: bytes
    packed: Packed


@dataclass(frozen=True, slots=True)
class HerdStatistics:
    """A snapshot of a bound policy's in-flight work (see :meth:`HerdPolicy.statistics`)."""

    in_flight: int
    callers: int


Produce = Callable[[], Awaitable[Loaded]]
"""Call the loader once (counted in the cache's stats), time it, and encode its value."""

NOT_REFRESHED: Any = object()
"""Returned by :meth:`HerdPolicy.refresh` when another caller is already reloading the key."""


class HerdPolicy:
    """Decides who loads a missing key. Subclasses set ``name`` and implement :meth:`load`."""

    name: ClassVar[str]
    keep_stale_s: float = 0.0
    """How long a deleted value stays readable as stale (only leases serve stale values)."""

    store: RedisStore

    def __init__(self, *, fence: bool = True) -> None:
        if not isinstance(fence, bool):
            raise ConfigurationError(f"fence must be True or False, got {fence!r}")
        self.fence = fence
        """False stores fills unchecked: for teaching only, to show the stale set that a fill
        which raced a write leaves behind (the classic cache-aside bug)."""

    def token(self, fence: int) -> int | None:
        """What a fill presents: the fence it read or was granted, or None when unfenced."""
        return fence if self.fence else None

    def bind(self, store: RedisStore) -> Self:
        """A working copy of this policy for one cache: the same settings, fresh state."""
        bound = copy.copy(self)
        bound.store = store
        bound._start()
        return bound

    def _start(self) -> None:
        """Create the in-flight state of a bound copy (nothing, for policies without any)."""

    def __getattr__(self, name: str) -> Any:
        if name == "store":
            raise ConfigurationError(
                f"this {type(self).__name__} holds settings only; pass it to a Cache "
                "(Cache(..., policy=...)) rather than calling it directly"
            )
        raise AttributeError(name)

    async def read(self, key: str) -> Read:
        """The Redis read of a lookup: the key's entry and its fence."""
        return await self.store.read(key)

    async def load(self, key: str, read: Read, produce: Produce) -> tuple[Any, Outcome]:
        """``key`` was not cached (``read`` says so): return its value and how it was obtained."""
        raise NotImplementedError

    async def refresh(self, key: str, read: Read, produce: Produce) -> Any:
        """Reload ``key`` early; :data:`NOT_REFRESHED` if another caller is already at it."""
        loaded = await produce()
        await self.store.fill(key, loaded.packed, self.token(read.fence))
        return loaded.value

    async def revalidate(self, key: str, read: Read, produce: Produce) -> bool:
        """Reload a stale ``key`` in the background, as :meth:`refresh` would; False if another
        caller was already reloading it."""
        return await self.refresh(key, read, produce) is not NOT_REFRESHED

    def forget(self, key: str) -> None:
        """``key`` was just written here, or announced as changed: a lookup that starts now must
        not join a read of it that is already in flight."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}()" if self.fence else f"{type(self).__name__}(fence=False)"


def non_negative_seconds(value: object, name: str, hint: str, *, allow_none: bool = False) -> Any:
    """``value`` as float seconds >= 0 (or None where allowed); a ConfigurationError if not."""
    if value is None and allow_none:
        return None
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not (value >= 0 and math.isfinite(value))
    ):
        raise ConfigurationError(
            f"{name} must be a finite number of seconds >= 0"
            f"{' or None' if allow_none else ''}, got {value!r}; {hint}"
        )
    return float(value)


async def quietly(call: Awaitable[Any]) -> None:
    """Finish ``call`` even if the caller is cancelled meanwhile, ignoring its errors: for
    clean-ups (a release, a give-back) whose failure leaves only something that expires."""
    with contextlib.suppress(Exception):
        await asyncio.shield(call)
