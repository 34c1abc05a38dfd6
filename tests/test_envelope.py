"""The header cachelab stores around every value."""

from __future__ import annotations

import pytest

from cachelab import envelope


def test_pack_unpack_round_trip():
    raw = envelope.pack(b'{"id":7}', load_ms=52.1234, expires_at=1764107000.5)
    assert raw.startswith(b"cl1 ")
    entry = envelope.unpack(raw)
    assert entry is not None
    assert entry.payload == b'{"id":7}'
    assert entry.load_ms == pytest.approx(52.123)
    assert entry.expires_at == pytest.approx(1764107000.5)
    assert entry.fields == {}


@pytest.mark.parametrize(
    "payload", [b"", b"line one\nline two\n", b"\x00\xff binary", b"cl1 d=1 x=2\n"]
)
def test_payload_is_kept_byte_for_byte(payload):
    entry = envelope.unpack(envelope.pack(payload, load_ms=0, expires_at=1))
    assert entry is not None
    assert entry.payload == payload


def test_extra_fields_round_trip_and_unknown_fields_are_ignored():
    entry = envelope.unpack(envelope.pack(b"1", load_ms=1, expires_at=2, v=7, soft=3.5))
    assert entry.fields == {"v": "7", "soft": "3.5"}
    future = envelope.unpack(b"cl1 z=new d=4 x=5 lease=abc\n[1]")
    assert future is not None
    assert (future.load_ms, future.expires_at, future.payload) == (4.0, 5.0, b"[1]")
    assert future.fields == {"z": "new", "lease": "abc"}


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
    ],
)
def test_not_an_entry(raw):
    assert envelope.unpack(raw) is None
