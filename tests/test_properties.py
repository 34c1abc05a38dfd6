"""Property-based tests: serializers and the envelope round-trip; single-flight keeps its promises.

Each property runs a bounded number of generated examples (``max_examples`` below, no deadline:
the machine is shared and slow), so the file stays well under a minute.
"""

from __future__ import annotations

import asyncio
import importlib.util
from collections import Counter
from dataclasses import dataclass

import fakeredis
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cachelab import (
    Cache,
    JsonSerializer,
    LockTable,
    PickleSerializer,
    SerializationError,
)
from cachelab.codec import MAGIC, MAX_TTL_S, Codec
from cachelab.serializers import get_serializer
from cachelab.singleflight import SingleFlight

BOUNDED = settings(max_examples=75, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# --- serializers ------------------------------------------------------------------------------

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text()
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(), inner, max_size=5),
    max_leaves=30,
)


@BOUNDED
@given(json_values)
def test_json_round_trips_every_json_value(value):
    serializer = JsonSerializer()
    assert serializer.loads(serializer.dumps(value)) == value


needs_msgpack = pytest.mark.skipif(
    importlib.util.find_spec("msgpack") is None, reason="msgpack is optional and not installed"
)
INT64 = st.integers(min_value=-(2**63), max_value=2**64 - 1)  # what msgpack can encode


@needs_msgpack
@BOUNDED
@given(
    st.recursive(
        (json_scalars.filter(lambda v: not isinstance(v, int) or isinstance(v, bool)))
        | INT64
        | st.binary(),
        lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(), inner, max_size=5),
        max_leaves=30,
    )
)
def test_msgpack_round_trips_its_values(value):
    serializer = get_serializer("msgpack")
    assert serializer.loads(serializer.dumps(value)) == value


@needs_msgpack
@BOUNDED
@given(st.integers(min_value=2**64) | st.integers(max_value=-(2**63) - 1))
def test_msgpack_refuses_integers_beyond_64_bits_with_a_serialization_error(value):
    with pytest.raises(SerializationError, match="msgpack"):
        get_serializer("msgpack").dumps({"n": value})


@dataclass(frozen=True)
class Record:
    name: str
    score: float
    tags: tuple


hashable = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False)
    | st.text()
    | st.binary()
    | st.complex_numbers(allow_nan=False)
    | st.fractions()
    | st.decimals(allow_nan=False)
    | st.datetimes()
)
picklable = st.recursive(
    hashable | st.builds(Record, st.text(), st.floats(allow_nan=False), st.tuples(st.integers())),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.tuples(inner, inner)
        | st.dictionaries(hashable, inner, max_size=4)
        | st.frozensets(hashable, max_size=4)
        | st.sets(hashable, max_size=4)
    ),
    max_leaves=20,
)
SIGNED = PickleSerializer(b"property-test-key-0123456789")


@BOUNDED
@given(picklable)
def test_signed_pickle_round_trips_picklable_values(value):
    assert SIGNED.loads(SIGNED.dumps(value)) == value


@BOUNDED
@given(picklable, st.data())
def test_any_changed_byte_of_a_signed_pickle_is_refused(value, data):
    payload = SIGNED.dumps(value)
    index = data.draw(st.integers(0, len(payload) - 1), label="index")
    flip = data.draw(st.integers(1, 255), label="xor")
    changed = payload[:index] + bytes([payload[index] ^ flip]) + payload[index + 1 :]
    with pytest.raises(SerializationError):
        SIGNED.loads(changed)


# --- the envelope -----------------------------------------------------------------------------

finite = st.floats(min_value=0, max_value=1e10, allow_nan=False, allow_infinity=False)
ttls = st.floats(min_value=0.001, max_value=MAX_TTL_S, allow_nan=False)


class Raw:
    """Stores bytes as they are: the envelope is checked byte for byte."""

    name = "raw"

    def dumps(self, value: bytes) -> bytes:
        return value

    def loads(self, data: bytes) -> bytes:
        return data


NOW = 1764107000.0


def three_decimals(value: float) -> float:
    return float(f"{value:.3f}")


@BOUNDED
@given(st.binary(), finite, ttls, st.none() | st.floats(min_value=0.0001, max_value=0.9999))
def test_envelope_round_trip(payload, load_ms, ttl, soft_share):
    soft = None if soft_share is None else ttl * soft_share
    if soft is not None and not soft < ttl:
        return
    codec = Codec(Raw(), ttl=ttl, soft_ttl=soft, clock=lambda: NOW)
    entry = codec.decode(codec.pack(payload, None, load_ms).data)
    assert entry is not None
    assert entry.value == payload
    assert entry.load_ms == three_decimals(load_ms)
    assert entry.expires_at == three_decimals(NOW + ttl)
    assert entry.soft_expires_at == (None if soft is None else three_decimals(NOW + soft))


@BOUNDED
@given(st.binary() | st.binary().map(lambda b: MAGIC + b" " + b))
def test_decoding_never_raises(raw):
    entry = Codec(Raw(), ttl=60).decode(raw)
    assert entry is None or raw.startswith(MAGIC + b" ")


@pytest.fixture(scope="module")
def decoder():
    return Cache(fakeredis.FakeAsyncRedis(), namespace="properties", ttl=60)


@BOUNDED
@given(
    st.binary()
    | st.binary().map(lambda b: b"cl1 d=1 x=2\n" + b)
    | st.text().map(lambda t: b"cl1 d=1 x=2\n" + t.encode())
)
def test_decoding_any_stored_bytes_is_an_entry_or_a_counted_miss(decoder, raw):
    before = decoder.stats.corrupt
    entry = decoder.store.decode(raw)
    assert (decoder.stats.corrupt - before) == (1 if entry is None else 0)


# --- single-flight ----------------------------------------------------------------------------


class Boom(Exception):
    """A loader failure; each execution raises its own instance."""


@dataclass
class Flight:
    key: str
    callers: int
    fails: bool
    cancelled: int  # how many of the callers cancel before the result arrives (never all)


@st.composite
def flight_rounds(draw) -> list[list[Flight]]:
    """Rounds of flights: within a round, each key has one flight with several callers; the
    rounds run one after another, so a key's next round is a new flight."""
    keys = draw(st.lists(st.sampled_from("abcdefgh"), min_size=1, max_size=5, unique=True))
    rounds = []
    for _ in range(draw(st.integers(1, 3))):
        flights = []
        for key in draw(st.lists(st.sampled_from(keys), min_size=1, unique=True)):
            callers = draw(st.integers(1, 8))
            flights.append(
                Flight(key, callers, draw(st.booleans()), draw(st.integers(0, callers - 1)))
            )
        rounds.append(flights)
    return rounds


async def settle(condition, limit: int = 1000) -> None:
    """Let the event loop run until ``condition()`` holds (no I/O here: only our own tasks)."""
    for _ in range(limit):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError("the tasks did not reach the expected state")


async def _single_flight_round(sf: SingleFlight, flights: list[Flight], executions: Counter):
    """One round: start every caller, cancel some, release the work, check what each got."""
    release = asyncio.Event()
    produced: dict[str, object] = {}

    async def work(key: str, fails: bool):
        executions[key] += 1
        await release.wait()
        produced[key] = Boom(key) if fails else object()
        if fails:
            raise produced[key]
        return produced[key]

    tasks = {
        f.key: [
            asyncio.ensure_future(sf.do(f.key, lambda f=f: work(f.key, f.fails)))
            for _ in range(f.callers)
        ]
        for f in flights
    }
    total = sum(f.callers for f in flights)
    await settle(lambda: sf.statistics().callers == total)
    assert sf.statistics().in_flight == len(flights)
    for f in flights:  # cancel some callers, never the last one: the flight must go on
        for task in tasks[f.key][: f.cancelled]:
            task.cancel()
    release.set()
    for f in flights:
        results = await asyncio.gather(*tasks[f.key], return_exceptions=True)
        kept = results[f.cancelled :]
        assert all(isinstance(r, asyncio.CancelledError) for r in results[: f.cancelled])
        if f.fails:
            assert all(r is produced[f.key] for r in kept), results
        else:
            assert {id(value) for value, _shared in kept} == {id(produced[f.key])}
            assert {shared for _value, shared in kept} == {f.callers - f.cancelled > 1}


async def _run_single_flight(rounds: list[list[Flight]]) -> None:
    sf = SingleFlight()
    executions: Counter[str] = Counter()
    for flights in rounds:
        await _single_flight_round(sf, flights, executions)
        assert len(sf) == 0
    assert executions == Counter(f.key for flights in rounds for f in flights)
    assert sf.statistics().in_flight == sf.statistics().callers == 0


@BOUNDED
@given(flight_rounds())
def test_single_flight_one_execution_per_flight_shared_by_its_callers(rounds):
    asyncio.run(_run_single_flight(rounds))


async def _lock_table_round(table: LockTable, flights: list[Flight]) -> None:
    """The classic double-checked load under a LockTable: one holder per key at a time; a value
    is loaded once and read by the rest; a failure is retried by every waiter in turn."""
    store: dict[str, object] = {}
    executions: Counter[str] = Counter()
    holders: Counter[str] = Counter()
    most: Counter[str] = Counter()
    release = asyncio.Event()

    async def caller(key: str, fails: bool):
        async with table.lock(key):
            holders[key] += 1
            most[key] = max(most[key], holders[key])
            try:
                await release.wait()
                if key in store:
                    return store[key]
                executions[key] += 1
                if fails:
                    raise Boom(key)
                store[key] = object()
                return store[key]
            finally:
                holders[key] -= 1

    tasks = {
        f.key: [asyncio.ensure_future(caller(f.key, f.fails)) for _ in range(f.callers)]
        for f in flights
    }
    total = sum(f.callers for f in flights)
    await settle(lambda: table.statistics().holders_and_waiters == total)
    assert table.statistics().keys == len(flights)
    release.set()
    for f in flights:
        results = await asyncio.gather(*tasks[f.key], return_exceptions=True)
        if f.fails:
            assert all(isinstance(r, Boom) for r in results)
            assert len({id(r) for r in results}) == f.callers  # each tried on its own
            assert executions[f.key] == f.callers
        else:
            assert all(r is store[f.key] for r in results)
            assert executions[f.key] == 1
        assert most[f.key] == 1


async def _run_lock_table(rounds: list[list[Flight]]) -> None:
    table = LockTable()
    for flights in rounds:
        await _lock_table_round(table, flights)
        assert len(table) == 0
        assert table.statistics().holders_and_waiters == 0


@BOUNDED
@given(flight_rounds())
def test_lock_table_serialises_each_key_and_forgets_it_afterwards(rounds):
    asyncio.run(_run_lock_table(rounds))
