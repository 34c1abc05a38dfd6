"""Every notebook re-runs to the end with other parameters, the way a student re-runs it.

nbval checks the notebooks at their defaults; this re-runs each one through
``cachelab notebook run NB -p NAME VALUE ...`` (papermill, a fresh kernel) with two parameter sets
inside the documented ranges, chosen to run fast and to take the other side of the checks'
premises: few clients and one instance, where a check must say why its premise does not hold
instead of failing, and small but busy settings where the checks do hold. A notebook whose checks
were written for one run fails here.

Budget, measured on the 2-CPU development machine: 22 runs of 6 to 19 s each (a kernel start
of about 5 s plus a short run), about 250 s in all (01b's two took 10 s and 8 s), a little over
4 minutes on one pytest worker;
``--dist loadfile`` keeps this file on one worker while the other runs the rest of the suite.
Larger parameter sets are for people, not CI.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest
from helpers import REAL_URL
from typer.testing import CliRunner

from cachelab.cli import app

pytestmark = pytest.mark.redis

ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")

FAST: dict[str, list[dict]] = {
    "00": [
        {"KEYS": 3, "READS": 20, "LATENCY_MS": 2, "JITTER_MS": 1, "TTL_S": 1},
        {"KEYS": 50, "READS": 30, "LATENCY_MS": 1, "JITTER_MS": 0, "SEED": 3},
    ],
    "01": [
        {"CLIENTS": 20, "CLIENT_COUNTS": [5, 20], "INSTANCES": 1, "LOADER_MS": 50,
         "SPREAD_MS": 50, "FAILING_CLIENTS": 3},
        {"CLIENTS": 40, "CLIENT_COUNTS": [40], "INSTANCES": 2, "LOADER_MS": 60,
         "SHORT_LOADER_MS": 50, "SPREAD_MS": 10, "FAILING_CLIENTS": 2},
    ],
    "01b": [
        {"CONCURRENCY": [1, 2], "READS": 500, "ROUNDS": 1},
        {"CONCURRENCY": [1, 200], "READS": 1000, "ROUNDS": 1},
    ],
    "02": [
        {"CLIENTS": 10, "INSTANCES": 1, "PROCESSES": False, "LOCK_TTL_S": 0.5, "WAITERS": 2},
        {"CLIENTS": 20, "INSTANCES": 2, "POLL_INTERVAL_S": 0.01, "LOCK_TTL_S": 0.5,
         "WAITERS": 3},
    ],
    "03": [
        {"RATE": 40, "TTL_S": 0.4, "LOADER_MS": 20, "DURATION_S": 1.0, "LIVE_BETAS": [1.0],
         "SIM_BETAS": [1.0, 2.0], "SIM_EXPIRIES": 100, "INSTANCES": 1, "KEYS": 10,
         "KEY_RATE": 100, "JITTER": 0.1},
        {"RATE": 500, "TTL_S": 0.3, "LOADER_MS": 20, "DURATION_S": 1.2,
         "LIVE_BETAS": [0.5, 1.5], "SIM_BETAS": [1.0, 3.0], "SIM_EXPIRIES": 200, "INSTANCES": 2,
         "KEYS": 20, "KEY_RATE": 1000, "JITTER": 0.5},
    ],
    "03b": [
        {"HOT_RATE": 100, "WRITES_PER_S": 5, "LOADER_MS": 20, "HOT_DURATION_S": 0.6,
         "INSTANCES": 1},
        {"HOT_RATE": 600, "WRITES_PER_S": 50, "LOADER_MS": 20, "HOT_DURATION_S": 0.6,
         "INSTANCES": 2},
    ],
    "04": [
        {"READS": 100, "NEAR_MAX_AGE_S": 0.2, "INSTANCES": 2, "READ_RATE": 100, "WRITE_RATE": 2,
         "KEYS": 5, "DURATION_S": 1.0, "KILL_AT_S": 0.2, "OUTAGE_S": 0.2, "LATENCY_SAMPLES": 50},
        {"READS": 200, "INSTANCES": 4, "READ_RATE": 400, "WRITE_RATE": 40, "KEYS": 10,
         "DURATION_S": 1.5, "KILL_AT_S": 0.3, "OUTAGE_S": 0.4, "LATENCY_SAMPLES": 50},
    ],
    "05": [
        {"INSTANCES": 2, "READ_RATE": 100, "WRITE_RATE": 2, "KEYS": 5, "DURATION_S": 1.0,
         "KILL_AT_S": 0.2, "OUTAGE_S": 0.2, "LATENCY_SAMPLES": 50, "BURST": 50,
         "LOG_MAXLEN": 1000},
        {"INSTANCES": 4, "READ_RATE": 400, "WRITE_RATE": 40, "KEYS": 10, "DURATION_S": 1.5,
         "KILL_AT_S": 0.3, "OUTAGE_S": 0.4, "LATENCY_SAMPLES": 50, "BURST": 500,
         "LOG_MAXLEN": 1},
    ],
    "05b": [
        {"JOBS": 2, "IDLE_MS": 10, "ENTRIES": 200, "MAXLEN": 1},
        {"JOBS": 9, "IDLE_MS": 50, "ENTRIES": 300, "MAXLEN": 300},
    ],
    "06": [
        {"RATE": 40, "KEYS": 5, "DURATION_S": 1.2, "FAIL_AT_S": 0.3, "OUTAGE_S": 0.4,
         "SOCKET_TIMEOUT_S": 0.2},
        {"RATE": 200, "DURATION_S": 1.5, "FAIL_AT_S": 0.3, "OUTAGE_S": 0.6,
         "SOCKET_TIMEOUT_S": 0.1, "BREAKER_FAILURES": 2, "BREAKER_RESET_S": 0.1},
    ],
    "07": [
        {"CLIENTS": 10, "INSTANCES": 1, "LOADER_MS": 20, "RATE": 40, "DURATION_S": 1.0,
         "TTL_S": 0.4, "BETA": 0.5, "WRITES_PER_S": 5},
        {"CLIENTS": 50, "INSTANCES": 3, "LOADER_MS": 20, "RATE": 400, "DURATION_S": 1.0,
         "TTL_S": 0.2, "BETA": 2.0, "WRITES_PER_S": 50},
    ],
}  # fmt: skip
"""Two fast parameter sets per notebook, by notebook number."""

CASES = [(number, i, values) for number, sets in FAST.items() for i, values in enumerate(sets)]


def as_arguments(values: dict) -> list[str]:
    arguments = []
    for name, value in values.items():
        arguments += ["-p", name, str(value)]
    return arguments


def test_every_notebook_has_two_fast_parameter_sets():
    from cachelab import classroom

    numbers = {nb.number for nb in classroom.discover(Path(__file__).parent.parent / "notebooks")}
    assert set(FAST) == numbers
    assert all(len(sets) >= 2 for sets in FAST.values())


@pytest.mark.timeout(180)
@pytest.mark.parametrize(
    ("number", "index", "values"), CASES, ids=[f"{n}-{i}" for n, i, _ in CASES]
)
def test_the_notebook_runs_to_the_end_with_other_parameters(number, index, values, tmp_path):
    started = time.monotonic()
    result = CliRunner().invoke(
        app,
        ["notebook", "run", number, *as_arguments(values), "--output", str(tmp_path)],
        env={"REDIS_URL": REAL_URL},
    )
    output = ANSI.sub("", result.stdout + result.stderr)
    assert result.exit_code == 0, f"notebook {number} with {values} failed:\n{output[-3000:]}"
    (executed,) = tmp_path.glob("*/*.ipynb")
    cells = json.loads(executed.read_text())["cells"]
    errors = [o for c in cells for o in c.get("outputs", []) if o["output_type"] == "error"]
    assert not errors, f"notebook {number} with {values}: {errors[0]['evalue']}"
    print(f"notebook {number}, set {index}: {time.monotonic() - started:.1f} s")
