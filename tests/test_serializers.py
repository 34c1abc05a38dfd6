"""Serializers: strict JSON by default, msgpack optional, never pickle."""

from __future__ import annotations

import importlib.util

import pytest

from cachelab import ConfigurationError, JsonSerializer, SerializationError, Serializer
from cachelab.serializers import get_serializer


@pytest.mark.parametrize(
    "value",
    [None, True, 0, -7, 2**70, 1.5, "", "héllo ✓", [], [1, "a", None], {"a": {"b": [1, 2.5]}}],
)
def test_json_round_trip(value):
    s = JsonSerializer()
    data = s.dumps(value)
    assert isinstance(data, bytes)
    assert s.loads(data) == value


def test_json_is_compact_and_readable():
    assert JsonSerializer().dumps({"a": [1, 2], "b": "x"}) == b'{"a":[1,2],"b":"x"}'
    assert JsonSerializer().dumps("✓") == b'"\\u2713"'


def test_json_tuples_come_back_as_lists():
    s = JsonSerializer()
    assert s.loads(s.dumps((1, 2))) == [1, 2]


@pytest.mark.parametrize(
    ("value", "type_name"),
    [
        ({1, 2}, "set"),
        (object(), "object"),
        (b"bytes", "bytes"),
        (float("nan"), "float"),
        (float("inf"), "float"),
        ([float("-inf")], "list"),
        ({"when": 1j}, "dict"),
    ],
)
def test_json_refuses_what_other_readers_would_not_read(value, type_name):
    with pytest.raises(SerializationError) as info:
        JsonSerializer().dumps(value)
    assert type_name in str(info.value)
    assert "msgpack" in str(info.value)  # names an alternative
    assert isinstance(info.value, TypeError)


def test_json_refuses_circular_structures():
    loop = []
    loop.append(loop)
    with pytest.raises(SerializationError):
        JsonSerializer().dumps(loop)


@pytest.mark.parametrize("data", [b"", b"{not json", b"\xff\xfe", b"NaN", b"[1,"])
def test_json_loads_garbage_raises_serialization_error(data):
    with pytest.raises(SerializationError, match="JSON"):
        JsonSerializer().loads(data)


def test_get_serializer_by_name_and_instance():
    assert isinstance(get_serializer("json"), JsonSerializer)
    mine = JsonSerializer()
    assert get_serializer(mine) is mine
    assert isinstance(mine, Serializer)


def test_get_serializer_accepts_any_object_with_the_protocol():
    class Upper:
        name = "upper"

        def dumps(self, value):
            return str(value).upper().encode()

        def loads(self, data):
            return data.decode()

    custom = Upper()
    assert get_serializer(custom) is custom


@pytest.mark.parametrize("name", ["pickle", "JSON", ""])
def test_unknown_serializer_name(name):
    with pytest.raises(ConfigurationError) as info:
        get_serializer(name)
    assert "json" in str(info.value)
    assert "msgpack" in str(info.value)


@pytest.mark.parametrize("spec", [42, None, object()])
def test_not_a_serializer(spec):
    with pytest.raises(ConfigurationError, match="dumps"):
        get_serializer(spec)


def test_pickle_is_not_offered():
    from cachelab import serializers

    assert "pickle" not in serializers._BY_NAME


@pytest.mark.skipif(importlib.util.find_spec("msgpack") is not None, reason="msgpack installed")
def test_msgpack_needs_the_package():
    with pytest.raises(ConfigurationError, match="pip install msgpack"):
        get_serializer("msgpack")


@pytest.mark.skipif(importlib.util.find_spec("msgpack") is None, reason="msgpack not installed")
def test_msgpack_round_trip():
    s = get_serializer("msgpack")
    assert s.loads(s.dumps({"a": [1, b"x"]})) == {"a": [1, b"x"]}
    with pytest.raises(SerializationError):
        s.dumps({1, 2})
