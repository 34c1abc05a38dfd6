"""The few bytes cachelab stores around every value.

A stored entry is a one-line header followed by the serialized value::

    cl1 d=52.1 x=1764107000.123\n{"id": 7, "name": "Ada"}

``d`` is how long the load that produced the value took (ms) and ``x`` when the entry expires
(Unix seconds); ``s``, when present, is when it turns stale (Unix seconds). Refresh policies need
them: XFetch weighs early recomputation by ``d`` against ``x``, and stale-while-revalidate
compares ``s`` with the clock. The header is plain text so that a student
reading a key with ``redis-cli`` can see what the cache knows. Unknown fields are ignored, so newer
versions can add fields without breaking older readers. Anything that does not start with the
magic ``cl1 `` is not an entry (a corrupt or foreign value) and is treated as a miss.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["MAGIC", "Envelope", "pack", "unpack"]

MAGIC = b"cl1"
_PREFIX = MAGIC + b" "


@dataclass(frozen=True, slots=True)
class Envelope:
    """A decoded header plus the still-serialized payload."""

    payload: bytes
    load_ms: float
    expires_at: float
    fields: dict[str, str]

    @property
    def soft_expires_at(self) -> float | None:
        soft = self.fields.get("s")
        try:
            return float(soft) if soft is not None else None
        except ValueError:
            return None


def pack(
    payload: bytes,
    *,
    load_ms: float,
    expires_at: float,
    soft_expires_at: float | None = None,
    **fields: object,
) -> bytes:
    """Wrap a serialized value with its header."""
    if soft_expires_at is not None:
        fields = {"s": f"{soft_expires_at:.3f}", **fields}
    extra = "".join(f" {k}={v}" for k, v in fields.items())
    return b"%s d=%.3f x=%.3f%s\n%s" % (MAGIC, load_ms, expires_at, extra.encode(), payload)


def unpack(raw: bytes) -> Envelope | None:
    """Split a stored entry into header and payload; ``None`` if ``raw`` is not an entry.

    This runs on every cache hit, so the header cachelab writes (``d`` then ``x`` first) is read
    without building a dict; other orders and extra fields take the general path.
    """
    header, newline, payload = raw.partition(b"\n")
    if not newline or not header.startswith(_PREFIX):
        return None
    parts = header.split(b" ")
    try:
        if len(parts) == 3 and parts[1][:2] == b"d=" and parts[2][:2] == b"x=":
            return Envelope(payload, float(parts[1][2:]), float(parts[2][2:]), {})
        fields = dict(part.split("=", 1) for part in header[len(_PREFIX) :].decode().split())
        return Envelope(payload, float(fields.pop("d")), float(fields.pop("x")), fields)
    except (ValueError, KeyError, UnicodeDecodeError):
        return None
