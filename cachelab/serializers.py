"""How values become bytes in Redis, and back.

JSON is the default because anyone can read it with ``redis-cli`` and because decoding it cannot run
code. Pickle is deliberately not offered: unpickling bytes that someone else could write to your
Redis executes their code. msgpack is available when the ``msgpack`` package is installed.
"""

from __future__ import annotations

import json
from typing import Any, Protocol, runtime_checkable

from .errors import ConfigurationError, SerializationError

__all__ = ["JsonSerializer", "MsgpackSerializer", "Serializer", "get_serializer"]


@runtime_checkable
class Serializer(Protocol):
    """Anything with a ``name`` and symmetric ``dumps``/``loads`` between values and bytes."""

    name: str

    def dumps(self, value: Any) -> bytes: ...

    def loads(self, data: bytes) -> Any: ...


class JsonSerializer:
    """Compact, strict JSON: NaN and infinity are refused because other JSON readers reject them."""

    name = "json"

    def __init__(self) -> None:
        self._encoder = json.JSONEncoder(separators=(",", ":"), allow_nan=False)
        self._decode = json.JSONDecoder(parse_constant=_refuse_constant).decode

    def dumps(self, value: Any) -> bytes:
        try:
            return self._encoder.encode(value).encode()
        except (TypeError, ValueError) as exc:
            raise SerializationError(
                f"cannot store a value of type {type(value).__name__} as JSON ({exc}); "
                "convert it to dicts, lists, str, int, float, bool or None first, "
                'or use serializer="msgpack" or a Serializer of your own'
            ) from None

    def loads(self, data: bytes) -> Any:
        try:
            return self._decode(data.decode())
        except ValueError as exc:
            raise SerializationError(f"stored payload is not valid JSON: {exc}") from None


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid in strict JSON")


class MsgpackSerializer:
    """msgpack: smaller and faster than JSON for numeric data; needs ``pip install msgpack``."""

    name = "msgpack"

    def __init__(self) -> None:
        try:
            import msgpack
        except ImportError:
            raise ConfigurationError(
                'serializer="msgpack" needs the msgpack package: `uv add msgpack` or '
                '`pip install msgpack`, or use serializer="json"'
            ) from None
        self._msgpack = msgpack

    def dumps(self, value: Any) -> bytes:
        try:
            return self._msgpack.packb(value, use_bin_type=True)
        except (TypeError, ValueError, OverflowError) as exc:
            raise SerializationError(
                f"cannot store a value of type {type(value).__name__} as msgpack ({exc}); "
                "convert it to dicts, lists, str, bytes, int, float, bool or None first"
            ) from None

    def loads(self, data: bytes) -> Any:
        try:
            return self._msgpack.unpackb(data, raw=False)
        except (ValueError, self._msgpack.ExtraData) as exc:
            raise SerializationError(f"stored payload is not valid msgpack: {exc}") from None


_BY_NAME = {"json": JsonSerializer, "msgpack": MsgpackSerializer}


def get_serializer(spec: str | Serializer) -> Serializer:
    """Return a serializer for a name (``"json"``, ``"msgpack"``) or pass an instance through."""
    if isinstance(spec, str):
        try:
            return _BY_NAME[spec]()
        except KeyError:
            raise ConfigurationError(
                f"unknown serializer {spec!r}; choose one of {sorted(_BY_NAME)} "
                "or pass an object with name, dumps() and loads()"
            ) from None
    if isinstance(spec, Serializer):
        return spec
    raise ConfigurationError(
        f"serializer must be a name or an object with name, dumps() and loads(), got {spec!r}"
    )
