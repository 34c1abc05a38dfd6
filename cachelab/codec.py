"""Values to stored bytes and back: serializer, size limit, TTL with jitter, and the envelope.

A stored entry is a one-line header followed by the serialized value::

    cl1 d=52.1 x=1764107000.123\\n{"id": 7, "name": "Ada"}

``d`` is how long the load that produced the value took (ms) and ``x`` when the entry expires
(Unix seconds); ``s``, when present, is when it turns stale (Unix seconds). Refresh policies need
them: XFetch weighs early recomputation by ``d`` against ``x``; stale-while-revalidate compares
``s`` with the clock. The header is plain text so that a student reading a key with
``redis-cli`` sees what the cache knows. Unknown fields are ignored, so newer versions can add
fields. Anything that does not start with ``cl1 `` is not an entry (corrupt or foreign) and reads
as a miss.

With a serializer that signs (:class:`~cachelab.PickleSerializer`), the header carries ``m=``, an
HMAC of the header and the payload together, so a forged expiry is refused like a forged value.
"""

from __future__ import annotations

import hmac
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

from .errors import ConfigurationError, ValueTooLargeError
from .serializers import Serializer

__all__ = ["MAGIC", "MAX_TTL_S", "MIN_TTL_S", "Codec", "Entry", "Packed", "check_ttl"]

MAGIC = b"cl1"
_PREFIX = MAGIC + b" "

MIN_TTL_S = 0.001
"""Redis expires keys in whole milliseconds: a shorter TTL cannot be stored as asked."""
MAX_TTL_S = 10 * 365 * 24 * 3600.0
"""Ten years: beyond this a TTL is a mistake (and far beyond it, Redis refuses the expiry)."""


def check_ttl(ttl: object, what: str = "ttl") -> float:
    """``ttl`` as seconds within [1 ms, 10 years]; else a ConfigurationError naming ``what``."""
    if (
        isinstance(ttl, bool)
        or not isinstance(ttl, int | float)
        or not math.isfinite(ttl)
        or not MIN_TTL_S <= ttl <= MAX_TTL_S
    ):
        raise ConfigurationError(
            f"{what} must be a number of seconds from {MIN_TTL_S:g} (1 ms, Redis's resolution) "
            f"to {MAX_TTL_S:g} (ten years), got {ttl!r}; to remove a key use delete(), to keep "
            "it for a long time use a long TTL"
        )
    return float(ttl)


class Entry(NamedTuple):
    """A decoded cached value with the timings refresh policies look at.

    ``fence`` is the key's fence (version) when the entry was read with it (``Cache.entry``).
    (A named tuple: one is made on every cache hit, and a tuple is the cheapest record.)
    """

    value: Any
    load_ms: float
    expires_at: float
    soft_expires_at: float | None
    fence: int | None = None


@dataclass(frozen=True, slots=True)
class Packed:
    """What to store: the entry's bytes and its TTL in milliseconds."""

    data: bytes
    px: int


class Codec:
    """One cache's way of turning values into entries and back.

    ``soft_ttl`` (stale-while-revalidate) is scaled by the same jitter factor as the TTL, so a
    jittered entry still turns stale before it expires, and keys written together neither
    expire nor turn stale together.
    """

    def __init__(
        self,
        serializer: Serializer,
        *,
        ttl: float,
        ttl_jitter: float = 0.0,
        soft_ttl: float | None = None,
        max_value_bytes: int | None = None,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
    ) -> None:
        self.serializer = serializer
        self.ttl = ttl
        self.ttl_jitter = ttl_jitter
        self.soft_ttl = soft_ttl
        self.max_value_bytes = max_value_bytes
        self._clock = clock
        self._uniform = (rng or random.Random()).uniform
        self._sign: Callable[[bytes], bytes] | None = getattr(serializer, "sign", None)
        if soft_ttl is not None:
            self.check_call_ttl(ttl)

    # --- values -----------------------------------------------------------------------------

    def payload(self, value: Any) -> bytes:
        """The serialized value, checked before any write: SerializationError if it cannot be
        encoded, ValueTooLargeError if it exceeds ``max_value_bytes``."""
        payload = self.serializer.dumps(value)
        limit = self.max_value_bytes
        if limit is not None and len(payload) > limit:
            raise ValueTooLargeError(
                f"a {type(value).__name__} value serializes to {len(payload):,} bytes as "
                f"{self.serializer.name}, above this cache's max_value_bytes={limit:,}; cache a "
                "smaller projection of it, or raise the limit with Cache(..., max_value_bytes=...)"
            )
        return payload

    def loads(self, payload: bytes) -> Any:
        """The value of a serialized payload (raises SerializationError if it does not decode)."""
        return self.serializer.loads(payload)

    def check_call_ttl(self, ttl: float) -> float:
        """A per-call TTL, refused (before any loader runs) if it leaves no stale window."""
        if self.soft_ttl is not None and ttl <= self.soft_ttl:
            raise ConfigurationError(
                f"stale-while-revalidate's soft TTL ({self.soft_ttl:g} s) must be shorter than "
                f"the TTL ({ttl:g} s): the stale window is the time between them; pass a longer "
                "ttl or a shorter StaleWhileRevalidate(soft_ttl_s=...)"
            )
        return ttl

    # --- entries ----------------------------------------------------------------------------

    def pack(self, payload: bytes, ttl: float | None, load_ms: float) -> Packed:
        """The stored bytes of a serialized value and their TTL (jitter applied)."""
        seconds = self.ttl if ttl is None else ttl
        scale = 1.0
        if self.ttl_jitter:
            scale += self._uniform(-self.ttl_jitter, self.ttl_jitter)
        seconds *= scale
        now = self._clock()
        header = b"%s d=%.3f x=%.3f" % (MAGIC, load_ms, now + seconds)
        if self.soft_ttl is not None:
            header += b" s=%.3f" % (now + self.soft_ttl * scale)
        if self._sign is not None:
            header += b" m=" + self._sign(header + b"\n" + payload).hex().encode()
        return Packed(header + b"\n" + payload, max(1, round(seconds * 1000)))

    def decode(self, raw: bytes) -> Entry | None:
        """The entry stored as ``raw``; None if it is not one (corrupt, foreign, forged).

        This runs on every cache hit, so the header cachelab writes (``d`` then ``x``) is read
        without building a dict; other orders and extra fields take the general path.
        """
        header, newline, payload = raw.partition(b"\n")
        if not newline or not header.startswith(_PREFIX):
            return None
        parts = header.split(b" ")
        try:
            if self._sign is not None:
                if not parts[-1].startswith(b"m=") or not self._signed(header, payload, parts):
                    return None
                parts = parts[:-1]
            if len(parts) == 3 and parts[1][:2] == b"d=" and parts[2][:2] == b"x=":
                load_ms, expires_at, soft = float(parts[1][2:]), float(parts[2][2:]), None
            else:
                fields = dict(p.split(b"=", 1) for p in parts[1:])  # ValueError: not k=v
                load_ms, expires_at = float(fields[b"d"]), float(fields[b"x"])
                soft = float(fields[b"s"]) if b"s" in fields else None
        except (ValueError, KeyError):
            return None
        try:
            value = self.serializer.loads(payload)
        except Exception:  # whatever a serializer raises on bytes it did not write: a miss
            return None
        return Entry(value, load_ms, expires_at, soft)

    def _signed(self, header: bytes, payload: bytes, parts: list[bytes]) -> bool:
        """Does the last header field (``m=``) sign the rest of the header and the payload?"""
        sign = self._sign
        if sign is None:  # never: decode() asks only a signing codec
            return False
        unsigned = header[: len(header) - len(parts[-1]) - 1]
        expected = sign(unsigned + b"\n" + payload).hex().encode()
        return hmac.compare_digest(parts[-1][2:], expected)
