"""Argument checks shared across the package: the same mistake is worded the same everywhere."""

from __future__ import annotations

import math

from .errors import ConfigurationError

__all__ = ["positive_seconds"]


def positive_seconds(value: object, name: str, hint: str) -> float:
    """``value`` as float seconds; a ConfigurationError naming ``name`` (and ``hint``, the fix)
    for anything that is not a positive, finite number (bools included: True is not 1 s)."""
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not (value > 0 and math.isfinite(value))
    ):
        raise ConfigurationError(
            f"{name} must be a positive, finite number of seconds, got {value!r}; {hint}"
        )
    return float(value)
