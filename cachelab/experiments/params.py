"""The documented range of every notebook parameter, checked before any experiment runs.

Each notebook's ``parameters`` cell states a range beside every value (``CLIENTS = 200  # 1-5,000``)
and the cell after it calls :func:`check_parameters`, which refuses a value outside that range
with one sentence, before anything is measured. Inside the ranges every notebook runs to the end
and its checks hold (or say why their premise does not hold at the chosen values); the ranges here
are the ones its checks were written for, and ``tests/test_notebook_params.py`` keeps the comments
in the notebooks and the table below in step.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigurationError

__all__ = ["NOTEBOOK_PARAMETERS", "Flag", "Number", "Rule", "Values", "check_parameters"]


def _figure(value: float) -> str:
    """1000 -> "1,000"; 0.25 -> "0.25"."""
    if float(value).is_integer():
        return f"{int(value):,}"
    return f"{value:g}"


@dataclass(frozen=True)
class Number:
    """A number from ``low`` to ``high`` inclusive (a whole number unless ``whole=False``)."""

    low: float
    high: float
    whole: bool = True

    @property
    def text(self) -> str:
        return f"{_figure(self.low)}-{_figure(self.high)}"

    def problem(self, name: str, value: Any) -> str | None:
        kind = "a whole number" if self.whole else "a number"
        if isinstance(value, bool) or not isinstance(value, int | float):
            return f"{name} must be {kind} from {self.text}, got {value!r}"
        if self.whole and not float(value).is_integer():
            return f"{name} must be a whole number from {self.text}, got {value!r}"
        if not self.low <= value <= self.high:
            return f"{name} = {value!r} is outside its documented range {self.text}"
        return None


@dataclass(frozen=True)
class Values:
    """A list of ``min_items``..``max_items`` numbers, each within ``each``."""

    each: Number
    min_items: int = 1
    max_items: int = 6

    @property
    def text(self) -> str:
        return f"{self.min_items}-{self.max_items} values, each {self.each.text}"

    def problem(self, name: str, value: Any) -> str | None:
        if not isinstance(value, list | tuple):
            return f"{name} must be a list of {self.text}, got {value!r}"
        if not self.min_items <= len(value) <= self.max_items:
            return f"{name} has {len(value)} values; it takes {self.text}"
        for item in value:
            problem = self.each.problem(f"every value of {name}", item)
            if problem is not None:
                return problem
        return None


@dataclass(frozen=True)
class Flag:
    """True or False."""

    text: str = "True or False"

    def problem(self, name: str, value: Any) -> str | None:
        return None if isinstance(value, bool) else f"{name} must be True or False, got {value!r}"


@dataclass(frozen=True)
class Rule:
    """A relation between parameters; ``problem`` is formatted with the values when it fails."""

    holds: Callable[[Mapping[str, Any]], bool]
    problem: str


Spec = Number | Values | Flag

_OUTAGE_FITS = Rule(
    lambda p: p["KILL_AT_S"] + p["OUTAGE_S"] + 0.5 <= p["DURATION_S"],
    "KILL_AT_S ({KILL_AT_S}) + OUTAGE_S ({OUTAGE_S}) must end at least 0.5 s before DURATION_S "
    "({DURATION_S}): the run must go on after the subscribers are back, to see what the outage "
    "left behind",
)

NOTEBOOK_PARAMETERS: dict[str, tuple[dict[str, Spec], list[Rule]]] = {
    "00": (
        {
            "KEYS": Number(1, 1000),
            "READS": Number(1, 1000),
            "LATENCY_MS": Number(1, 100),
            "JITTER_MS": Number(0, 100),
            "TTL_S": Number(1, 86400),
            "SEED": Number(0, 1_000_000),
        },
        [
            Rule(
                lambda p: p["JITTER_MS"] <= p["LATENCY_MS"],
                "JITTER_MS ({JITTER_MS}) must be at most LATENCY_MS ({LATENCY_MS}): a database "
                "call cannot take less than no time",
            )
        ],
    ),
    "01": (
        {
            "CLIENTS": Number(1, 5000),
            "CLIENT_COUNTS": Values(Number(1, 5000), 1, 6),
            "INSTANCES": Number(1, 16),
            "LOADER_MS": Number(50, 1000),
            "SPREAD_MS": Number(10, 5000),
            "SHORT_LOADER_MS": Number(0, 1000),
            "FAILING_CLIENTS": Number(2, 50),
        },
        [
            Rule(
                lambda p: p["INSTANCES"] <= p["CLIENTS"],
                "INSTANCES ({INSTANCES}) must be at most CLIENTS ({CLIENTS}): every instance "
                "needs at least one request",
            ),
            Rule(
                lambda p: p["SHORT_LOADER_MS"] <= p["LOADER_MS"],
                "SHORT_LOADER_MS ({SHORT_LOADER_MS}) must be at most LOADER_MS ({LOADER_MS}): "
                "Step 3 compares a short load with the long one",
            ),
        ],
    ),
    "01b": (
        {
            "CONCURRENCY": Values(Number(1, 1000), 1, 5),
            "READS": Number(500, 50_000),
            "ROUNDS": Number(1, 5),
        },
        [
            Rule(
                lambda p: len(set(p["CONCURRENCY"])) == len(p["CONCURRENCY"]),
                "CONCURRENCY ({CONCURRENCY}) lists a value twice: give each once",
            ),
            Rule(
                lambda p: p["READS"] >= max(p["CONCURRENCY"]),
                "READS ({READS}) must be at least the largest value of CONCURRENCY "
                "({CONCURRENCY}): every coroutine needs a read of its own",
            ),
        ],
    ),
    "02": (
        {
            "CLIENTS": Number(1, 5000),
            "INSTANCES": Number(1, 16),
            "PROCESSES": Flag(),
            "LOADER_MS": Number(50, 1000),
            "POLL_INTERVAL_S": Number(0.01, 1, whole=False),
            "LOCK_TTL_S": Number(0.5, 5, whole=False),
            "WAITERS": Number(1, 200),
        },
        [
            Rule(
                lambda p: p["INSTANCES"] <= p["CLIENTS"],
                "INSTANCES ({INSTANCES}) must be at most CLIENTS ({CLIENTS}): every instance "
                "needs at least one request",
            )
        ],
    ),
    "03": (
        {
            "RATE": Number(20, 2000),
            "TTL_S": Number(0.2, 10, whole=False),
            "LOADER_MS": Number(1, 500),
            "DURATION_S": Number(1, 60, whole=False),
            "LIVE_BETAS": Values(Number(0.25, 4, whole=False), 1, 4),
            "SIM_BETAS": Values(Number(0.25, 4, whole=False), 1, 10),
            "SIM_EXPIRIES": Number(100, 5000),
            "INSTANCES": Number(1, 16),
            "KEYS": Number(10, 1000),
            "KEY_RATE": Number(50, 5000),
            "JITTER": Number(0.05, 0.5, whole=False),
            "SEED": Number(0, 1_000_000),
        },
        [
            Rule(
                lambda p: p["LOADER_MS"] <= p["TTL_S"] * 250,
                "LOADER_MS ({LOADER_MS}) must be at most a quarter of TTL_S ({TTL_S} s): the "
                "soft TTL of Step 5 is half the TTL, and a refresh must fit in it",
            ),
            Rule(
                lambda p: p["DURATION_S"] >= 2 * p["TTL_S"],
                "DURATION_S ({DURATION_S}) must be at least twice TTL_S ({TTL_S}): every run "
                "needs expiries to measure",
            ),
        ],
    ),
    "03b": (
        {
            "HOT_RATE": Number(50, 2000),
            "WRITES_PER_S": Number(1, 50),
            "LOADER_MS": Number(10, 200),
            "HOT_DURATION_S": Number(0.5, 10, whole=False),
            "INSTANCES": Number(1, 16),
            "SEED": Number(0, 1_000_000),
        },
        [
            Rule(
                lambda p: p["HOT_DURATION_S"] * p["WRITES_PER_S"] >= 3,
                "HOT_DURATION_S ({HOT_DURATION_S}) must leave room for at least 3 writes at "
                "WRITES_PER_S ({WRITES_PER_S})",
            )
        ],
    ),
    "04": (
        {
            "READS": Number(100, 10_000),
            "NEAR_MAX_AGE_S": Number(0.2, 10, whole=False),
            "INSTANCES": Number(2, 8),
            "READ_RATE": Number(50, 2000),
            "WRITE_RATE": Number(1, 200),
            "KEYS": Number(1, 1000),
            "DURATION_S": Number(1, 20, whole=False),
            "KILL_AT_S": Number(0.1, 10, whole=False),
            "OUTAGE_S": Number(0.1, 5, whole=False),
            "DELIVERY_WINDOW_MS": Number(100, 1000),
            "LATENCY_SAMPLES": Number(50, 2000),
            "SEED": Number(0, 1_000_000),
        },
        [_OUTAGE_FITS],
    ),
    "05": (
        {
            "INSTANCES": Number(2, 8),
            "READ_RATE": Number(50, 2000),
            "WRITE_RATE": Number(1, 200),
            "KEYS": Number(1, 1000),
            "DURATION_S": Number(1, 20, whole=False),
            "KILL_AT_S": Number(0.1, 10, whole=False),
            "OUTAGE_S": Number(0.1, 5, whole=False),
            "DELIVERY_WINDOW_MS": Number(100, 1000),
            "LATENCY_SAMPLES": Number(50, 2000),
            "BURST": Number(10, 10_000),
            "LOG_MAXLEN": Number(1, 10_000),
            "SEED": Number(0, 1_000_000),
        },
        [_OUTAGE_FITS],
    ),
    "05b": (
        {
            "JOBS": Number(2, 100),
            "IDLE_MS": Number(10, 5000),
            "ENTRIES": Number(200, 20_000),
            "MAXLEN": Number(1, 20_000),
        },
        [
            Rule(
                lambda p: p["MAXLEN"] <= p["ENTRIES"],
                "MAXLEN ({MAXLEN}) must be at most ENTRIES ({ENTRIES}): a trim to more entries "
                "than the stream has removes nothing",
            )
        ],
    ),
    "06": (
        {
            "RATE": Number(20, 1000),
            "KEYS": Number(1, 1000),
            "LOADER_MS": Number(1, 100),
            "DURATION_S": Number(1, 20, whole=False),
            "FAIL_AT_S": Number(0.2, 10, whole=False),
            "OUTAGE_S": Number(0.2, 10, whole=False),
            "SOCKET_TIMEOUT_S": Number(0.05, 2, whole=False),
            "BREAKER_FAILURES": Number(1, 50),
            "BREAKER_RESET_S": Number(0.05, 5, whole=False),
            "SEED": Number(0, 1_000_000),
        },
        [
            Rule(
                lambda p: p["FAIL_AT_S"] + p["OUTAGE_S"] + 0.5 <= p["DURATION_S"],
                "FAIL_AT_S ({FAIL_AT_S}) + OUTAGE_S ({OUTAGE_S}) must end at least 0.5 s before "
                "DURATION_S ({DURATION_S}): the run must go on after Redis is back",
            )
        ],
    ),
    "07": (
        {
            "CLIENTS": Number(1, 5000),
            "INSTANCES": Number(1, 16),
            "LOADER_MS": Number(10, 500),
            "RATE": Number(20, 2000),
            "DURATION_S": Number(1, 30, whole=False),
            "TTL_S": Number(0.2, 10, whole=False),
            "BETA": Number(0.25, 4, whole=False),
            "WRITES_PER_S": Number(1, 100),
            "SEED": Number(0, 1_000_000),
        },
        [
            Rule(
                lambda p: p["INSTANCES"] <= p["CLIENTS"],
                "INSTANCES ({INSTANCES}) must be at most CLIENTS ({CLIENTS}): every instance "
                "needs at least one request",
            ),
            Rule(
                lambda p: p["LOADER_MS"] <= p["TTL_S"] * 250,
                "LOADER_MS ({LOADER_MS}) must be at most a quarter of TTL_S ({TTL_S} s): the "
                "soft TTL of stale-while-revalidate is half the TTL, and a refresh must fit in it",
            ),
            Rule(
                lambda p: p["DURATION_S"] >= 2 * p["TTL_S"],
                "DURATION_S ({DURATION_S}) must be at least twice TTL_S ({TTL_S}): the runs "
                "need expiries to measure",
            ),
            Rule(
                lambda p: p["DURATION_S"] * p["WRITES_PER_S"] >= 3,
                "DURATION_S ({DURATION_S}) must leave room for at least 3 writes at "
                "WRITES_PER_S ({WRITES_PER_S})",
            ),
        ],
    ),
}
"""Per notebook (by its number): the range of each parameter, and relations between them."""


def check_parameters(notebook: str, values: Mapping[str, Any]) -> None:
    """Refuse, in one sentence, a parameter of ``notebook`` outside its documented range.

    ``values`` is the notebook's namespace (``globals()``). Returns None when every parameter is
    in range; raises :class:`~cachelab.ConfigurationError` naming the first that is not, and the
    fix, before the notebook has measured anything.
    """
    try:
        specs, rules = NOTEBOOK_PARAMETERS[notebook]
    except KeyError:
        known = ", ".join(NOTEBOOK_PARAMETERS)
        raise ConfigurationError(
            f"no parameter ranges for notebook {notebook!r}; known: {known}"
        ) from None
    missing = [name for name in specs if name not in values]
    if missing:
        raise ConfigurationError(
            f"the parameters cell defines no {', '.join(missing)}: run it (or restore it) first"
        )
    for name, spec in specs.items():
        problem = spec.problem(name, values[name])
        if problem is not None:
            raise ConfigurationError(
                f"{problem}; set a value within the range written beside it in the parameters "
                "cell and run again"
            )
    current = {name: values[name] for name in specs}
    for rule in rules:
        if not rule.holds(current):
            raise ConfigurationError(rule.problem.format(**current) + "; change one and run again")
