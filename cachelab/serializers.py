"""How values become bytes in Redis, and back.

JSON is the default because anyone can read it with ``redis-cli`` and because decoding it cannot run
code. msgpack is available when the ``msgpack`` package is installed.

Pickle is never on by default and has no plain name: unpickling bytes that someone else could write
to your Redis executes their code. When every process that shares the cache is your own and values
really are arbitrary Python objects, :class:`PickleSerializer` signs each payload with HMAC-SHA256
under a secret key, and checks the signature before unpickling. A payload without a valid
signature is never unpickled: it is refused as undecodable, so the cache treats the entry as
corrupt (a miss, overwritten by the next fill). The key must stay secret: anyone who holds it can
still make every reader run their code.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import pickle
from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

from .errors import ConfigurationError, SerializationError

__all__ = [
    "JsonSerializer",
    "MsgpackSerializer",
    "PickleSerializer",
    "Serializer",
    "get_serializer",
]


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
        except (TypeError, ValueError, RecursionError) as exc:  # RecursionError: nested too deep
            raise SerializationError(
                f"cannot store a value of type {type(value).__name__} as JSON ({exc}); "
                "convert it to dicts, lists, str, int, float, bool or None first, "
                'or use serializer="msgpack" or a Serializer of your own'
            ) from None

    def loads(self, data: bytes) -> Any:
        try:
            return self._decode(data.decode())
        except (ValueError, RecursionError) as exc:  # "[[[[..." nested deeper than the stack
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


class PickleSerializer:
    """Pickle, signed: any picklable value, for caches whose every reader and writer you trust.

    A serialized payload is ``clp1`` + the HMAC-SHA256 of the pickle under ``secret_key`` (32 bytes)
    + the pickle. :meth:`loads` recomputes the HMAC and compares it in constant time before it
    unpickles anything, so bytes written by someone without the key are refused, not run.
    ``secret_key`` (bytes, or str taken as UTF-8) must be at least 16 bytes; generate one with
    ``secrets.token_bytes(32)`` and keep it out of the notebook, e.g. in an environment variable.
    """

    name = "pickle"
    MIN_KEY_BYTES = 16
    _MAGIC = b"clp1"
    _DIGEST_BYTES = hashlib.sha256().digest_size

    def __init__(self, secret_key: bytes | str) -> None:
        key = secret_key.encode() if isinstance(secret_key, str) else secret_key
        if not isinstance(key, bytes) or len(key) < self.MIN_KEY_BYTES:
            size = f"{len(key)} bytes" if isinstance(key, bytes) else type(key).__name__
            raise ConfigurationError(
                f"PickleSerializer needs a secret_key of at least {self.MIN_KEY_BYTES} bytes, "
                f"got {size}; generate one with secrets.token_bytes(32) and keep it secret "
                '(or use serializer="json", which cannot run code)'
            )
        self._key = key

    def __repr__(self) -> str:
        return "PickleSerializer(secret_key=***)"

    def sign(self, data: bytes) -> bytes:
        """HMAC-SHA256 of ``data`` under the secret key. A cache signs each whole stored entry
        (header and payload) with it, so a forged expiry is refused like a forged value."""
        return hmac.new(self._key, data, hashlib.sha256).digest()

    def dumps(self, value: Any) -> bytes:
        try:
            data = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
        except (pickle.PicklingError, TypeError, AttributeError, RecursionError) as exc:
            raise SerializationError(
                f"cannot pickle a value of type {type(value).__name__} ({exc}); lambdas, local "
                "classes, open files and sockets cannot be pickled: store plain data instead"
            ) from None
        return self._MAGIC + self.sign(data) + data

    def loads(self, data: bytes) -> Any:
        start = len(self._MAGIC) + self._DIGEST_BYTES
        if not data.startswith(self._MAGIC) or len(data) < start:
            raise SerializationError("stored payload is not a signed pickle; refusing to unpickle")
        signature, body = data[len(self._MAGIC) : start], data[start:]
        if not hmac.compare_digest(signature, self.sign(body)):
            raise SerializationError(
                "stored pickle's signature does not match this secret_key; refusing to unpickle "
                "(written with another key, or tampered with)"
            )
        try:
            return pickle.loads(body)  # signed by a holder of the secret key: trusted
        except Exception as exc:  # a signed pickle of a class this process cannot import, ...
            raise SerializationError(f"signed pickle could not be loaded: {exc}") from None


_BY_NAME: dict[str, Callable[[], Serializer]] = {
    "json": JsonSerializer,
    "msgpack": MsgpackSerializer,
}


def get_serializer(spec: str | Serializer) -> Serializer:
    """Return a serializer for a name (``"json"``, ``"msgpack"``) or pass an instance through.

    ``"pickle"`` is refused by name: it needs a secret key, so it is only available as
    ``PickleSerializer(secret_key=...)``.
    """
    if spec == "pickle":
        raise ConfigurationError(
            'serializer="pickle" is off by default: unpickling bytes from Redis runs whatever '
            "code whoever wrote them chose. To enable it, pass "
            "serializer=PickleSerializer(secret_key=...) with a secret of at least 16 bytes; "
            "payloads are then signed and a bad signature is never unpickled. Otherwise use "
            '"json" or "msgpack"'
        )
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
