"""``runwire admin purge-user``: delete everything the system keeps of one user.

Straight against the stores, like the registry's migration Job, through the
services' own storage functions: the registry's
(:mod:`registry_service.retention`) for runs, thread messages, input
requests and the outbox entries on them, and the bridge's
(:mod:`bridge_service.redis_purge`) for the user's retained event log and
fencing state in Redis. No service needs to be running.

The owner is ``(tenant, user)``, as everywhere: without ``--tenant`` the user
of tokens without a tenant; equal user ids of other tenants are not touched.

Live runs: the command refuses (exit 1, nothing deleted) while the user has
one, unless ``--force``: then they are ended as ``cancelled`` (error
``purged``), the command waits ``--settle`` seconds so their executors see
that at their next heartbeat (every 2 s by default) and stop publishing, and
only then deletes the rows and the event log. A run admitted while the
command runs is reported and left alone (exit 1): block the user at the edge
first (revoke their tokens) for a clean erase.

The memory event backend lives inside the bridge process and cannot be
reached from here: it forgets an idle user after ``RUNWIRE_BRIDGE_RETENTION_S``
(1 day) and everything on a restart.
"""

from __future__ import annotations

import asyncio
import functools
from dataclasses import dataclass

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from bridge_service.redis_purge import delete_user_log
from registry_service.database import open_database
from registry_service.retention import Purged, end_live_runs, live_runs, purge_owner
from registry_service.settings import DatabaseSettings
from runwire_common.owners import owner_key
from runwire_common.timeutil import utcnow

DEFAULT_SETTLE_S = 5.0  # longer than two executor heartbeats (2 s each by default)


@dataclass(frozen=True)
class PurgeOutcome:
    """What ``purge-user`` did: rows deleted, live runs refused/ended/left, Redis keys deleted."""

    purged: Purged
    refused: tuple[str, ...] = ()  # live runs that stopped the purge (no --force): nothing deleted
    ended: tuple[str, ...] = ()  # live runs ended as cancelled (--force), then deleted
    remaining: tuple[str, ...] = ()  # live runs admitted meanwhile, left alone
    redis_keys: int = 0

    @property
    def complete(self) -> bool:
        return not self.refused and not self.remaining


async def purge_user(
    user_id: str,
    *,
    tenant_id: str = "",
    database: DatabaseSettings,
    redis_url: str = "",
    redis_key_prefix: str = "runwire",
    redis_cluster: bool = False,
    force: bool = False,
    settle_s: float = DEFAULT_SETTLE_S,
) -> PurgeOutcome:
    """Delete the owner's rows (and Redis log when ``redis_url`` is given); see the module doc."""
    async with open_database(database) as db:
        live = await db.read(functools.partial(live_runs, tenant_id=tenant_id, user_id=user_id))
        if live and not force:
            return PurgeOutcome(Purged(), refused=tuple(run.run_id for run in live))
        ended: list[str] = []
        if live:
            ended = await db.write(
                functools.partial(end_live_runs, tenant_id=tenant_id, user_id=user_id, now=utcnow())
            )
            await asyncio.sleep(settle_s)
        purged = await purge_owner(db, tenant_id=tenant_id, user_id=user_id)
        remaining = await db.read(functools.partial(live_runs, tenant_id=tenant_id, user_id=user_id))
    keys = 0
    if redis_url:
        keys = await _purge_redis(
            redis_url, owner_key(tenant_id, user_id), prefix=redis_key_prefix, cluster=redis_cluster
        )
    return PurgeOutcome(
        purged,
        ended=tuple(ended),
        remaining=tuple(run.run_id for run in remaining),
        redis_keys=keys,
    )


async def _purge_redis(url: str, bus_user: str, *, prefix: str, cluster: bool) -> int:
    client = RedisCluster.from_url(url) if cluster else Redis.from_url(url)
    try:
        return await delete_user_log(client, bus_user, key_prefix=prefix)
    finally:
        await client.aclose()


def describe(outcome: PurgeOutcome, *, user_id: str, tenant_id: str, redis: bool) -> list[str]:
    """The lines ``purge-user`` prints."""
    who = f"{user_id!r}" + (f" of tenant {tenant_id!r}" if tenant_id else "")
    if outcome.refused:
        return [
            f"{who} has {len(outcome.refused)} live run(s): {', '.join(outcome.refused)}",
            "nothing deleted; cancel them first, or pass --force to end them as cancelled and delete them",
        ]
    lines = []
    if outcome.ended:
        lines.append(f"ended {len(outcome.ended)} live run(s) as cancelled: {', '.join(outcome.ended)}")
    purged = outcome.purged
    lines.append(
        f"deleted {purged.runs} run(s), {purged.messages} thread message(s) and {purged.inputs}"
        f" input request(s) of {who}"
    )
    if redis:
        lines.append(f"deleted {outcome.redis_keys} Redis key(s) of its event log")
    if outcome.remaining:
        lines.append(
            f"{len(outcome.remaining)} run(s) started meanwhile and were left alone: {', '.join(outcome.remaining)}"
        )
    return lines
