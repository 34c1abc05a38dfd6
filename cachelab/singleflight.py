"""Two ways to let one coroutine load a key while the others wait.

:class:`LockTable` is the classic approach (and the earlier demo's): a lock per key; whoever holds
it loads, the rest queue on the lock and re-check the cache when their turn comes. It works, but
every waiter passes through the lock one at a time, and if the loader fails each waiter tries again
in turn, serially.

:class:`SingleFlight` (after Go's ``golang.org/x/sync/singleflight``) shares the *call* instead of a
lock: the first caller starts the work, later callers await the same result, and a failure reaches
all of them at once. Nothing is cached: once the call finishes, the next caller starts a new one.

Both keep memory proportional to the keys *in use*, not to every key ever seen.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from .tasks import cancel_for_good

__all__ = [
    "InlineFlight",
    "LockTable",
    "LockTableStatistics",
    "SingleFlight",
    "SingleFlightStatistics",
]

T = TypeVar("T")


@dataclass(frozen=True)
class LockTableStatistics:
    """A snapshot: keys with a live lock, and how many coroutines hold or wait on them."""

    keys: int
    holders_and_waiters: int


class _Entry:
    __slots__ = ("lock", "users")

    def __init__(self) -> None:
        self.lock = asyncio.Lock()
        self.users = 0


class LockTable:
    """Per-key :class:`asyncio.Lock` objects, created on demand and dropped when nobody uses them.

    ``async with table.lock(key): ...`` serialises coroutines per key. While any coroutine holds or
    waits for a key's lock, every caller gets the same lock object; when the last one leaves, the
    entry is removed, so ``len(table)`` counts only keys in use.
    """

    def __init__(self) -> None:
        self._entries: dict[Hashable, _Entry] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._entries

    @contextlib.asynccontextmanager
    async def lock(self, key: Hashable) -> AsyncIterator[asyncio.Lock]:
        """Hold the lock for ``key`` for the body of the ``async with``; yields the lock."""
        entry = self._entries.get(key)
        if entry is None:
            entry = self._entries[key] = _Entry()
        entry.users += 1
        try:
            async with entry.lock:
                yield entry.lock
        finally:
            entry.users -= 1
            if entry.users == 0:
                del self._entries[key]

    def statistics(self) -> LockTableStatistics:
        return LockTableStatistics(
            keys=len(self._entries),
            holders_and_waiters=sum(e.users for e in self._entries.values()),
        )


@dataclass(frozen=True)
class SingleFlightStatistics:
    """A snapshot: calls in flight and how many callers wait on them (including the first)."""

    in_flight: int
    callers: int


class _Call(Generic[T]):
    __slots__ = ("callers", "keys", "task")

    def __init__(self, task: asyncio.Task[T], key: Hashable) -> None:
        self.task = task
        self.callers = 0
        self.keys = [key]


class SingleFlight:
    """Deduplicate concurrent calls per key: ``value, shared = await sf.do(key, fn)``.

    - The first caller for a key starts ``fn()`` in a task; callers arriving while it runs await the
      same task and get the same value, or the same exception.
    - ``shared`` is True when the result went to more than one caller (Go's ``shared`` flag).
    - Cancelling a caller (even the first) does not cancel the work the others wait for. When every
      caller has been cancelled, nobody wants the result any more: the key is forgotten (a new
      caller starts a new call) and the work is cancelled.
    - The key's entry is removed as soon as the call finishes: nothing is cached.
    """

    def __init__(self) -> None:
        self._calls: dict[Hashable, _Call[Any]] = {}

    def __len__(self) -> int:
        return len(self._distinct())

    def __contains__(self, key: Hashable) -> bool:
        return key in self._calls

    def _distinct(self) -> list[_Call[Any]]:
        """The calls in flight, each once (an alias is a second key for the same call)."""
        return list({id(call): call for call in self._calls.values()}.values())

    async def do(self, key: Hashable, fn: Callable[[], Awaitable[T]]) -> tuple[T, bool]:
        call = self._calls.get(key)
        if call is None:
            call = self._calls[key] = _Call(asyncio.ensure_future(fn()), key)
            call.task.add_done_callback(lambda _t: self._finished(call))  # `call` is not rebound
        call.callers += 1
        try:
            value = await asyncio.shield(call.task)
        except asyncio.CancelledError:
            call.callers -= 1
            if call.callers == 0:
                # Nobody wants the result any more. Forget the key first: the work may take a
                # while to wind down (a clean-up that awaits Redis), and a caller arriving
                # meanwhile must start afresh, not join a flight that is being cancelled.
                self._finished(call)
                cancel_for_good(call.task)  # once may not stick: see cachelab.tasks
            if call.task.done() and not call.task.cancelled():
                call.task.exception()  # mark any error as retrieved: nobody is left to see it
            raise
        return value, call.callers > 1

    def forget(self, key: Hashable) -> None:
        """Detach ``key``: later callers start a new call even while the current one runs."""
        self._calls.pop(key, None)

    def alias(self, key: Hashable, also: Hashable) -> None:
        """Let callers of ``also`` join the call in flight for ``key`` (until it ends), as if
        they had come for ``key``; nothing happens if no call for ``key`` is in flight."""
        call = self._calls.get(key)
        if call is not None and also not in self._calls:
            self._calls[also] = call
            call.keys.append(also)

    def _finished(self, call: _Call[Any]) -> None:
        for key in call.keys:
            if self._calls.get(key) is call:
                del self._calls[key]

    def statistics(self) -> SingleFlightStatistics:
        calls = self._distinct()
        return SingleFlightStatistics(in_flight=len(calls), callers=sum(c.callers for c in calls))


class _LeaderCancelled(Exception):
    """Internal: the caller doing the work was cancelled; waiters must try again themselves."""


class InlineFlight:
    """Single-flight for cheap, idempotent work (such as one Redis GET), without a task.

    The first caller runs ``fn()`` in its own task, so an uncontended call costs almost nothing
    over calling ``fn()`` directly: this sits on every cache hit. Callers arriving meanwhile wait
    for its result (or its error). Because the work runs inside the first caller, cancelling that
    caller stops it; the waiters then simply run it again (one of them becomes the new first
    caller). That is only acceptable when the work is cheap and safe to repeat; expensive work
    such as a load belongs in :class:`SingleFlight`.
    """

    def __init__(self) -> None:
        self._pending: dict[Hashable, list[asyncio.Future[Any]]] = {}

    def __len__(self) -> int:
        return len(self._pending)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._pending

    async def do(
        self, key: Hashable, fn: Callable[..., Awaitable[T]], *args: Any
    ) -> tuple[T, bool]:
        """``(value, leader)``: ``leader`` is True for the caller that ran ``fn(*args)``.

        The first caller registers an empty list; each waiter appends a future of its own, so
        the uncontended path allocates no future at all, and a waiter that is cancelled cancels
        only its own future.
        """
        while (waiters := self._pending.get(key)) is not None:
            mine = asyncio.get_running_loop().create_future()
            waiters.append(mine)
            try:
                return await mine, False
            except _LeaderCancelled:
                continue
        waiters = self._pending[key] = []
        try:
            value = await fn(*args)
        except BaseException as exc:
            failure = _LeaderCancelled() if isinstance(exc, asyncio.CancelledError) else exc
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_exception(failure)
            raise
        else:
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(value)
            return value, True
        finally:
            if self._pending.get(key) is waiters:
                del self._pending[key]

    def forget(self, key: Hashable) -> None:
        """Detach ``key``: later callers run ``fn`` anew instead of waiting for the current call."""
        self._pending.pop(key, None)
