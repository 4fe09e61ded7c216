"""The event fabric: one ``BridgeService.Fabric`` stream per (gateway, bridge replica).

Every subscription of this gateway — one per connected user, plus a short-lived
one per connection that replays after a cursor — is multiplexed over the
stream of the replica that serves its user (:func:`~runwire_common.replicas.rendezvous`
over the healthy replicas). The stream is opened when its first subscription
is added and stays open; subscription ids are chosen here, never reused on a
stream, so an item that arrives for a subscription already removed is simply
dropped.

Reading the stream never waits for a socket: handlers only queue frames
(:mod:`gateway.sink`). Requests go out through one async generator that gRPC
drains; credits that fall due while a request is in flight ride along in the
next one, across users, so credit costs one message per round trip at most.

When a stream breaks — or a new one stays silent past ``open_timeout_s``,
although the bridge answers every add at once — every subscription on it
hears ``UNAVAILABLE`` and re-adds itself from its cursor, on another replica
if one is healthy; the replica counts as down for a back-off that grows while
it keeps failing. The channels to the replicas have gRPC's own retries off:
the subscriptions are re-added by their owners, from their cursors.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Sequence
from typing import Protocol

import grpc

from gateway.stats import GatewayStats
from runwire.bridge.v1 import bridge_pb2, bridge_pb2_grpc
from runwire.common.v1 import context_pb2, event_pb2
from runwire_common.channels import open_channel
from runwire_common.owners import Owner
from runwire_common.replicas import rendezvous, resolve_replicas, static_replicas
from runwire_common.tls import TlsConfig

BRIDGE_SERVICE = bridge_pb2.DESCRIPTOR.services_by_name["BridgeService"].full_name

log = logging.getLogger("runwire.gateway.fabric")

MAX_CREDIT = 2**31 - 1  # FabricCredit.events is an int32
# The message of the UNAVAILABLE every subscription of a broken stream hears.
STREAM_LOST = "event stream lost"


class SubscriptionHandler(Protocol):
    """What a stream tells the owner of one subscription (all calls are synchronous)."""

    def on_events(self, events: Sequence[event_pb2.RunEvent]) -> None: ...

    def on_gap(self, gap: bridge_pb2.Gap) -> None: ...

    def on_replay_complete(self, done: bridge_pb2.ReplayComplete) -> None: ...

    def on_ended(self, code: grpc.StatusCode, message: str, cursor: str) -> None: ...


class FabricStream:
    """The one ``Fabric`` stream of this gateway to one bridge replica."""

    __slots__ = (
        "_credits",
        "_generation",
        "_handlers",
        "_next_id",
        "_ops",
        "_replicas",
        "_stub",
        "_task",
        "_wake",
        "address",
    )

    def __init__(self, address: str, channel: grpc.aio.Channel, replicas: BridgeReplicas) -> None:
        self.address = address
        self._stub = bridge_pb2_grpc.BridgeServiceStub(channel)
        self._replicas = replicas
        self._handlers: dict[int, SubscriptionHandler] = {}
        self._next_id = 0
        self._ops: deque[bridge_pb2.FabricRequest] = deque()
        self._credits: dict[int, int] = {}
        self._wake: asyncio.Future[None] | None = None
        self._task: asyncio.Task[None] | None = None
        # Which call the queued requests are for: a broken call's request generator may
        # stay suspended after its call ended, and must not take requests meant for the next.
        self._generation: object | None = None

    @property
    def subscriptions(self) -> int:
        return len(self._handlers)

    def add(
        self,
        handler: SubscriptionHandler,
        ctx: context_pb2.UserContext,
        *,
        after: str,
        max_batch: int,
        credit: int,
    ) -> int:
        """Open a subscription (replay after ``after``, then live); return its id on this stream."""
        self._next_id += 1
        sid = self._next_id
        self._handlers[sid] = handler
        self._send(
            bridge_pb2.FabricRequest(
                user_context=ctx,
                add=bridge_pb2.FabricAdd(
                    subscription_id=sid, after=after, max_batch=max_batch, initial_credit=credit
                ),
            )
        )
        if self._task is None:
            self._task = asyncio.create_task(self._run())
            self._replicas.stats.fabric_streams += 1
        return sid

    def remove(self, sid: int, owner: Owner) -> None:
        """Close a subscription; anything still in flight for it is dropped on arrival."""
        if self._handlers.pop(sid, None) is None:
            return
        self._credits.pop(sid, None)
        self._send(
            bridge_pb2.FabricRequest(
                user_context=context_pb2.UserContext(user_id=owner.user_id, tenant_id=owner.tenant_id),
                remove=bridge_pb2.FabricRemove(subscription_id=sid),
            )
        )

    def grant(self, sid: int, events: int) -> None:
        """Allow ``events`` more events of ``sid``; sent with the next request."""
        if sid in self._handlers and events > 0:
            self._credits[sid] = min(MAX_CREDIT, self._credits.get(sid, 0) + events)
            self._replicas.stats.credits_granted += events
            self._wakeup()

    def _send(self, request: bridge_pb2.FabricRequest) -> None:
        if self._task is None and not request.HasField("add"):
            return  # no stream: nothing to remove on it
        self._ops.append(request)
        self._wakeup()

    def _wakeup(self) -> None:
        wake = self._wake
        if wake is not None and not wake.done():
            wake.set_result(None)

    async def _requests(self, generation: object | None = None) -> AsyncIterator[bridge_pb2.FabricRequest]:
        """The requests of the call ``generation``; ends once that call is over."""
        while self._generation is generation:
            if not self._ops and not self._credits:
                # A generator of a broken call may be finalized late: it must only
                # ever forget its own future, never the next call's.
                wake = self._wake = asyncio.get_running_loop().create_future()
                try:
                    await wake
                finally:
                    if self._wake is wake:
                        self._wake = None
                continue
            request = self._ops.popleft() if self._ops else bridge_pb2.FabricRequest()
            if self._credits:
                credits, self._credits = self._credits, {}
                request.credits.extend(
                    bridge_pb2.FabricCredit(subscription_id=sid, events=n) for sid, n in credits.items()
                )
            yield request

    async def _run(self) -> None:
        generation = self._generation = object()
        call = self._stub.Fabric(self._requests(generation))
        cause = "ended"
        responses = aiter(call)
        try:
            # The stream exists for an add, which the bridge answers at once (a replay's
            # first item or its end): a stream that stays silent is broken, whatever gRPC
            # thinks of its connection, so opening it has a deadline like any call.
            async with asyncio.timeout(self._replicas.open_timeout_s):
                first = await anext(responses, None)
            if first is not None:
                self._replicas.mark_up(self.address)
                self._handle(first)
                async for response in responses:
                    self._handle(response)
        except TimeoutError:
            cause = "no response"
        except grpc.aio.AioRpcError as exc:
            cause = exc.code().name
        finally:
            call.cancel()
            self._task = None
            self._replicas.stats.fabric_streams -= 1
            if self._generation is generation:
                self._generation = None
            self._wakeup()  # a generator still waiting for this call's next request ends now
        self._broken(cause)

    def _handle(self, response: bridge_pb2.FabricResponse) -> None:
        for item in response.items:
            self._dispatch(item)

    def _dispatch(self, item: bridge_pb2.FabricItem) -> None:
        sid = item.subscription_id
        handler = self._handlers.get(sid)
        if handler is None:
            return  # removed while in flight
        kind = item.WhichOneof("item")
        try:
            if kind == "events":
                if item.events.events:
                    handler.on_events(item.events.events)
            elif kind == "replay_complete":
                handler.on_replay_complete(item.replay_complete)
            elif kind == "gap":
                handler.on_gap(item.gap)
            elif kind == "ended":
                del self._handlers[sid]
                self._credits.pop(sid, None)
                ended = item.ended
                handler.on_ended(_status(ended.code), ended.message, ended.cursor)
        except Exception:
            log.exception("fabric item failed", extra={"kind": kind})

    def _broken(self, cause: str) -> None:
        handlers, self._handlers = self._handlers, {}
        self._ops.clear()
        self._credits.clear()
        if handlers:
            log.warning(
                "fabric stream lost",
                extra={"replica": self.address, "cause": cause, "subscriptions": len(handlers)},
            )
        self._replicas.mark_down(self.address)
        for handler in handlers.values():
            try:
                handler.on_ended(grpc.StatusCode.UNAVAILABLE, STREAM_LOST, "")
            except Exception:
                log.exception("re-adding after a lost stream failed")

    async def close(self) -> None:
        task, self._task = self._task, None
        self._handlers.clear()
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


def _status(code: int) -> grpc.StatusCode:
    for status in grpc.StatusCode:
        if status.value[0] == code:
            return status
    return grpc.StatusCode.UNKNOWN


class BridgeReplicas:
    """The bridge's replicas as this gateway sees them: a channel and a stream per address.

    ``target`` is ``host:port``, ``ipv4:a,b`` or ``dns:///name:port``
    (:mod:`runwire_common.replicas`). A replica whose stream broke is *down*
    for a back-off (``cooldown_s`` doubling up to ``max_cooldown_s`` while it
    keeps failing); :meth:`choose` spreads users over the others, or over all
    of them when none is up. A ``dns:///`` target is resolved again after a
    replica went down.
    """

    def __init__(
        self,
        target: str,
        *,
        stats: GatewayStats,
        interceptors: Sequence[grpc.aio.ClientInterceptor] = (),
        tls: TlsConfig | None = None,
        cooldown_s: float = 2.0,
        max_cooldown_s: float = 30.0,
        open_timeout_s: float = 5.0,
    ) -> None:
        self._target = target
        self.open_timeout_s = open_timeout_s
        self.stats = stats
        self._interceptors = interceptors
        self._tls = tls
        self._cooldown_s = cooldown_s
        self._max_cooldown_s = max_cooldown_s
        fixed = static_replicas(target)
        self._addresses: tuple[str, ...] = fixed or ()
        self._dynamic = fixed is None
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._streams: dict[str, FabricStream] = {}
        # address → (monotonic time it counts as up again, consecutive failures)
        self._down: dict[str, tuple[float, int]] = {}
        self._resolving: asyncio.Task[None] | None = None
        for address in self._addresses:
            self._stream(address)

    @property
    def addresses(self) -> tuple[str, ...]:
        return self._addresses

    async def resolve(self) -> None:
        """Look the replicas of a ``dns:///`` target up (again); no-op for fixed targets."""
        if not self._dynamic:
            return
        try:
            addresses = await resolve_replicas(self._target)
        except (OSError, ValueError) as exc:
            log.warning("bridge replicas not resolved", extra={"target": self._target, "error": str(exc)})
            return
        if addresses:
            self._addresses = addresses

    def choose(self, owner_key: str) -> FabricStream:
        """The stream of the replica that serves the owner of ``owner_key`` (``runwire_common.owners``) now."""
        if not self._addresses:
            raise RuntimeError("no bridge replica known")
        now = time.monotonic()
        healthy = [a for a in self._addresses if self._down.get(a, (0.0, 0))[0] <= now]
        return self._stream(rendezvous(owner_key, healthy or self._addresses))

    def mark_down(self, address: str) -> None:
        _, failures = self._down.get(address, (0.0, 0))
        cooldown = min(self._cooldown_s * 2**failures, self._max_cooldown_s)
        self._down[address] = (time.monotonic() + cooldown, failures + 1)
        if self._dynamic and self._resolving is None:
            self._resolving = asyncio.create_task(self._refresh())

    def mark_up(self, address: str) -> None:
        if self._down:
            self._down.pop(address, None)

    async def _refresh(self) -> None:
        try:
            await self.resolve()
        finally:
            self._resolving = None

    def _stream(self, address: str) -> FabricStream:
        stream = self._streams.get(address)
        if stream is None:
            # No gRPC retries: the stream's owner re-adds every subscription itself, from its cursor.
            channel = open_channel(
                address,
                service_names=(BRIDGE_SERVICE,),
                interceptors=self._interceptors,
                retries=False,
                tls=self._tls,
            )
            self._channels[address] = channel
            stream = self._streams[address] = FabricStream(address, channel, self)
        return stream

    def streams(self) -> list[FabricStream]:
        return list(self._streams.values())

    async def close(self) -> None:
        """Cancel every stream, then close the channels (reverse order of opening)."""
        if self._resolving is not None:
            self._resolving.cancel()
        for stream in reversed(list(self._streams.values())):
            await stream.close()
        for channel in reversed(list(self._channels.values())):
            await channel.close()
        self._streams.clear()
        self._channels.clear()
