"""Deleting one user's retained log from Redis, for an operator erasing that user's data.

The bridge's key layout is :mod:`bridge_service.redis_scripts`'s, so the
function that removes a user's keys lives here and callers (``runwire admin
purge-user``) pass only the key prefix and the bus's user id. One ``DEL`` of
keys that share the user's hash tag: atomic, and allowed on a Redis Cluster
(one slot). Subscribers of that user that are still connected see the log
start anew (their next resume reports a gap); a publish after the purge
starts a new log.
"""

from __future__ import annotations

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from bridge_service.redis_scripts import user_keys


async def delete_user_log(client: Redis | RedisCluster, user_id: str, *, key_prefix: str = "runwire") -> int:
    """Delete ``user_id``'s stream, meta, fencing state and run order; return how many keys existed."""
    keys = user_keys(key_prefix, user_id)
    deleted: int = await client.delete(keys.stream, keys.meta, keys.runs, keys.run_order)
    return deleted
