"""Redis memory: the bridge refuses a Redis that may evict its keys, and retries a full one.

Every key of the Redis backend carries a TTL (a user idle for the retention
is forgotten), and among them is the fencing state that makes a publisher's
retry safe. Under an ``allkeys-*`` policy Redis may evict any of them when
full; under ``volatile-*`` exactly these (they are the keys with a TTL). An
evicted ``runs`` hash lets a retried batch be stored twice; an evicted
``meta`` restarts a user's log. The only safe policy is ``noeviction``: a full
Redis then refuses writes, and the bridge answers those batches with a
retryable ``UNAVAILABLE`` (see :mod:`bridge_service.redis_bus`) while each
user's log stays bounded by ``log_max_bytes``.

At start the bridge reads ``CONFIG GET maxmemory-policy``. Managed Redis
services often refuse ``CONFIG``, and Redis may be unreachable for a moment
(the bridge starts anyway and answers ``UNAVAILABLE`` until it is back): then
it warns and starts. An evicting policy
stops the start (:class:`EvictingRedis`) unless ``redis_allow_eviction`` is
set, which downgrades it to a warning.
"""

from __future__ import annotations

import logging
from typing import Any

import redis.asyncio as aioredis
from redis import exceptions as redis_errors
from redis.asyncio.cluster import RedisCluster

from bridge_service.redis_connections import text
from runwire_common.errors import Unavailable

log = logging.getLogger("runwire.bridge.redis")

SAFE_POLICY = "noeviction"


class EvictingRedis(RuntimeError):
    """Redis's ``maxmemory-policy`` may evict the bridge's logs and fencing state."""


async def check_eviction_policy(
    client: aioredis.Redis | RedisCluster, *, allow_eviction: bool = False
) -> str:
    """The server's ``maxmemory-policy`` (``""`` when it will not say); raises on an evicting one.

    On a cluster every primary is asked (one answer per node; any evicting one counts).
    """
    try:
        if isinstance(client, RedisCluster):
            reply: Any = await client.config_get("maxmemory-policy", target_nodes=RedisCluster.PRIMARIES)
            answers = (
                list(reply.values())
                if isinstance(reply, dict) and "maxmemory-policy" not in reply
                else [reply]
            )
        else:
            answers = [await client.config_get("maxmemory-policy")]
    except (redis_errors.RedisError, OSError) as exc:  # refused (managed Redis) or unreachable right now
        log.warning(
            "cannot read Redis's maxmemory-policy (%s); it must be %s, or a full Redis may evict "
            "fencing state and logs",
            exc,
            SAFE_POLICY,
        )
        return ""
    policies = {text(answer.get("maxmemory-policy", "")) for answer in answers}
    evicting = sorted(policy for policy in policies if policy and policy != SAFE_POLICY)
    if not evicting:
        return SAFE_POLICY if policies == {SAFE_POLICY} else ""
    policy = evicting[0]
    message = (
        f"Redis maxmemory-policy is {policy}: when full it may evict the bridge's fencing state and "
        f"event logs (every bridge key has a TTL); set maxmemory-policy {SAFE_POLICY}"
    )
    if not allow_eviction:
        raise EvictingRedis(message + " (or RUNWIRE_BRIDGE_REDIS_ALLOW_EVICTION=true to start anyway)")
    log.warning(message + "; starting anyway because redis_allow_eviction is set")
    return policy


def refused_batch(exc: redis_errors.ResponseError, *, user_id: str) -> Unavailable:
    """The retryable error of a batch Redis answered with an error (out of memory, busy, …).

    Only that batch fails: the publisher retries it within its window, and
    nothing else (other users' batches, any subscription) is ended for it.
    """
    if isinstance(exc, redis_errors.OutOfMemoryError):
        log.warning("the event store is out of memory; batch refused", extra={"user_id": user_id})
        return Unavailable("event store is out of memory; retry")
    log.error("the event store refused a batch: %s", exc, extra={"user_id": user_id})
    return Unavailable("event store refused the batch; retry")
