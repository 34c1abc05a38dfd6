"""Notebook 07, "Build it yourself": the cache for a stock level (checker: "stock_cache").

One load across instances, no stale sets (a lease is revoked by the delete), and while one reader
reloads, the others get the previous value marked stale instead of waiting.
"""

import cachelab


def make_cache(redis, namespace):
    return cachelab.Cache(redis, namespace=namespace, ttl=60, policy="lease")
