"""``BridgeService.Fabric``: many users' subscriptions multiplexed over one gateway stream.

One :class:`FabricStream` per call. The gateway's requests are applied in
order by one reader; each live subscription is one small task (its *pump*)
that pulls items from its own ``bus.subscribe`` generator and queues them,
already serialized, for the stream's one writer.

Requests:

* ``add`` — the context is validated like Subscribe's; a refused add is
  answered with ``ended`` for its ``subscription_id`` (``INVALID_ARGUMENT``
  for bad ids, a negative ``max_batch``/``initial_credit`` or a bad cursor;
  ``UNAUTHENTICATED`` for a forged, expired or unattested context;
  ``RESOURCE_EXHAUSTED`` beyond ``max_subscriptions``; ``UNAVAILABLE`` while
  draining). An add whose ``subscription_id`` is already live on the stream
  is refused with ``ended{INVALID_ARGUMENT}`` naming the duplicate, and the
  live subscription is left exactly as it was: that ``ended`` answers the
  refused add, not the live one (which still needs its ``remove``).
* ``remove`` — ``user_context``'s ``(tenant_id, user_id)`` must be the subscription's owner;
  otherwise the request is ignored (logged, and counted in
  ``runwire_bridge_fabric_requests_ignored``), because answering ``ended``
  would tell the gateway that a subscription which is still live is over.
  An unknown id (the subscription already ended) is ignored quietly. A
  removed subscription's bus generator is closed at once (its pump is
  cancelled, and the generator unregisters as it unwinds), and items of it
  still waiting for the writer are dropped, so nothing of it is sent after
  the remove — not even under a reused ``subscription_id``.
* ``credits`` — applied after the message's ``op``; credit for an unknown id
  is ignored, non-positive credit is ignored.

Every ``ended`` means the bridge has forgotten the subscription (or refused
the add) and carries the cursor to resume from: the last event sent, the
``resume_after`` of its replay, or the add's own ``after`` — except
``INVALID_ARGUMENT``, which carries none, since resuming would fail the same
way. Its ``code`` is what Subscribe would have ended with.

Credit: a subscription may be sent ``initial_credit`` events (default
:class:`FabricOptions`) plus what the gateway grants later. Without
credit its pump stops pulling from the bus, so its bounded bus queue fills
and the bus cuts it off (``SubscriberOverflow``); other subscriptions are not
affected. The bus reports that ending to whoever pulls next, so the pump
learns it, and answers ``ended{RESOURCE_EXHAUSTED, cursor}``, once credit
arrives again; until then the cut-off subscription holds no events. When a
pulled batch is larger than the remaining credit, the rest waits in the pump
for credit, and a drain meanwhile reports the last event actually sent as the
cursor.

Memory: an idle subscription is a small object, its pump task and coroutine,
and the bus's generator (about 2 KB at the bridge besides the bus's own
per-user state; see ``tests/bridge_service/test_fabric_memory.py``). A task
rather than a hand-driven generator: backends may use ``asyncio.timeout``,
which needs a current task.

Writing: one writer per stream sends at once when idle and puts everything
that became ready while the previous write was in flight into the next
``FabricResponse``, up to ``max_response_bytes`` (an event batch larger than
that is split; one event always fits). No timer. Events are framed around
their stored bytes (never parsed). When the gateway stops reading the whole
stream and ``max_queued_bytes`` wait for the writer, the pumps stop pulling
and the reader stops reading until the writer catches up (so the gateway must
read and write the stream concurrently, as gRPC clients do).

End of the stream: when the gateway half-closes, every subscription is
removed and the stream ends with OK. On draining (the servicer's drain, or a
subscription ended by the bus's drain) every subscription ends with
``UNAVAILABLE`` and its cursor, new adds are refused, and once those items are
written the stream ends with ``UNAVAILABLE``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass

import grpc

from bridge_service import wire
from bridge_service.bus import (
    SUBSCRIPTION_ENDINGS,
    BusDraining,
    BusItem,
    EventBus,
    Events,
    Gap,
)
from bridge_service.event_ids import EventId
from bridge_service.metrics import BridgeMetrics
from runwire.bridge.v1 import bridge_pb2
from runwire.common.v1 import context_pb2
from runwire_common.attestation import ContextAttestor
from runwire_common.context import validate_context
from runwire_common.errors import InvalidArgument, ResourceExhausted, RunwireError, Unavailable
from runwire_common.owners import key_of
from runwire_common.servicer import read_failure, status_of

log = logging.getLogger("runwire.bridge.fabric")

MAX_CREDIT = 2**31 - 1  # a subscription's outstanding credit saturates here


@dataclass(frozen=True, slots=True)
class FabricOptions:
    """The limits of every Fabric stream of a bridge.

    ``initial_credit``: events a subscription may be sent before the gateway
    grants more, when its add leaves ``initial_credit`` at 0.
    ``max_response_bytes``: the size a ``FabricResponse`` is cut at (keep it
    well under the gRPC message limit). ``max_subscriptions``: live
    subscriptions per stream. ``max_queued_bytes``: serialized items waiting
    for the writer before the stream stops pulling.
    """

    initial_credit: int = 512
    max_response_bytes: int = 1024 * 1024
    max_subscriptions: int = 100_000
    max_queued_bytes: int = 32 * 1024 * 1024

    def __post_init__(self) -> None:
        if (
            min(self.initial_credit, self.max_response_bytes, self.max_subscriptions, self.max_queued_bytes)
            < 1
        ):
            raise ValueError("every FabricOptions limit must be at least 1")


class _Subscription:
    """One live subscription of a stream: kept small, a gateway holds one per connected user."""

    __slots__ = ("credit", "cursor", "ended", "id", "owner", "removed", "stream", "task", "waiter")

    def __init__(
        self, stream: FabricStream, subscription_id: int, owner: str, credit: int, cursor: str
    ) -> None:
        self.stream = stream
        self.id = subscription_id
        self.owner = owner  # runwire_common.owners.owner_key of the subscriber
        self.credit = credit
        # Where the gateway resumes: the last event sent, or the requested cursor / resume_after.
        self.cursor: EventId | str = cursor
        self.removed = False  # the gateway removed it (or the stream is closing): send nothing more
        self.ended = False  # its ended item is queued
        self.waiter: asyncio.Future[None] | None = None
        self.task: asyncio.Task[None] | None = None

    def grant(self, events: int) -> None:
        self.credit = min(self.credit + events, MAX_CREDIT)
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def __call__(self, task: asyncio.Task[None]) -> None:
        # The pump's done callback (the subscription itself, so no closure per subscription). A
        # callback rather than the pump's ``finally``: a task cancelled before it first ran never
        # enters its coroutine.
        self.stream._finished(self, task)


class FabricStream:
    """The state of one ``Fabric`` call; :meth:`serve` runs it and yields serialized responses."""

    def __init__(
        self,
        bus: EventBus,
        *,
        attestor: ContextAttestor,
        metrics: BridgeMetrics,
        draining: asyncio.Event,
        max_batch: int = 256,
        options: FabricOptions = FabricOptions(),
    ) -> None:
        self._bus = bus
        self._attestor = attestor
        self._metrics = metrics
        self._server_draining = draining
        self._max_batch = max(1, max_batch)
        self._initial_credit = options.initial_credit
        self._max_response_bytes = options.max_response_bytes
        self._max_subscriptions = options.max_subscriptions
        self._max_queued_bytes = options.max_queued_bytes
        self._subscriptions: dict[int, _Subscription] = {}
        # Framed FabricResponse.items entries waiting for the writer, with their
        # subscription (None: the answer to a refused add, always sent).
        self._ready: list[tuple[_Subscription | None, bytes]] = []
        self._queued_bytes = 0
        self._wake: asyncio.Future[None] | None = None
        # Resolved by the writer once the queue is below max_queued_bytes again; shared by
        # every pump (and the reader) waiting for room.
        self._room: asyncio.Future[None] | None = None
        self._reading = True
        self._draining = False
        self._read_error: BaseException | None = None

    async def serve(self, requests: AsyncIterator[bridge_pb2.FabricRequest]) -> AsyncGenerator[bytes, None]:
        """Apply ``requests``; yield each ``FabricResponse`` as bytes until the stream is over."""
        self._metrics.fabric_streams.inc()
        reader = asyncio.create_task(self._read(requests))
        watcher = asyncio.create_task(self._drain_with_server())
        try:
            while True:
                if self._ready:
                    response = self._take_response()
                    if response:
                        yield response
                    continue
                if self._subscriptions or (self._reading and not self._draining):
                    await self._sleep()
                    continue
                break
            if self._read_error is not None:
                raise self._read_error
            if self._draining:
                raise Unavailable("bridge is draining; resume every subscription on another replica")
        finally:
            self._metrics.fabric_streams.dec()
            reader.cancel()
            watcher.cancel()
            tasks = [reader, watcher]
            for subscription in self._subscriptions.values():
                subscription.removed = True
                if subscription.task is not None:
                    subscription.task.cancel()
                    tasks.append(subscription.task)
            await asyncio.gather(*tasks, return_exceptions=True)

    # The writer.

    async def _sleep(self) -> None:
        waiter = self._wake = asyncio.get_running_loop().create_future()
        try:
            await waiter
        finally:
            self._wake = None

    def _wakeup(self) -> None:
        waiter = self._wake
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _queue(self, subscription: _Subscription | None, entry: bytes) -> None:
        self._ready.append((subscription, entry))
        self._queued_bytes += len(entry)
        self._wakeup()

    async def _wait_for_room(self) -> None:
        """Wait while the writer is ``max_queued_bytes`` behind (the gateway is not reading)."""
        while self._queued_bytes > self._max_queued_bytes:
            if self._room is None:
                self._room = asyncio.get_running_loop().create_future()
            await self._room

    def _take_response(self) -> bytes:
        """One FabricResponse of the ready items (oldest first, within the size cap)."""
        ready = self._ready
        limit = self._max_response_bytes
        parts: list[bytes] = []
        size = 0
        taken = 0
        released = 0
        for subscription, entry in ready:
            if size and size + len(entry) > limit:
                break
            taken += 1
            released += len(entry)
            if subscription is not None and subscription.removed:
                continue
            parts.append(entry)
            size += len(entry)
        del ready[:taken]
        self._queued_bytes -= released
        room = self._room
        if room is not None and self._queued_bytes <= self._max_queued_bytes:
            self._room = None
            room.set_result(None)
        return b"".join(parts)

    # The reader.

    async def _read(self, requests: AsyncIterator[bridge_pb2.FabricRequest]) -> None:
        try:
            async for request in requests:
                self._apply(request)
                if self._queued_bytes > self._max_queued_bytes:
                    await self._wait_for_room()  # answers (refused adds) must not pile up unread
        except Exception as exc:  # noqa: BLE001 - reported when the stream ends
            self._read_error = read_failure(exc, message="FabricRequest")
        finally:
            self._reading = False
            # A half-closed stream is over: nobody will remove these subscriptions.
            for subscription in tuple(self._subscriptions.values()):
                self._stop(subscription)
            self._wakeup()

    def _apply(self, request: bridge_pb2.FabricRequest) -> None:
        op = request.WhichOneof("op")
        if op == "add":
            self._add(request.user_context, request.add)
        elif op == "remove":
            self._remove(request.user_context, request.remove.subscription_id)
        for credit in request.credits:
            subscription = self._subscriptions.get(credit.subscription_id)
            if subscription is not None and credit.events > 0:
                subscription.grant(credit.events)

    def _add(self, ctx: context_pb2.UserContext, add: bridge_pb2.FabricAdd) -> None:
        subscription_id = add.subscription_id
        try:
            if subscription_id in self._subscriptions:
                raise InvalidArgument(
                    f"subscription_id {subscription_id} is already live on this stream; this add is"
                    " refused and the live subscription goes on"
                )
            if self._draining:
                raise Unavailable("bridge is draining; add the subscription on another replica")
            if add.max_batch < 0 or add.initial_credit < 0:
                raise InvalidArgument("add.max_batch and add.initial_credit must not be negative")
            if len(self._subscriptions) >= self._max_subscriptions:
                raise ResourceExhausted(f"at most {self._max_subscriptions} subscriptions per Fabric stream")
            validate_context(ctx, attestor=self._attestor)
        except RunwireError as exc:
            self._refuse(subscription_id, exc, cursor=add.after)
            return
        max_batch = min(add.max_batch, self._max_batch) if add.max_batch else self._max_batch
        credit = add.initial_credit or self._initial_credit
        subscription = _Subscription(self, subscription_id, key_of(ctx), credit, add.after)
        self._subscriptions[subscription_id] = subscription
        items = self._bus.subscribe(subscription.owner, after=add.after, max_batch=max_batch)
        task = subscription.task = asyncio.create_task(self._pump(subscription, items))
        task.add_done_callback(subscription)
        self._metrics.fabric_subscriptions.inc()
        self._metrics.fabric_subscriptions_added.inc()

    def _remove(self, ctx: context_pb2.UserContext, subscription_id: int) -> None:
        subscription = self._subscriptions.get(subscription_id)
        if subscription is None:
            return  # it already ended (its ended item may be on its way)
        if key_of(ctx) != subscription.owner:
            self._metrics.fabric_requests_ignored.labels(reason="remove_not_owner").inc()
            log.warning(
                "fabric remove by another user ignored",
                extra={"subscription_id": subscription_id, "user_id": ctx.user_id[:100]},
            )
            return
        self._metrics.fabric_subscriptions_removed.inc()
        self._stop(subscription)

    def _stop(self, subscription: _Subscription) -> None:
        """Forget ``subscription`` now and close its bus subscription; nothing more of it is sent."""
        subscription.removed = True
        if self._subscriptions.get(subscription.id) is subscription:
            del self._subscriptions[subscription.id]
        if subscription.task is not None:
            subscription.task.cancel()

    def _refuse(self, subscription_id: int, exc: BaseException, *, cursor: str) -> None:
        code, message = status_of(exc)
        self._metrics.fabric_subscriptions_ended.labels(code=code.name.lower()).inc()
        self._queue(None, _ended(subscription_id, code, message, cursor))

    # Draining.

    async def _drain_with_server(self) -> None:
        await self._server_draining.wait()
        self._drain()

    def _drain(self) -> None:
        """End every subscription with UNAVAILABLE and its cursor; the stream ends after them."""
        if self._draining:
            return
        self._draining = True
        for subscription in self._subscriptions.values():
            if subscription.task is not None:
                subscription.task.cancel()
        self._wakeup()

    # One subscription.

    async def _pump(self, subscription: _Subscription, items: AsyncGenerator[BusItem, None]) -> None:
        try:
            try:
                while True:
                    if subscription.credit <= 0:
                        await self._wait_for_credit(subscription)
                    if self._queued_bytes > self._max_queued_bytes:
                        await self._wait_for_room()
                    item = await anext(items)
                    if isinstance(item, Events):
                        await self._forward(subscription, item)
                    elif isinstance(item, Gap):
                        gap = bridge_pb2.Gap(
                            requested_after=item.requested_after, oldest_event_id=item.oldest_event_id
                        )
                        self._queue(
                            subscription,
                            wire.fabric_item(subscription.id, wire.FABRIC_GAP, gap.SerializeToString()),
                        )
                    else:
                        subscription.cursor = item.resume_after
                        done = bridge_pb2.ReplayComplete(
                            replayed=item.replayed, resume_after=item.resume_after
                        )
                        self._queue(
                            subscription,
                            wire.fabric_item(
                                subscription.id, wire.FABRIC_REPLAY_COMPLETE, done.SerializeToString()
                            ),
                        )
            finally:
                # What contextlib.aclosing does, without an object per subscription: the bus
                # unregisters the subscription now, also when the pump is cancelled (remove).
                await items.aclose()
        except SUBSCRIPTION_ENDINGS as exc:
            if isinstance(exc, BusDraining):
                self._drain()  # the bus is draining: so is every other subscription of the stream
            # The pump pulls only once everything pulled before was sent, so the bus's cursor
            # (the last event it yielded, or where it started) is where the gateway resumes.
            self._end(subscription, exc, cursor=exc.cursor)
        except Exception as exc:  # noqa: BLE001 - a bad cursor, a failing backend: this subscription only
            self._end(subscription, exc, cursor=str(subscription.cursor))

    def _finished(self, subscription: _Subscription, task: asyncio.Task[None]) -> None:
        """The pump of ``subscription`` is over: forget it (ending it if the drain cancelled it)."""
        if task.cancelled() and self._draining and not subscription.removed and not subscription.ended:
            cursor = str(subscription.cursor)  # the last event sent, events held for credit aside
            self._end(subscription, BusDraining(cursor), cursor=cursor)
        if self._subscriptions.get(subscription.id) is subscription:
            del self._subscriptions[subscription.id]
        # A cancelled pump keeps its CancelledError, whose traceback holds the pump's frames and
        # so the subscription: forgetting the task here leaves no cycle for the garbage collector.
        subscription.task = None
        self._metrics.fabric_subscriptions.dec()
        self._wakeup()

    async def _wait_for_credit(self, subscription: _Subscription) -> None:
        while subscription.credit <= 0:
            waiter = subscription.waiter = asyncio.get_running_loop().create_future()
            try:
                await waiter
            finally:
                subscription.waiter = None

    async def _forward(self, subscription: _Subscription, item: Events) -> None:
        """Queue ``item``'s events as credit allows, waiting for credit for the rest."""
        bodies = item.wire
        start, count = 0, len(bodies)
        while start < count:
            if subscription.credit <= 0:
                await self._wait_for_credit(subscription)
            end = min(count, start + subscription.credit)
            chunk = bodies if start == 0 and end == count else bodies[start:end]
            subscription.credit -= end - start
            for entry in wire.fabric_event_items(subscription.id, chunk, self._max_response_bytes):
                self._queue(subscription, entry)
            subscription.cursor = item.last if end == count else wire.stored_event_id(chunk[-1])
            self._metrics.fabric_events_delivered.inc(end - start)
            start = end

    def _end(self, subscription: _Subscription, exc: BaseException, *, cursor: str) -> None:
        """Queue the ``ended`` item of ``subscription``; the bridge forgets it now."""
        subscription.ended = True
        if self._subscriptions.get(subscription.id) is subscription:
            del self._subscriptions[subscription.id]
        code, message = status_of(exc)
        self._metrics.fabric_subscriptions_ended.labels(code=code.name.lower()).inc()
        if code is not grpc.StatusCode.RESOURCE_EXHAUSTED and code is not grpc.StatusCode.UNAVAILABLE:
            log.info(
                "fabric subscription ended",
                extra={
                    "subscription_id": subscription.id,
                    "owner": subscription.owner,
                    "reason": message,
                },
            )
        self._queue(subscription, _ended(subscription.id, code, message, cursor))


def _ended(subscription_id: int, code: grpc.StatusCode, message: str, cursor: str) -> bytes:
    """A framed ``ended`` item; ``INVALID_ARGUMENT`` carries no cursor (resuming would fail alike)."""
    if code is grpc.StatusCode.INVALID_ARGUMENT:
        cursor = ""
    ended = bridge_pb2.FabricEnded(code=code.value[0], message=message, cursor=cursor)
    return wire.fabric_item(subscription_id, wire.FABRIC_ENDED, ended.SerializeToString())
