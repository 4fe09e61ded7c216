"""Redis clients as Runwire's services build them: named, bounded, quick to fail, never retrying.

The gateway (its shared per-user limits) and the bridge (its event store) both
talk to Redis under the same rules: every connection carries a client name
(so ``CLIENT LIST`` shows whose it is), a command waits a bounded time for a
connection instead of opening more than ``max_connections``, every call has
a timeout, and nothing is retried inside redis-py, because each caller
decides what a failed command means (the bridge answers ``UNAVAILABLE`` and
lets its caller retry; the gateway falls back to its own process's limits).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any
from urllib.parse import unquote, urlparse

import redis.asyncio as aioredis
from redis import exceptions as redis_errors
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff
from redis.maint_notifications import MaintNotificationsConfig
from redis.retry import Retry
from redis.typing import EncodableT

HEALTH_CHECK_S = 10  # PING an idle connection before use (a quiet Pub/Sub connection) after this long

RedisClient = aioredis.Redis | RedisCluster


def connect(url: str, *, client_name: str, timeout_s: float, max_connections: int = 6) -> aioredis.Redis:
    """The process's command client: no hidden retries, bounded time and connections, named.

    The pool blocks (up to ``timeout_s``) for a free connection rather than
    opening more than ``max_connections``, so a process's Redis connections
    stay fixed however busy it is.
    """
    pool = aioredis.BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=timeout_s,
        retry=Retry(NoBackoff(), 0),
        **_connection_options(client_name, timeout_s),
    )
    return aioredis.Redis.from_pool(pool)


def _connection_options(client_name: str, timeout_s: float) -> dict[str, Any]:
    """What every connection of both clients carries: its name, its timeouts, keepalive and a health check."""
    return {
        "client_name": client_name,
        "socket_timeout": timeout_s,
        "socket_connect_timeout": timeout_s,
        "socket_keepalive": True,
        "health_check_interval": HEALTH_CHECK_S,
    }


class BoundedRedisCluster(RedisCluster):
    """A ``RedisCluster`` whose commands wait (up to ``wait_s``) for one of ``max_connections`` turns.

    redis-py's cluster pools raise ``MaxConnectionsError`` at once when a
    node's pool is full; here at most ``max_connections`` commands are in
    flight at all, so no node's pool (``max_connections`` each) ever runs
    out, and a burst waits like the single server's blocking pool.
    """

    def __init__(self, *, max_connections: int, wait_s: float, **kwargs: Any) -> None:
        super().__init__(max_connections=max_connections, **kwargs)
        self.turns = asyncio.Semaphore(max_connections)
        self.wait_s = wait_s
        self.url_host: str = kwargs.get("host") or "127.0.0.1"

    async def initialize(
        self,
        additional_startup_nodes_info: list[tuple[str, int]] | None = None,
        last_failed_node_name: str | None = None,
    ) -> BoundedRedisCluster:
        """Discover the nodes; a seed node's own pool gives way to the discovered node's.

        redis-py keeps the seed (``url``'s node) as a separate object with
        its own connection: one more connection to that node than the bound.
        """
        await super().initialize(additional_startup_nodes_info, last_failed_node_name)
        manager = self.nodes_manager
        for name, seed in list(manager.startup_nodes.items()):
            node = manager.nodes_cache.get(name)
            if node is not None and node is not seed:
                manager.startup_nodes[name] = node
                with contextlib.suppress(Exception):
                    await seed.disconnect()
        return self

    async def execute_command(self, *args: EncodableT, **kwargs: Any) -> Any:
        try:
            async with asyncio.timeout(self.wait_s):
                await self.turns.acquire()
        except TimeoutError as exc:
            raise redis_errors.ConnectionError("no free Redis connection") from exc
        try:
            return await super().execute_command(*args, **kwargs)
        finally:
            self.turns.release()


def connect_cluster(
    url: str, *, client_name: str, timeout_s: float, max_connections: int = 6
) -> BoundedRedisCluster:
    """The command client for a Redis Cluster (``url``: any of its nodes; db 0).

    Same rules as :func:`connect`: no hidden retries (a failed node makes the
    next command load the topology again), bounded time, named connections,
    at most ``max_connections`` commands in flight and as many connections
    per node. The nodes are discovered on the first command.
    """
    parsed = urlparse(url)
    if parsed.scheme not in ("redis", "rediss"):
        raise ValueError("a Redis Cluster URL is redis://host:port or rediss://host:port")
    return BoundedRedisCluster(
        host=parsed.hostname or "127.0.0.1",
        port=parsed.port or 6379,
        username=unquote(parsed.username) if parsed.username else None,
        password=unquote(parsed.password) if parsed.password else None,
        ssl=parsed.scheme == "rediss",
        max_connections=max_connections,
        wait_s=timeout_s,
        retry=AsyncRetry(NoBackoff(), 0),
        **_connection_options(client_name, timeout_s),
        # A MOVED patches that slot only: redis-py's periodic full reload on MOVED closes every
        # connection, in-flight commands included, which would fail unrelated calls mid-resharding.
        reinitialize_steps=0,
        # No CLIENT MAINT_NOTIFICATIONS handshake (open-source Redis has none; a slot move is a MOVED).
        maint_notifications_config=MaintNotificationsConfig(enabled=False),
    )
