"""The codec: values to stored entries (header + payload) and back, TTLs with jitter, signing."""

from __future__ import annotations

import random

import pytest

from cachelab import ConfigurationError, PickleSerializer, ValueTooLargeError
from cachelab.codec import MAX_TTL_S, Codec, check_ttl
from cachelab.serializers import JsonSerializer


class Raw:
    """A serializer that stores bytes as they are, to test the envelope byte for byte."""

    name = "raw"

    def dumps(self, value: bytes) -> bytes:
        return value

    def loads(self, data: bytes) -> bytes:
        return data


def clock() -> float:
    return 1764107000.0


def codec(serializer=None, **options) -> Codec:
    options.setdefault("ttl", 60.0)
    return Codec(serializer or JsonSerializer(), clock=clock, **options)


def test_pack_decode_round_trip():
    c = codec()
    packed = c.pack(c.payload({"id": 7}), None, 52.1234)
    assert packed.data.startswith(b"cl1 d=52.123 x=1764107060.000\n")
    assert packed.px == 60_000
    entry = c.decode(packed.data)
    assert (entry.value, entry.load_ms, entry.expires_at) == ({"id": 7}, 52.123, 1764107060.0)
    assert entry.soft_expires_at is None


@pytest.mark.parametrize(
    "payload", [b"", b"line one\nline two\n", b"\x00\xff binary", b"cl1 d=1 x=2\n"]
)
def test_payload_is_kept_byte_for_byte(payload):
    c = codec(Raw())
    assert c.decode(c.pack(payload, None, 0).data).value == payload


def test_unknown_fields_are_ignored_in_any_order():
    entry = codec(Raw()).decode(b"cl1 z=new d=4 x=5 lease=abc\n[1]")
    assert (entry.load_ms, entry.expires_at, entry.value) == (4.0, 5.0, b"[1]")


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"garbage",
        b'{"id": 7}',
        b"cl1",
        b"cl1 d=1 x=2",  # truncated: no end of header
        b"cl1 d=1 x=",  # truncated mid-field
        b"cl1 \n1",
        b"cl1 d=1\n1",  # no expiry
        b"cl1 x=1\n1",  # no load time
        b"cl1 d=abc x=2\n1",
        b"cl1 d=1 x=2e\n1",
        b"cl10 d=1 x=2\n1",
        b"CL1 d=1 x=2\n1",
        b"cl1 d=1 x=2 \xff\xfe\n1",
        b"\xff\xfe\xfd\n",
        b"cl1 d=1 x=2\n{not json",
    ],
)
def test_not_an_entry(raw):
    assert codec().decode(raw) is None


def test_jitter_spreads_the_ttl_and_the_soft_ttl_by_one_factor():
    c = codec(ttl=10.0, ttl_jitter=0.1, soft_ttl=9.5, rng=random.Random(1))
    for _ in range(200):
        entry = c.decode(c.pack(b'"v"', None, 0).data)
        lifetime = entry.expires_at - clock()
        assert 9.0 - 1e-3 <= lifetime <= 11.0 + 1e-3
        soft = entry.soft_expires_at - clock()
        assert soft == pytest.approx(lifetime * 0.95, abs=2e-3)  # stale before it expires


def test_a_soft_ttl_not_below_the_ttl_is_refused():
    with pytest.raises(ConfigurationError, match="soft TTL"):
        codec(ttl=10.0, soft_ttl=10.0)
    c = codec(ttl=10.0, soft_ttl=5.0)
    with pytest.raises(ConfigurationError, match="soft TTL"):
        c.check_call_ttl(5.0)
    assert c.check_call_ttl(5.5) == 5.5


@pytest.mark.parametrize("ttl", [0, -1, 0.0009, float("nan"), float("inf"), 1e300, True, "5"])
def test_ttls_outside_what_redis_can_store_are_refused(ttl):
    with pytest.raises(ConfigurationError, match="ttl"):
        check_ttl(ttl)


def test_ttl_bounds_are_accepted():
    assert check_ttl(0.001) == 0.001
    assert check_ttl(MAX_TTL_S) == MAX_TTL_S


def test_values_above_the_limit_are_refused():
    c = codec(max_value_bytes=8)
    assert c.payload("1234") == b'"1234"'
    with pytest.raises(ValueTooLargeError, match="max_value_bytes=8"):
        c.payload("123456789")


def test_a_signing_serializer_signs_the_whole_entry():
    c = codec(PickleSerializer(b"k" * 32))
    data = c.pack(c.payload({"n": 1}), None, 5.0).data
    assert c.decode(data).value == {"n": 1}
    header, _, payload = data.partition(b"\n")
    forged = header.replace(b"x=1764107060.000", b"x=9999999999.000") + b"\n" + payload
    assert c.decode(forged) is None  # a forged expiry is refused like a forged value
    unsigned = b" ".join(header.split(b" ")[:-1]) + b"\n" + payload
    assert c.decode(unsigned) is None
    other = codec(PickleSerializer(b"o" * 32))
    assert other.decode(data) is None
