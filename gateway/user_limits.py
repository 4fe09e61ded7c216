"""Per-user edge limits that hold across gateway replicas: connections, frames, ``run.start``.

With ``redis_url`` set, every replica counts in the same Redis; without it each
gateway process counts on its own (enough for one replica, documented as per
process otherwise). A "user" here is an owner
(:func:`runwire_common.owners.owner_key`: the same ``sub`` in two tenants is two
users). Keys, all on the user's Redis Cluster slot
(:func:`runwire_common.redis_keys.user_key_base`, so ids with braces are safe):

- ``<prefix>:{<user>}:gw:conns`` — sorted set, one member per open connection
  (``<gateway instance>.<n>``) scored by when its lease ends (Redis time, ms).
  The gateway that holds the connection refreshes the lease every third of
  ``connection_lease_s``; a gateway that dies without releasing stops
  refreshing, so its connections stop counting one lease later instead of
  leaking forever. Admission drops expired members, then counts.
- ``<prefix>:{<user>}:gw:msgs`` and ``…:gw:starts`` — sorted sets of the
  accepted frames / ``run.start`` requests of the last window (score = Redis
  time in ms): an exact sliding window, as the per-connection limiter. A
  refused request adds nothing, so a client recovers as soon as its oldest
  accepted request leaves the window.

Each check is one Lua script on one key (atomic, one round trip). When Redis
does not answer (``redis_timeout_s``), the gateway falls back to its own
per-process counts for ``redis_retry_s`` before it tries Redis again: it logs
the outage once, counts every fallback (``limits_redis_failures``) and shows
``limits_degraded`` = 1 meanwhile, rather than refusing everyone. Its own
connections are always counted locally too, so their leases are written back
once Redis answers again.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import NamedTuple, TypeVar

from redis.exceptions import NoScriptError, RedisError

from gateway.limits import SlidingWindowLimiter
from gateway.settings import GatewaySettings
from gateway.stats import GatewayStats
from runwire_common.ids import new_id
from runwire_common.redis_clients import RedisClient, connect, connect_cluster
from runwire_common.redis_keys import user_key_base

log = logging.getLogger("runwire.gateway.limits")

T = TypeVar("T")

_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

# KEYS[1] = sorted set of accepted requests; ARGV = limit, window (ms), a unique member.
# Returns 0 when accepted, else the milliseconds until the oldest leaves the window.
RATE_SCRIPT = (
    _NOW
    + """
local window = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then
  local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  return math.max(1, tonumber(oldest[2]) + window - now)
end
redis.call('ZADD', KEYS[1], now, ARGV[3])
redis.call('PEXPIRE', KEYS[1], window)
return 0
"""
)

# KEYS[1] = sorted set of leases; ARGV = limit, lease (ms), the new lease. Returns 1 when admitted.
ACQUIRE_SCRIPT = (
    _NOW
    + """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then
  return 0
end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[3])
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]))
return 1
"""
)

# KEYS[1] = sorted set of leases; ARGV = lease (ms), then this gateway's leases of the user.
# Re-adds them when missing (Redis restarted, or they were taken while Redis was unreachable).
REFRESH_SCRIPT = (
    _NOW
    + """
local lease = tonumber(ARGV[1])
for i = 2, #ARGV do
  redis.call('ZADD', KEYS[1], now + lease, ARGV[i])
end
redis.call('PEXPIRE', KEYS[1], lease)
return 0
"""
)


class LimitKeys(NamedTuple):
    connections: str
    messages: str
    run_starts: str


def limit_keys(prefix: str, user: str) -> LimitKeys:
    base = user_key_base(prefix, user)
    return LimitKeys(f"{base}:gw:conns", f"{base}:gw:msgs", f"{base}:gw:starts")


def connect_redis(settings: GatewaySettings) -> RedisClient:
    """The gateway's one Redis client, built like the bridge's (:mod:`runwire_common.redis_clients`)."""
    assert settings.redis_url is not None
    build = connect_cluster if settings.redis_cluster else connect
    return build(
        settings.redis_url.get_secret_value(),
        client_name=f"runwire-gateway.{settings.redis_key_prefix}.{os.getpid()}",
        timeout_s=settings.redis_timeout_s,
        max_connections=settings.redis_max_connections,
    )


class FrameGate:
    """One connection's admission of client frames: its own window, then its user's.

    Checked before a frame is parsed. ``refused`` counts the frames refused in a
    row; past ``rate_limit_close_after`` the client is flooding.
    """

    __slots__ = ("_limiter", "_limits", "_settings", "_user", "refused")

    def __init__(self, settings: GatewaySettings, limits: UserLimits, user: str) -> None:
        self._settings = settings
        self._limits = limits
        self._user = user
        self._limiter = SlidingWindowLimiter(settings.rate_limit_messages, settings.rate_limit_window_s)
        self.refused = 0

    async def admit(self) -> str | None:
        """``None`` when the next frame may be parsed and served, else why not (the reply's message)."""
        settings = self._settings
        limiter = self._limiter
        if not limiter.allow():
            why = (
                f"more than {settings.rate_limit_messages} messages in {settings.rate_limit_window_s:g} s "
                f"on this connection; frame not processed, retry in {limiter.wait_s():.1f} s"
            )
        else:
            wait_s = await self._limits.allow_message(self._user)
            if not wait_s:
                self.refused = 0
                return None
            limiter.refund()  # the user's limit refused it: it used none of the connection's
            why = (
                f"more than {settings.effective_user_rate_limit} messages in "
                f"{settings.rate_limit_window_s:g} s for this user; frame not processed, retry in {wait_s:.1f} s"
            )
        self.refused += 1
        return why

    @property
    def flooding(self) -> bool:
        return self.refused >= self._settings.rate_limit_close_after


class UserLimits:
    """The per-user limits of one gateway; shared (in Redis) with its peers when configured."""

    def __init__(
        self,
        settings: GatewaySettings,
        *,
        stats: GatewayStats,
        redis: RedisClient | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._settings = settings
        self._stats = stats
        self._redis = redis
        self._clock = clock
        self._prefix = settings.redis_key_prefix
        self._lease_ms = int(settings.connection_lease_s * 1000)
        self._instance = new_id("gw")
        self._serial = itertools.count(1)
        self._leases: dict[str, set[str]] = {}
        self._messages: dict[str, SlidingWindowLimiter] = {}
        self._run_starts: dict[str, SlidingWindowLimiter] = {}
        self._releases: set[asyncio.Task[None]] = set()
        self._down_until = 0.0
        if redis is not None:
            self._rate = redis.register_script(RATE_SCRIPT)
            self._acquire = redis.register_script(ACQUIRE_SCRIPT)
            self._refresh = redis.register_script(REFRESH_SCRIPT)

    @property
    def shared(self) -> bool:
        """Whether the limits are kept in Redis (whether or not it answers right now)."""
        return self._redis is not None

    @property
    def connection_limit(self) -> int:
        return self._settings.max_connections_per_user

    # -- connections -----------------------------------------------------------

    async def acquire_connection(self, user: str) -> str | None:
        """A lease for one more connection of ``user``; ``None`` when the user is at the limit."""
        limit = self.connection_limit
        lease = f"{self._instance}.{next(self._serial)}"
        key = limit_keys(self._prefix, user).connections
        admitted = await self._via_redis(
            lambda: self._acquire(keys=[key], args=[limit, self._lease_ms, lease])
        )
        if admitted is None:
            admitted = self.count(user) < limit
        if not admitted:
            return None
        self._leases.setdefault(user, set()).add(lease)
        return lease

    def release_connection(self, user: str, lease: str) -> None:
        leases = self._leases.get(user)
        if leases is None or lease not in leases:
            return
        leases.discard(lease)
        if not leases:
            del self._leases[user]
        if self._redis is not None:
            redis = self._redis
            key = limit_keys(self._prefix, user).connections
            task = asyncio.create_task(self._release(lambda: redis.zrem(key, lease)))
            self._releases.add(task)
            task.add_done_callback(self._releases.discard)

    async def _release(self, call: Callable[[], Awaitable[object]]) -> None:
        # Unreachable Redis: the lease is not refreshed any more and expires on its own.
        await self._via_redis(call)

    def count(self, user: str) -> int:
        """Connections of ``user`` on this gateway."""
        return len(self._leases.get(user, ()))

    # -- rates -----------------------------------------------------------------

    async def allow_message(self, user: str) -> float:
        """0 when a frame of ``user`` may be served, else the seconds until one may."""
        settings = self._settings
        return await self._allow(
            user,
            limit=settings.effective_user_rate_limit,
            window_s=settings.rate_limit_window_s,
            key=limit_keys(self._prefix, user).messages,
            local=self._messages,
        )

    async def allow_run_start(self, user: str) -> float:
        """0 when ``user`` may start a run now, else the seconds until they may."""
        settings = self._settings
        return await self._allow(
            user,
            limit=settings.run_start_rate_limit,
            window_s=settings.run_start_rate_window_s,
            key=limit_keys(self._prefix, user).run_starts,
            local=self._run_starts,
        )

    async def _allow(
        self, user: str, *, limit: int, window_s: float, key: str, local: dict[str, SlidingWindowLimiter]
    ) -> float:
        member = f"{self._instance}.{next(self._serial)}"
        wait_ms = await self._via_redis(
            lambda: self._rate(keys=[key], args=[limit, int(window_s * 1000), member])
        )
        if wait_ms is not None:
            return int(wait_ms) / 1000
        limiter = local.get(user)
        if limiter is None:
            limiter = local[user] = SlidingWindowLimiter(limit, window_s, clock=self._clock)
        return 0.0 if limiter.allow() else limiter.wait_s()

    # -- Redis, and falling back without it -----------------------------------

    async def _via_redis(self, call: Callable[[], Awaitable[T]]) -> T | None:
        """``call``'s answer, or ``None``: no Redis, or it failed (then per process for a while)."""
        if self._redis is None or self._clock() < self._down_until:
            if self._redis is not None:
                self._stats.limits_redis_failures += 1
            return None
        try:
            answer = await call()
        except (RedisError, OSError, TimeoutError) as exc:
            self._redis_failed(exc)
            return None
        if self._stats.limits_degraded:
            self._stats.limits_degraded = 0
            log.info("Redis answers again: per-user limits are shared across gateways again")
        return answer

    def _redis_failed(self, exc: BaseException) -> None:
        self._stats.limits_redis_failures += 1
        self._down_until = self._clock() + self._settings.redis_retry_s
        if not self._stats.limits_degraded:
            self._stats.limits_degraded = 1
            log.warning(
                "Redis unreachable: per-user limits are per process until it answers again",
                extra={"error": type(exc).__name__},
            )

    # -- upkeep ------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[UserLimits]:
        """Refresh this gateway's leases and forget idle windows until the block exits."""
        task = asyncio.create_task(self._upkeep())
        try:
            yield self
        finally:
            task.cancel()
            await asyncio.gather(task, *self._releases, return_exceptions=True)

    async def _upkeep(self) -> None:
        period = self._settings.connection_lease_s / 3
        while True:
            await asyncio.sleep(period)
            self.forget_idle()
            try:
                await self.refresh_leases()
            except Exception:
                log.exception("refreshing connection leases failed")

    def forget_idle(self) -> None:
        """Drop the per-process windows that hold nothing any more."""
        for windows in (self._messages, self._run_starts):
            for user in [user for user, limiter in windows.items() if limiter.idle()]:
                del windows[user]

    async def refresh_leases(self) -> None:
        """Extend (or write back) the lease of every connection this gateway holds, in one round trip."""
        redis = self._redis
        if redis is None or not self._leases:
            return
        batch = [
            (limit_keys(self._prefix, user).connections, sorted(leases))
            for user, leases in self._leases.items()
        ]

        async def refresh() -> None:
            for attempt in range(2):
                pipe = redis.pipeline(transaction=False)
                for key, leases in batch:
                    pipe.evalsha(self._refresh.sha, 1, key, self._lease_ms, *leases)
                results = await pipe.execute(raise_on_error=False)
                failures = [r for r in results if isinstance(r, Exception)]
                if attempt == 0 and any(isinstance(r, NoScriptError) for r in failures):
                    await redis.script_load(REFRESH_SCRIPT)  # Redis restarted: load it, once
                    continue
                if failures:
                    raise failures[0]
                return

        await self._via_redis(refresh)
