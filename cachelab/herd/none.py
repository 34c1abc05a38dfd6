"""``"none"``: plain cache-aside. Every caller that misses loads: this *is* the stampede, kept
as the baseline every other policy is measured against."""

from __future__ import annotations

from typing import Any

from ..metrics import Outcome
from ..store import Read
from .base import HerdPolicy, Produce

__all__ = ["NoProtection"]


class NoProtection(HerdPolicy):
    """Every caller that misses runs the loader: N concurrent misses make N backend calls.

    Each fill is still fenced, so a load that read the database before a write cannot put its
    older value back after the write.
    """

    name = "none"

    async def load(self, key: str, read: Read, produce: Produce) -> tuple[Any, Outcome]:
        return await self.refresh(key, read, produce), Outcome.LOAD
