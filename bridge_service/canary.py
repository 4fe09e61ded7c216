"""Delivery-aware readiness: canary events through the bridge's own Redis subscriptions.

A bridge whose process is fine but whose Pub/Sub connection no longer
delivers (open, yet silent: Centrifugo's issue #1189) would look healthy
while every live event for its subscribers is lost. So each replica, every
``canary_interval_s``, publishes one canary event per shared Pub/Sub
connection and waits for it to come back on that connection, within
``canary_timeout_s``. A round with any canary missing turns the bridge's
service (``runwire.bridge.v1.BridgeService``, what the readiness probe asks)
``NOT_SERVING``; the next complete round turns it ``SERVING`` again. The
process's overall health (``""``, the liveness probe) is left alone: a stuck
Redis path is a reason to send no traffic to the replica, not to restart it.

Canaries go to reserved users, :data:`CANARY_USER_PREFIX` + a per-process
token + a number: the prefix starts with a control character, which every
id check refuses (:func:`runwire_common.context.id_problem`: the gateway for
a token's ``sub``, every servicer for a ``UserContext``), so no real user can
have, subscribe to or publish as one of these ids. The canaries go straight to
the bus (no servicer, so no limit, metric of user traffic or validation
applies), each user's log keeps only the newest canary (capacity 1), the
fencing state of its one run, and every key expires soon after the replica
is gone (see :meth:`bridge_service.redis_bus.RedisEventBus.probe_delivery`).

The memory backend has no connection that could stall: no canary runs there.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import zlib
from collections.abc import Callable
from typing import Protocol

from grpc_health.v1 import health, health_pb2

from bridge_service.event_ids import EventId
from bridge_service.metrics import BridgeMetrics

log = logging.getLogger("runwire.bridge.canary")

# A control character first: refused by every id check, so no token or context can carry it.
CANARY_USER_PREFIX = "\x7frunwire-canary."
CANARY_RUN_ID = "run_canary"
CANARY_EVENT_TYPE = "canary"


def is_canary_user(user_id: str) -> bool:
    return user_id.startswith(CANARY_USER_PREFIX)


def canary_users(token: str, shards: int, channel_of: Callable[[str], bytes]) -> list[str]:
    """One reserved user per shard index: the first ``<prefix><token>.<k>`` whose channel lands there.

    A channel's shard is ``crc32(channel) % shards`` (see
    :mod:`bridge_service.redis_fanout`), so the i-th user's live channel is
    carried by the i-th shared Pub/Sub connection.
    """
    found: dict[int, str] = {}
    k = 0
    while len(found) < shards:
        user = f"{CANARY_USER_PREFIX}{token}.{k}"
        found.setdefault(zlib.crc32(channel_of(user)) % shards, user)
        k += 1
    return [found[index] for index in range(shards)]


class CanaryFailed(Exception):
    """A canary did not come back through its subscription in time."""


class CanaryListener:
    """The fan-out listener of one canary channel: the newest event id heard on it."""

    __slots__ = ("changed", "channel", "newest", "registered", "user_id")

    def __init__(self, user_id: str, channel: bytes) -> None:
        self.user_id = user_id
        self.channel = channel
        self.registered = False
        self.newest = EventId(0, 0)
        self.changed = asyncio.Event()

    def heard(self, newest: EventId) -> None:
        if newest > self.newest:
            self.newest = newest
            self.changed.set()

    def lost(self, reason: str) -> None:
        """The shard's connection is gone (the fan-out forgot this listener)."""
        self.registered = False
        self.changed.set()

    async def wait_for(self, target: EventId) -> None:
        """Return once an id at or above ``target`` arrived on the channel."""
        while self.newest < target:
            if not self.registered:
                raise CanaryFailed("the canary's subscription was lost")
            self.changed.clear()
            await self.changed.wait()


class DeliveryProbe(Protocol):
    async def probe_delivery(self, timeout_s: float) -> float:
        """Send canaries through every live-delivery path; the slowest one's latency in seconds.

        Raises :class:`CanaryFailed` when one did not arrive within ``timeout_s``.
        """
        ...


class DeliveryCanary:
    """Runs a :class:`DeliveryProbe` every ``interval_s`` and reflects it in readiness and metrics."""

    def __init__(
        self,
        probe: DeliveryProbe,
        *,
        health_servicer: health.aio.HealthServicer,
        service: str,
        metrics: BridgeMetrics,
        interval_s: float,
        timeout_s: float,
    ) -> None:
        self._probe = probe
        self._health = health_servicer
        self._service = service
        self._metrics = metrics
        self._interval_s = interval_s
        self._timeout_s = timeout_s
        self._ready = True
        self._task: asyncio.Task[None] | None = None

    @property
    def ready(self) -> bool:
        return self._ready

    def start(self) -> None:
        self._metrics.canary_ready.set(1)
        self._task = asyncio.create_task(self._run(), name="bridge-delivery-canary")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def check(self) -> bool:
        """One round: send the canaries, wait for them, update readiness; whether all arrived."""
        try:
            latency = await self._probe.probe_delivery(self._timeout_s)
        except CanaryFailed as exc:
            self._metrics.canary_failures.inc()
            await self._set_ready(False, reason=str(exc))
            return False
        self._metrics.canary_latency.set(latency)
        await self._set_ready(True)
        return True

    async def _run(self) -> None:
        while True:
            await self.check()
            await asyncio.sleep(self._interval_s)

    async def _set_ready(self, ready: bool, *, reason: str = "") -> None:
        self._metrics.canary_ready.set(1 if ready else 0)
        if ready == self._ready:
            return
        self._ready = ready
        if ready:
            log.info("canary events arrive again; ready", extra={"service": self._service})
        else:
            log.warning(
                "canary events are not delivered; not ready",
                extra={"service": self._service, "reason": reason},
            )
        status = (
            health_pb2.HealthCheckResponse.SERVING if ready else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        await self._health.set(self._service, status)
