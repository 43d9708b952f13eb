"""How :class:`~asynctoken.stores.RedisStore` reaches Redis: one server or a Redis Cluster, the
names of a credential's keys, and URLs without their passwords."""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from redis.asyncio import ConnectionPool, Redis, RedisCluster
from redis.asyncio.cluster import ClusterNode
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from .._errors import ConfigurationError

__all__ = ["Client", "KeyNames", "connect", "describe", "glob_escape", "redact_url", "reopen"]

_BROKEN_CONNECTION_ATTEMPTS = 3

#: Either kind of client.
Client = Redis | RedisCluster


class KeyNames:
    """The Redis key names of one store (``prefix``), for a single server or a cluster.

    * one server: ``{prefix}cred:{key}`` and ``{prefix}lock:{key}``;
    * a cluster: ``{prefix}cred:{{key}}`` and ``{prefix}lock:{{key}}``. The braces are a hash tag:
      both keys of a credential hash to one slot (by the text up to the first ``}``), so they
      live on one node and move together when slots are resharded.
    """

    __slots__ = ("_close", "_open", "cluster", "prefix")

    def __init__(self, prefix: str, *, cluster: bool) -> None:
        if cluster and ("{" in prefix or "}" in prefix):
            raise ConfigurationError(
                f"a Redis Cluster prefix must not contain braces (they would be the hash tag of "
                f"every key, putting all credentials on one node): {prefix!r}"
            )
        self.prefix = prefix
        self.cluster = cluster
        self._open = "{" if cluster else ""
        self._close = "}" if cluster else ""

    def cred(self, key: str) -> str:
        """The name of the credential's record."""
        return f"{self.prefix}cred:{self._open}{key}{self._close}"

    def lock(self, key: str) -> str:
        """The name of the credential's refresh lock."""
        return f"{self.prefix}lock:{self._open}{key}{self._close}"

    def pattern(self) -> str:
        """The ``SCAN MATCH`` pattern of every record name."""
        return glob_escape(f"{self.prefix}cred:{self._open}") + "*"

    def key_of(self, name: bytes | str) -> str:
        """The credential key of a record name found by ``SCAN``."""
        text = name.decode("utf-8", "replace") if isinstance(name, bytes) else str(name)
        text = text[len(self.prefix) + len("cred:") + len(self._open) :]
        return text[: len(text) - len(self._close)] if self._close else text


class _Cluster(RedisCluster):
    """redis-py's asyncio cluster client, with one workaround.

    After a connection error, redis-py disconnects a node's idle connections while they can
    still be handed to other tasks, whose command then fails with ``AttributeError`` (the
    connection's writer is gone) instead of being retried. Every command of RedisStore is safe
    to repeat (see :func:`connect`), so such a command is sent again (up to three times in all),
    on a connection taken anew once the disconnection in progress is over.
    """

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        for _ in range(_BROKEN_CONNECTION_ATTEMPTS - 1):
            try:
                return await super().execute_command(*args, **kwargs)
            except AttributeError:
                # Let the disconnection in progress finish before taking a connection again.
                await asyncio.sleep(0.01)
        return await super().execute_command(*args, **kwargs)


def connect(
    url: str,
    *,
    cluster: bool,
    max_connections: int,
    socket_timeout: float | None,
    connect_timeout: float | None,
) -> Client:
    """A client for ``url``.

    A single-server client retries nothing by itself: failures surface as StoreError. A cluster
    client keeps redis-py's retries, which also follow the cluster as it changes (a node
    restarting, slots moving) and which redis-py's asyncio cluster client needs against
    connections it drops under concurrency; the store's commands are safe to repeat (a
    repeated ``SET NX`` of the lock or of a record is recognised by its value, the scripts
    compare before they write).

    Raises:
        ValueError: a bad URL.
    """
    if cluster:
        return _Cluster.from_url(
            url,
            max_connections=max_connections,
            socket_timeout=socket_timeout,
            socket_connect_timeout=connect_timeout,
        )
    pool = ConnectionPool.from_url(
        url,
        max_connections=max_connections,
        socket_timeout=socket_timeout,
        socket_connect_timeout=connect_timeout,
        retry=Retry(NoBackoff(), 0),
    )
    client = Redis(connection_pool=pool)
    client.auto_close_connection_pool = True  # closing the client closes the pool
    return client


def reopen(client: Client) -> tuple[Client, int]:
    """A client to the same server(s) with connections of its own (for a forked child), and
    its pool size."""
    if isinstance(client, RedisCluster):
        kwargs: dict[str, Any] = dict(client.get_connection_kwargs())
        nodes = [ClusterNode(node.host, node.port) for node in client.get_nodes()]
        keep = ("username", "password", "socket_timeout", "socket_connect_timeout", "ssl")
        size: int = getattr(client.get_default_node(), "max_connections", 50)
        options: dict[str, Any] = {k: v for k, v in kwargs.items() if k in keep}
        fresh = _Cluster(startup_nodes=nodes, max_connections=size, **options)
        return fresh, size
    pool = client.connection_pool
    fresh_pool = type(pool)(
        connection_class=pool.connection_class,
        max_connections=pool.max_connections,
        **pool.connection_kwargs,
    )
    single = Redis(connection_pool=fresh_pool)
    single.auto_close_connection_pool = True
    return single, pool.max_connections


def password_of(client: Client) -> str | None:
    """The client's password, to keep it out of messages."""
    if isinstance(client, RedisCluster):
        kwargs: Any = client.get_connection_kwargs()
    else:
        kwargs = client.connection_pool.connection_kwargs
    password = kwargs.get("password")
    return password if isinstance(password, str) and password else None


def redact_url(url: str) -> str:
    """Return ``url`` with any password replaced by ``***`` (userinfo and ``?password=``)."""
    try:
        parts = urlsplit(url)
        netloc = parts.netloc
        if "@" in netloc:
            userinfo, host = netloc.rsplit("@", 1)
            if ":" in userinfo:
                userinfo = userinfo.split(":", 1)[0] + ":***"
            netloc = f"{userinfo}@{host}"
        query = parts.query
        if query:
            pairs = parse_qsl(query, keep_blank_values=True)
            query = urlencode([(k, "***" if k.lower() == "password" else v) for k, v in pairs])
            query = query.replace("%2A%2A%2A", "***")
        return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
    except ValueError:
        return "<unparsable Redis URL>"


def describe(client: Client) -> str:
    """A password-free URL for a client that was created elsewhere."""
    if isinstance(client, RedisCluster):
        kwargs: Any = client.get_connection_kwargs()
        # Before its first command a cluster client knows only the nodes it was given.
        node = client.get_default_node() or next(
            iter(client.nodes_manager.startup_nodes.values()), None
        )
        where = "?" if node is None else f"{node.host}:{node.port}"
        scheme = "rediss" if kwargs.get("ssl") else "redis"
        user = kwargs.get("username") or ""
        auth = f"{user}:***@" if kwargs.get("password") else (f"{user}@" if user else "")
        return f"{scheme}://{auth}{where} (cluster)"
    pool = client.connection_pool
    kwargs = pool.connection_kwargs
    db = kwargs.get("db", 0)
    if kwargs.get("path"):
        return f"unix://{kwargs['path']}?db={db}"
    connection_class = getattr(pool, "connection_class", None)
    scheme = "rediss" if "SSL" in getattr(connection_class, "__name__", "") else "redis"
    user = kwargs.get("username") or ""
    auth = f"{user}:***@" if kwargs.get("password") else (f"{user}@" if user else "")
    host, port = kwargs.get("host", "localhost"), kwargs.get("port", 6379)
    return f"{scheme}://{auth}{host}:{port}/{db}"


def glob_escape(text: str) -> str:
    """Escape the glob characters of ``MATCH`` patterns."""
    return "".join("\\" + char if char in "*?[]\\^" else char for char in text)
