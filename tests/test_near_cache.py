"""NearCache (L1): LRU by use, maximum age on an injected clock, counters, and the fill race.

No Redis here: the near cache is a plain in-process structure, so every test drives it directly
and asserts exact counts.
"""

from __future__ import annotations

import pytest

from cachelab import ConfigurationError, NearCache


class Clock:
    """A clock that moves only when told to."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def keys_of(near: NearCache) -> list:
    return list(near._entries)  # least recently used first


# --- LRU --------------------------------------------------------------------------------------


def test_eviction_drops_the_least_recently_used_entry_not_the_oldest_insert():
    near = NearCache(max_entries=3)
    for key in "abc":
        near.set(key, key.upper())
    assert near.get("a") == (True, "A")  # a is now the most recently used
    near.set("d", "D")
    assert len(near) == 3
    assert near.get("b", count=False) == (False, None)  # b was the least recently used
    assert near.get("a", count=False) == (True, "A")
    assert near.stats.evictions == 1


def test_every_get_refreshes_recency():
    near = NearCache(max_entries=2)
    near.set("a", 1)
    near.set("b", 2)
    near.get("a")
    near.set("c", 3)  # evicts b
    near.get("a")
    near.set("d", 4)  # evicts c: a was read after c was stored
    assert sorted(keys_of(near)) == ["a", "d"]
    assert near.stats.evictions == 2


def test_overwriting_a_key_does_not_evict_and_makes_it_most_recent():
    near = NearCache(max_entries=2)
    near.set("a", 1)
    near.set("b", 2)
    near.set("a", 10)  # an update, not a new entry
    assert near.stats.evictions == 0
    near.set("c", 3)  # evicts b: a was written after b
    assert keys_of(near) == ["a", "c"]
    assert near.get("a") == (True, 10)


def test_size_never_exceeds_max_entries():
    near = NearCache(max_entries=50)
    for i in range(500):
        near.set(f"k{i}", i)
        assert len(near) <= 50
    assert near.stats.evictions == 450
    assert keys_of(near) == [f"k{i}" for i in range(450, 500)]


# --- maximum age ------------------------------------------------------------------------------


def test_an_entry_expires_at_max_age_on_the_injected_clock():
    clock = Clock()
    near = NearCache(max_age_s=5, clock=clock)
    near.set("a", 1)
    clock.advance(4.999)
    assert near.get("a") == (True, 1)
    clock.advance(0.001)  # exactly max_age_s old: too old
    assert near.get("a") == (False, None)
    assert len(near) == 0
    assert near.stats.expirations == 1
    assert near.stats.hits == 1
    assert near.stats.misses == 1


def test_reading_does_not_extend_an_entrys_age():
    clock = Clock()
    near = NearCache(max_age_s=1, clock=clock)
    near.set("a", 1)
    for _ in range(9):
        clock.advance(0.1)
        assert near.get("a")[0]
    clock.advance(0.1)
    assert near.get("a") == (False, None)


def test_a_rewrite_restarts_the_age():
    clock = Clock()
    near = NearCache(max_age_s=1, clock=clock)
    near.set("a", 1)
    clock.advance(0.9)
    near.set("a", 2)
    clock.advance(0.9)
    assert near.get("a") == (True, 2)


def test_contains_sees_expiry_without_counting_a_hit_or_miss():
    clock = Clock()
    near = NearCache(max_age_s=1, clock=clock)
    near.set("a", 1)
    assert "a" in near
    assert "b" not in near
    clock.advance(1)
    assert "a" not in near
    assert (near.stats.hits, near.stats.misses, near.stats.expirations) == (0, 0, 1)


# --- counters ---------------------------------------------------------------------------------


def test_stats_count_hits_misses_puts_invalidations_and_flushes():
    near = NearCache(max_entries=10)
    near.set("a", 1)
    near.set("b", 2)
    near.get("a")
    near.get("a")
    near.get("zzz")
    assert near.invalidate("a") is True
    assert near.invalidate("a") is False  # nothing left to drop: not counted again
    assert near.clear() == 1  # b
    assert near.stats.as_dict() == {
        "hits": 2,
        "misses": 1,
        "puts": 2,
        "refused": 0,
        "evictions": 0,
        "expirations": 0,
        "invalidations": 1,
        "flushes": 1,
        "flushed": 1,
    }
    assert len(near) == 0
    near.set("c", 3)
    near.set("d", 4)
    assert near.clear() == 2 and near.clear() == 0
    assert (near.stats.flushes, near.stats.flushed) == (3, 3)


def test_repr_shows_size_and_age():
    near = NearCache(max_entries=7, max_age_s=2.5)
    near.set("a", 1)
    assert "1/7" in repr(near)
    assert "2.5s" in repr(near)


# --- the fill race ----------------------------------------------------------------------------


def test_a_fill_that_began_before_an_invalidation_is_refused():
    near = NearCache()
    near.set("k", "old")
    near.invalidate("k")
    ticket = near.begin("k")  # a reader misses and goes to Redis ...
    near.invalidate("k")  # ... a write elsewhere is announced while it is away ...
    assert near.put(ticket, "old") is False  # ... so what it read must not land in L1
    near.end(ticket)
    assert near.stats.refused == 1
    assert near.get("k") == (False, None)


def test_a_fill_without_an_invalidation_is_stored():
    near = NearCache()
    ticket = near.begin("k")
    assert near.put(ticket, "v") is True
    near.end(ticket)
    assert near.get("k") == (True, "v")
    assert near.stats.refused == 0


def test_an_invalidation_of_another_key_does_not_void_the_fill():
    near = NearCache()
    ticket = near.begin("k")
    near.invalidate("other")
    assert near.put(ticket, "v") is True
    near.end(ticket)


def test_a_fill_that_began_after_the_invalidation_is_accepted():
    near = NearCache()
    first = near.begin("k")
    near.invalidate("k")
    second = near.begin("k")  # read Redis after the write: the new value
    assert near.put(first, "old") is False
    assert near.put(second, "new") is True
    near.end(first)
    near.end(second)
    assert near.get("k") == (True, "new")


def test_concurrent_fills_stay_voided_until_the_last_one_ends():
    near = NearCache()
    a = near.begin("k")
    b = near.begin("k")
    near.invalidate("k")
    near.end(a)  # one fill finishing must not forget that b is voided
    assert near.put(b, "old") is False
    near.end(b)
    assert near.get("k") == (False, None)


def test_clear_voids_every_fill_in_flight():
    near = NearCache()
    tickets = [near.begin(f"k{i}") for i in range(3)]
    near.set("x", 1)
    assert near.clear() == 1
    assert [near.put(t, "old") for t in tickets] == [False, False, False]
    for t in tickets:
        near.end(t)
    assert len(near) == 0
    assert near.stats.refused == 3
    after = near.begin("k0")  # fills begun after the flush are fine
    assert near.put(after, "new") is True
    near.end(after)


def test_set_voids_fills_of_that_key_and_keeps_the_written_value():
    near = NearCache()
    ticket = near.begin("k")  # a reader fetched the old value from Redis ...
    near.set("k", "mine")  # ... this process wrote a new one meanwhile
    assert near.put(ticket, "old") is False
    near.end(ticket)
    assert near.get("k") == (True, "mine")


def test_a_write_with_a_ticket_is_stored_unless_overtaken():
    near = NearCache()
    mine = near.begin("k")  # before this process sends its write
    reader = near.begin("k")  # a read of the old value, in flight
    assert near.set("k", "mine", mine) is True
    assert near.put(reader, "old") is False  # the write voids fills in flight
    near.end(mine)
    near.end(reader)
    assert near.get("k") == (True, "mine")

    mine = near.begin("k")
    near.invalidate("k")  # another process's later write was announced first
    assert near.set("k", "mine-again", mine) is False
    near.end(mine)
    assert near.get("k") == (False, None)
    assert near.stats.refused == 2

    mine = near.begin("k")
    near.clear()
    assert near.set("k", "after-flush", mine) is False
    near.end(mine)
    assert len(near) == 0


def test_end_leaves_no_bookkeeping_behind():
    near = NearCache(max_entries=100)
    for i in range(10_000):
        key = f"k{i}"
        ticket = near.begin(key)
        if i % 3 == 0:
            near.invalidate(key)
        elif i % 3 == 1:
            near.set(key, i)
        near.put(ticket, i)
        near.end(ticket)
    assert near._versions == {}
    assert near._in_flight == {}
    assert len(near) == 100


def test_invalidate_and_clear_without_fills_leave_no_bookkeeping():
    near = NearCache()
    for i in range(1000):
        near.invalidate(f"k{i}")
    near.clear()
    assert near._versions == {}
    assert near._in_flight == {}


# --- configuration ----------------------------------------------------------------------------


@pytest.mark.parametrize("max_entries", [0, -1, 1.5, True, "10", None])
def test_bad_max_entries_is_a_configuration_error(max_entries):
    with pytest.raises(ConfigurationError, match="max_entries"):
        NearCache(max_entries=max_entries)


@pytest.mark.parametrize("max_age_s", [0, -1, True, "5", None, float("nan"), float("inf")])
def test_bad_max_age_is_a_configuration_error(max_age_s):
    with pytest.raises(ConfigurationError, match="max_age_s"):
        NearCache(max_age_s=max_age_s)


def test_good_arguments_are_kept():
    near = NearCache(max_entries=1, max_age_s=1)
    assert (near.max_entries, near.max_age_s) == (1, 1.0)
    assert isinstance(near.max_age_s, float)
