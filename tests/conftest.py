"""Shared fixtures: clients for the real Redis and for fakeredis, unique namespaces, cleanup.

The real Redis on 127.0.0.1:6379 is shared with other runs: every test owns its keys (a uuid
namespace), removes them with SCAN + UNLINK, and never uses FLUSHDB, FLUSHALL or KEYS.
"""

from __future__ import annotations

import contextlib
import uuid

import pytest
from helpers import REAL_URL, delete_prefixed

import cachelab
from cachelab import embedded


@pytest.fixture
def namespace() -> str:
    """A namespace no other test or run uses."""
    return f"cachelab-test:{uuid.uuid4().hex}"


@pytest.fixture
async def real_redis(namespace):
    client = await cachelab.connect(REAL_URL, quiet=True)
    try:
        yield client
    finally:
        with contextlib.suppress(Exception):
            await delete_prefixed(client, namespace)
        await client.aclose()


@pytest.fixture
async def fake_redis(namespace):
    client = await cachelab.connect("fakeredis://", quiet=True)
    try:
        yield client
    finally:
        await delete_prefixed(client, namespace)
        await client.aclose()


@pytest.fixture(params=["fakeredis", pytest.param("redis", marks=pytest.mark.redis)])
async def any_redis(request, namespace):
    """Both backends, for behaviour that must be the same on fakeredis and a real server."""
    url = "fakeredis://" if request.param == "fakeredis" else REAL_URL
    client = await cachelab.connect(url, quiet=True)
    try:
        yield client
    finally:
        with contextlib.suppress(Exception):
            await delete_prefixed(client, namespace)
        await client.aclose()


@pytest.fixture
def make_cache(any_redis, namespace):
    """``make_cache(**options)``: a Cache in this test's namespace (keys removed afterwards)."""

    def make(**options) -> cachelab.Cache:
        options.setdefault("namespace", namespace)
        options.setdefault("ttl", 60)
        return cachelab.Cache(any_redis, **options)

    return make


@pytest.fixture
def stop_embedded():
    """Make sure no embedded redis-server of this process outlives the test."""

    def stop() -> None:
        server = embedded.EmbeddedServer._shared
        if server is not None:
            server.stop()

    stop()
    yield stop
    stop()


FULL_TIER = {
    # notebooks in a real browser, re-run with other parameters, the wheel, the site
    "test_browser.py", "test_notebook_reruns.py", "test_packaging.py", "test_site.py",
    # experiments, worker processes, JupyterLab and the CLI in subprocesses, a private cluster
    "test_classroom.py", "test_cli.py", "test_cluster.py", "test_coherence.py",
    "test_compare.py", "test_experiments.py", "test_expiry.py", "test_extras.py",
    "test_fault_experiments.py", "test_faults_no_leaks.py", "test_fuzz_cli.py",
    "test_hit_path.py", "test_soak_script.py",
}  # fmt: skip
"""Test files of the full tier only: the fast tier (``pytest tests -m "not full"``) is the
library against a real Redis and fakeredis, for a developer to run after every change."""

LONGEST_FIRST = ("tests/test_browser.py", "tests/test_notebook_reruns.py")


def pytest_collection_modifyitems(config, items):
    """Mark the full tier; collect the longest files first: with `-n 2 --dist loadfile` a worker
    that starts one first overlaps it with everything else instead of running it alone at the
    end (the browser test runs every notebook in Chromium, the re-runs every notebook twice)."""
    for item in items:
        if item.path.name in FULL_TIER or item.path.suffix == ".ipynb":
            item.add_marker(pytest.mark.full)
    items.sort(key=lambda item: item.nodeid.split("::")[0] not in LONGEST_FIRST)
