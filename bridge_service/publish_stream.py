"""``BridgeService.PublishStream``: one execution process's acknowledged publishing stream.

Each ``PublishStreamRequest`` is a batch of one user's events with that
user's attested context. A batch goes through exactly what ``Publish`` does
(:func:`~runwire_common.context.validate_context`,
:func:`~bridge_service.validation.prepare_events`, ``bus.publish`` and its
fencing) and is answered by a ``PublishStreamResponse`` with its
``batch_id``: code 0 and the assigned ids, or the status code and message of
the refusal (mapped by :func:`runwire_common.servicer.status_of`, the same
mapping that aborts unary calls). A refused batch never ends the stream.

Order and concurrency: batches of one user are published one after the
other, in stream order (a *lane* per user, alive while it has work); lanes of
different users run concurrently, so one slow user or Redis round trip does
not hold up the others. At most ``max_in_flight`` batches are read and not yet
acknowledged; beyond that the stream stops reading (HTTP/2 flow control
pushes back on the sender). Acknowledgements leave in completion order, so
they may overtake each other across users.

Bundles: a message may carry several batches (``bundle``), each handled as
if it had been sent alone; acknowledgements ready together leave as one
message when the sender announced that it reads bundles
(:mod:`runwire_common.bundles`).

Draining: new batches are no longer read, the batches already read finish
and are acknowledged, then the stream ends with ``UNAVAILABLE``; the sender
resends what was not acknowledged to another replica, which the fencing makes
idempotent.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import aclosing

from bridge_service.bus import EventBus
from bridge_service.metrics import BridgeMetrics
from bridge_service.validation import PublishLimits, prepare_events
from runwire.bridge.v1 import bridge_pb2
from runwire.common.v1 import context_pb2
from runwire_common.answering import AnsweringStream
from runwire_common.attestation import ContextAttestor
from runwire_common.context import validate_context
from runwire_common.errors import Unavailable
from runwire_common.owners import key_of
from runwire_common.servicer import status_of
from runwire_common.telemetry import Telemetry

# The name of a batch's span (the stream's own span lasts as long as the stream).
TRACED_METHOD = "/runwire.bridge.v1.BridgeService/PublishStream"

DEFAULT_MAX_IN_FLIGHT = 64
DEFAULT_VERIFIED_CONTEXTS = 1024


class VerifiedContexts:
    """Contexts already validated on one stream, by their serialized bytes, until they expire.

    A run publishes many batches with the same context; remembering the
    verdict saves the HMAC check and the id checks of every later one. An
    entry is used only up to the context's own ``expires_at`` (without the
    attestor's clock-skew allowance) and only for byte-identical contexts, so
    any change to the context — including its MAC — is verified afresh.
    Refusals are not remembered. Bounded: when full, the oldest entry goes.
    """

    __slots__ = ("_attestor", "_capacity", "_clock", "_expiry")

    def __init__(
        self,
        attestor: ContextAttestor,
        *,
        capacity: int = DEFAULT_VERIFIED_CONTEXTS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._attestor = attestor
        self._capacity = max(1, capacity)
        self._clock = clock
        self._expiry: dict[bytes, int] = {}

    def validate(self, ctx: context_pb2.UserContext) -> context_pb2.UserContext:
        """``ctx`` if it is valid (see :func:`validate_context`); raises like it otherwise."""
        key = ctx.SerializeToString(deterministic=True)
        expiry = self._expiry.get(key)
        if expiry is not None and self._clock() <= expiry:
            return ctx
        validate_context(ctx, attestor=self._attestor)
        if expiry is None and len(self._expiry) >= self._capacity:
            del self._expiry[next(iter(self._expiry))]
        self._expiry[key] = ctx.expires_at.seconds
        return ctx


class PublishStream:
    """The state of one ``PublishStream`` call; :meth:`serve` runs it."""

    def __init__(
        self,
        bus: EventBus,
        *,
        attestor: ContextAttestor,
        limits: PublishLimits,
        metrics: BridgeMetrics,
        draining: asyncio.Event,
        max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
        bundle_answers: bool = False,
        telemetry: Telemetry | None = None,
    ) -> None:
        self._bus = bus
        self._telemetry = telemetry if telemetry is not None and telemetry.enabled else None
        self._contexts = VerifiedContexts(attestor)
        self._limits = limits
        self._metrics = metrics
        self._draining = draining
        # Batches waiting or being published, per user; a user's lane exists while it has work.
        self._lanes: dict[str, deque[bridge_pb2.PublishStreamRequest]] = {}
        self._workers: set[asyncio.Task[None]] = set()
        self._acks: AnsweringStream[bridge_pb2.PublishStreamRequest, bridge_pb2.PublishStreamResponse] = (
            AnsweringStream(
                dispatch=self._dispatch,
                max_in_flight=max_in_flight,
                request_name="PublishStreamRequest",
                stop=draining,
                bundle_answers=bundle_answers,
                on_read=lambda _batches: metrics.publish_stream_messages.inc(),
            )
        )

    async def serve(
        self, requests: AsyncIterator[bridge_pb2.PublishStreamRequest]
    ) -> AsyncIterator[bridge_pb2.PublishStreamResponse]:
        """Acknowledge every batch read from ``requests``; end when the sender does, or on draining."""
        self._metrics.publish_streams.inc()
        try:
            async with aclosing(self._acks.serve(requests)) as acks:
                async for response in acks:
                    yield response
            if self._draining.is_set():
                raise Unavailable("bridge is draining; resend unacknowledged batches to another replica")
        finally:
            self._metrics.publish_streams.dec()
            workers = list(self._workers)
            for task in workers:
                task.cancel()
            await asyncio.gather(*workers, return_exceptions=True)

    def _dispatch(self, request: bridge_pb2.PublishStreamRequest) -> None:
        key = key_of(request.user_context)
        lane = self._lanes.get(key)
        if lane is not None:
            lane.append(request)
            return
        lane = self._lanes[key] = deque((request,))
        worker = asyncio.create_task(self._run_lane(key, lane))
        self._workers.add(worker)
        worker.add_done_callback(self._workers.discard)

    async def _run_lane(self, key: str, lane: deque[bridge_pb2.PublishStreamRequest]) -> None:
        try:
            while lane:
                response = await self._publish(lane[0])
                lane.popleft()
                self._acks.answer(response)
        finally:
            del self._lanes[key]

    async def _publish(self, request: bridge_pb2.PublishStreamRequest) -> bridge_pb2.PublishStreamResponse:
        telemetry = self._telemetry
        if telemetry is None or not request.trace_context:
            return await self._store(request)
        ctx = request.user_context
        with telemetry.continued_span(
            TRACED_METHOD,
            request.trace_context,
            user_id=ctx.user_id,
            run_id=request.events[0].run_id if request.events else "",
            thread_id=ctx.thread_id,
        ) as span:
            response = await self._store(request)
            if response.code:
                span.set_attribute("rpc.grpc.status_code", response.code)
            return response

    async def _store(self, request: bridge_pb2.PublishStreamRequest) -> bridge_pb2.PublishStreamResponse:
        batch_id = request.batch_id
        try:
            ctx = self._contexts.validate(request.user_context)
            events = prepare_events(request.events, ctx, limits=self._limits)
            result = await self._bus.publish(key_of(ctx), events)
        except Exception as exc:  # noqa: BLE001 - a refused batch is answered, the stream goes on
            code, message = status_of(exc)
            self._metrics.publish_stream_batches.labels(code=code.name.lower()).inc()
            return bridge_pb2.PublishStreamResponse(batch_id=batch_id, code=code.value[0], message=message)
        self._metrics.count_published(result)
        self._metrics.publish_stream_batches.labels(code="ok").inc()
        return bridge_pb2.PublishStreamResponse(
            batch_id=batch_id, event_ids=result.event_ids, seqs=result.seqs
        )
