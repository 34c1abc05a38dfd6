"""Argument checks shared across the package: the same mistake is worded the same everywhere."""

from __future__ import annotations

import math

from .errors import ConfigurationError

__all__ = ["number_in_range", "positive_seconds"]


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


def number_in_range(value: object, name: str, low: float, high: float, unit: str = "") -> float:
    """``value`` as a float; a ConfigurationError naming ``name`` and the range for anything
    that is not a finite number from ``low`` to ``high`` (nan, inf and 1e300 included)."""
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not (math.isfinite(value) and low <= value <= high)
    ):
        raise ConfigurationError(
            f"{name} must be a number from {_plain(low)} to {_plain(high)}{unit}, got {value!r}"
        )
    return float(value)


def _plain(number: float) -> str:
    """``3153600`` as ``3,153,600`` and ``0.001`` as ``0.001`` (never ``3.1536e+06``)."""
    return f"{int(number):,}" if float(number).is_integer() else f"{number:g}"
