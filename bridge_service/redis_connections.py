"""The bridge's Pub/Sub connections: opened apart from the command pool, one per shard.

A shard of :mod:`bridge_service.redis_fanout` owns its connection for as
long as it lives, so these are never taken from (or returned to) the
client's pool: Pub/Sub never waits for a command connection, and a burst of
commands never starves the live fan-out. They carry the client's settings and
name, and no health check of redis-py's own (a subscribed connection answers
PING as a push message, which that check would misread; the fan-out PINGs).
"""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.connection import AbstractConnection
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff

from bridge_service.redis_fanout import SlotRange


def text(value: bytes | str | Any) -> str:
    """A reply value as text (replies are bytes: the client does not decode them)."""
    return value.decode() if isinstance(value, bytes) else str(value)


async def server_connection(client: aioredis.Redis) -> AbstractConnection:
    """A new connection for a Pub/Sub shard, with the client's settings and name.

    Outside the command pool, so Pub/Sub never waits for a command
    connection; the fan-out PINGs it itself (a subscribed connection
    answers PING as a push message, which redis-py's own check would misread).
    """
    pool = client.connection_pool
    kwargs: dict[str, Any] = {
        **pool.connection_kwargs,
        "health_check_interval": 0,
        "decode_responses": False,
    }
    connection: AbstractConnection = pool.connection_class(**kwargs)
    await connection.connect()  # type: ignore[no-untyped-call]
    return connection


async def node_connection(client: RedisCluster, host: str, port: int) -> AbstractConnection:
    """A Pub/Sub connection to one cluster node, with the cluster client's settings and name."""
    kwargs: dict[str, Any] = {
        key: value
        for key, value in client.connection_kwargs.items()
        if key not in ("max_connections", "connection_class", "response_callbacks")
    }
    kwargs.update(
        host=host,
        port=port,
        health_check_interval=0,
        decode_responses=False,
        retry=AsyncRetry(NoBackoff(), 0),
    )
    connection: AbstractConnection = client.connection_kwargs["connection_class"](**kwargs)
    await connection.connect()  # type: ignore[no-untyped-call]
    return connection


async def slot_ranges(client: RedisCluster) -> list[SlotRange]:
    """The cluster's slot ranges and their primaries (``CLUSTER SLOTS``)."""
    reply: Any = await client.cluster_slots()
    default_host = getattr(client, "url_host", "127.0.0.1")
    ranges: list[SlotRange] = []
    for (first, last), nodes in reply.items():
        host, port = nodes["primary"][0], nodes["primary"][1]
        host = text(host) or default_host  # "" when the node announces no address
        ranges.append((int(first), int(last), host, int(port)))
    return ranges
