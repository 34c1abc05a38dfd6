"""Argument checks shared by the experiments: refuse bad input before any Redis work."""

from __future__ import annotations

from ..errors import ConfigurationError
from ..herd import HerdPolicy, herd_policy

__all__ = ["known_policy", "positive"]


def positive(**values: object) -> None:
    """Every value must be a positive number; the error names the first that is not."""
    for name, value in values.items():
        if not isinstance(value, int | float) or isinstance(value, bool) or not value > 0:
            raise ConfigurationError(f"{name} must be a positive number, got {value!r}")


def known_policy(name: str | HerdPolicy, options: dict | None = None) -> None:
    """A herd-policy name (with options), or a policy, that :func:`cachelab.policies.herd_policy`
    accepts."""
    herd_policy(name, **(options or {}))
