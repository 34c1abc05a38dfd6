"""Redis Cluster: many masters, each owning a share of the 16384 hash slots.

A cluster splits the key space by hash slot (CRC16 of the key, or of its *hash tag*, the part
between the first ``{`` and the next ``}``). Everything cachelab does atomically on several keys,
a Lua script or a multi-key command, must therefore touch keys of one slot, or the server refuses
with ``CROSSSLOT``. A :class:`~cachelab.Cache` stores key ``K`` as ``namespace:{K}`` and its lock,
fence, lease and stale copy as ``namespace:{K}:lock`` and so on: one hash tag, one slot, one node.

What this module adds for clusters:

- :func:`key_slot` and :func:`same_slot` (is a group of keys usable in one script?);
- :func:`parse_cluster_url`: ``redis+cluster://[[user]:password@]host:port,host:port`` (or
  ``rediss+cluster://`` for TLS) into startup nodes and connection options;
- :class:`QueueingRedisCluster`: redis-py's asyncio ``RedisCluster`` raises
  ``MaxConnectionsError`` as soon as a node has ``max_connections`` busy connections, where a
  plain client's blocking pool makes extra requests queue. An experiment has thousands of
  requests in flight, so this subclass queues them too (at most ``max_connections`` commands in
  flight per client, waiting up to ``pool_timeout`` seconds for a turn);
- :func:`node_pool`: a one-connection pool to one node, for pub/sub. PUBLISH in a cluster reaches
  every node (it travels over the cluster bus, also from inside a Lua script), so a subscriber
  connected to any one node hears every message.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING, Any, TypeAlias
from urllib.parse import unquote, urlsplit, urlunsplit

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.crc import key_slot as _crc_slot
from redis.exceptions import ConnectionError as RedisConnectionError

from .errors import ConfigurationError, InvalidURLError
from .urls import redact_url

if TYPE_CHECKING:
    from typing_extensions import TypeIs  # typing.TypeIs is 3.13+; mypy only, never imported

__all__ = [
    "CLUSTER_SCHEMES",
    "NoFreeConnection",
    "QueueingRedisCluster",
    "RedisClient",
    "cluster_client",
    "each_node",
    "is_cluster",
    "key_slot",
    "made_by_cachelab",
    "masters",
    "node_pool",
    "parse_cluster_url",
    "parse_nodes",
    "same_slot",
]

CLUSTER_SCHEMES = ("redis+cluster", "rediss+cluster")

RedisClient: TypeAlias = aioredis.Redis | RedisCluster
"""What :func:`cachelab.connect` returns and every part of cachelab accepts: a plain client, or a
cluster client (which is not a ``redis.asyncio.Redis``: it has no single connection pool)."""


def is_cluster(client: object) -> TypeIs[RedisCluster]:
    """True for a Redis Cluster client (commands are routed by hash slot)."""
    return isinstance(client, RedisCluster)


def key_slot(key: str | bytes) -> int:
    """The hash slot (0-16383) of ``key``, computed the way the server does."""
    return _crc_slot(key.encode() if isinstance(key, str) else key)


def same_slot(*keys: str | bytes) -> bool:
    """True if every key hashes to one slot, so one script or command may touch them all."""
    return len({key_slot(k) for k in keys}) <= 1


# --- addresses --------------------------------------------------------------------------------


def _node(text: str) -> tuple[str, int]:
    host, sep, port = text.strip().rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{text.strip()!r} is not host:port")
    return host.strip("[]"), int(port)


def parse_nodes(nodes: list[str] | tuple[str, ...]) -> list[tuple[str, int]]:
    """``["127.0.0.1:7000", ...]`` (or ``(host, port)`` pairs) as ``[(host, port), ...]``."""
    if isinstance(nodes, str) or not nodes:
        raise ConfigurationError(
            f"cluster_nodes must be a non-empty list of 'host:port' strings, got {nodes!r}; "
            "e.g. cluster_nodes=['127.0.0.1:7000', '127.0.0.1:7001']"
        )
    parsed = []
    for node in nodes:
        if isinstance(node, tuple) and len(node) == 2:
            node = f"{node[0]}:{node[1]}"
        try:
            parsed.append(_node(str(node)))
        except ValueError as exc:
            raise ConfigurationError(
                f"cluster_nodes: {exc}; write each node as 'host:port', e.g. '127.0.0.1:7000'"
            ) from None
    return parsed


def parse_cluster_url(url: str) -> tuple[list[tuple[str, int]], dict[str, Any]]:
    """Startup nodes and connection options of a ``redis+cluster://`` URL.

    The options are those of the same URL with the first node and ``redis://`` (user name,
    password, query options like ``socket_timeout``); ``rediss+cluster://`` turns on TLS. A
    cluster has one database only, so a path other than ``/`` or ``/0`` is an error.
    """
    from redis.asyncio.connection import SSLConnection, parse_url

    shown = redact_url(url)
    expected = "expected redis+cluster://[[user]:password@]host:port[,host:port...]"
    parts = urlsplit(url)
    hosts = parts.netloc.rpartition("@")[2]
    try:
        nodes = [_node(h) for h in hosts.split(",")]
    except ValueError as exc:
        raise InvalidURLError(f"{shown} is not a valid cluster URL: {exc}; {expected}") from None
    if parts.path.strip("/") not in ("", "0"):
        raise InvalidURLError(
            f"{shown} names database {parts.path.strip('/')!r}, but a Redis Cluster has only "
            f"database 0; drop the path. {expected}"
        )
    userinfo = parts.netloc.rpartition("@")[0]
    plain_scheme = "rediss" if parts.scheme.lower() == "rediss+cluster" else "redis"
    netloc = (f"{userinfo}@" if userinfo else "") + f"{nodes[0][0]}:{nodes[0][1]}"
    try:
        # a plain dict (redis-py types it as its ConnectKwargs): the loop below edits its keys
        options: dict[str, Any] = dict(
            parse_url(urlunsplit((plain_scheme, netloc, "", parts.query, "")))
        )
    except ValueError as exc:
        message = str(exc)
        if parts.password:
            message = message.replace(unquote(parts.password), "***")
        raise InvalidURLError(f"{shown} is not a valid cluster URL: {message}") from None
    for gone in ("host", "port", "db", "path"):
        options.pop(gone, None)
    if options.pop("connection_class", None) is SSLConnection:
        options["ssl"] = True
    return nodes, options


# --- clients ----------------------------------------------------------------------------------


class NoFreeConnection(RedisConnectionError):
    """Every connection the cluster client may open stayed busy for its pool timeout: the client
    is overloaded, the cluster may well be fine (so a circuit breaker does not count it)."""


class QueueingRedisCluster(RedisCluster):
    """A ``RedisCluster`` whose excess requests wait for a turn instead of failing.

    At most ``max_connections`` commands are in flight at once (so no node ever needs more than
    that many connections); the others wait up to ``pool_timeout`` seconds, like requests on a
    plain client's blocking pool. It remembers how it was made, so that
    :func:`cachelab.clone_client` and :func:`cachelab.portable_spec` can make another one.
    """

    def __init__(
        self,
        nodes: list[tuple[str, int]],
        options: dict[str, Any],
        *,
        max_connections: int,
        pool_timeout: float,
    ) -> None:
        super().__init__(
            startup_nodes=[ClusterNode(host, port) for host, port in nodes],
            max_connections=max_connections,
            **options,
        )
        self.cachelab_nodes = list(nodes)
        self.cachelab_options = dict(options)
        self.cachelab_max_connections = max_connections
        self.cachelab_pool_timeout = pool_timeout
        self._turns = asyncio.Semaphore(max_connections)

    def known_nodes(self) -> list[tuple[str, int]]:
        """The nodes this client knows now (after discovery), else the ones it started from."""
        found = [(n.host, int(n.port)) for n in self.get_nodes()]
        return found or list(self.cachelab_nodes)

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        try:
            async with asyncio.timeout(self.cachelab_pool_timeout):
                await self._turns.acquire()
        except TimeoutError:
            raise NoFreeConnection(
                f"no free cluster connection within {self.cachelab_pool_timeout:g} s "
                f"({self.cachelab_max_connections} commands already in flight); raise "
                "max_connections or pool_timeout"
            ) from None
        try:
            return await super().execute_command(*args, **kwargs)
        finally:
            self._turns.release()


def cluster_client(
    nodes: list[tuple[str, int]],
    options: dict[str, Any],
    *,
    max_connections: int,
    pool_timeout: float,
    client_name: str | None = None,
) -> QueueingRedisCluster:
    """A new cluster client; ``client_name`` names its connections in CLIENT LIST."""
    options = dict(options)
    if client_name is not None:
        options["client_name"] = client_name
    return QueueingRedisCluster(
        nodes, options, max_connections=max_connections, pool_timeout=pool_timeout
    )


def made_by_cachelab(client: RedisCluster) -> QueueingRedisCluster:
    """``client``, if :func:`cachelab.connect` made it (only then is it known how to copy it)."""
    if not isinstance(client, QueueingRedisCluster):
        raise ConfigurationError(
            "this RedisCluster client was not made by cachelab.connect(), so cachelab cannot "
            "open more clients like it; use `await cachelab.connect('redis+cluster://host:port')`"
        )
    return client


async def masters(client: RedisCluster) -> int:
    """How many masters serve the cluster's slots (discovering the cluster if needed)."""
    await client.initialize()
    return len(client.get_primaries())


POOL_INTERNALS = (
    "retry", "retry_on_error", "retry_on_timeout", "event_dispatcher", "himport_registry",
    "maint_notifications_config", "maint_notifications_pool_handler",
    "oss_cluster_maint_notifications_handler", "orig_host_address", "orig_socket_timeout",
    "orig_socket_connect_timeout",
)  # fmt: skip
"""Connection arguments that belong to one pool (its retry policy, its event and maintenance
machinery) rather than to the server and session, so a new pool must not share them."""


def session_kwargs(connection_kwargs: dict[str, Any]) -> dict[str, Any]:
    """``connection_kwargs`` without what belongs to the pool they came from, for a new pool
    (a listener that changes the protocol must not inherit a RESP3-only maintenance handler)."""
    return {k: v for k, v in connection_kwargs.items() if k not in POOL_INTERNALS}


def node_pool(
    client: RedisCluster, *, client_name: str, key: str | None = None, **overrides: Any
) -> aioredis.ConnectionPool:
    """A one-connection pool to one node of the cluster, for listening: the node that serves
    ``key`` (a stream read with XREAD), else the default node (pub/sub reaches every node).

    Listening waits indefinitely, so the connection has no read timeout. The cluster's own client
    keeps no such connection: a subscribed connection can do nothing else.
    """
    node = client.get_node_from_key(key) if key is not None else client.get_default_node()
    if node is None:  # not discovered yet: any startup node will do
        node = next(iter(client.nodes_manager.startup_nodes.values()))
    kwargs = session_kwargs(node.connection_kwargs)
    kwargs |= {"client_name": client_name, "socket_timeout": None, **overrides}
    return aioredis.ConnectionPool(
        connection_class=node.connection_class, max_connections=1, **kwargs
    )


async def each_node(client: RedisCluster) -> list[ClusterNode]:
    """The cluster's nodes, discovered first: commands that act per node (CLIENT LIST/KILL)."""
    with contextlib.suppress(Exception):
        await client.initialize()
    return client.get_nodes()
