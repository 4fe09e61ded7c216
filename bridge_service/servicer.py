"""``runwire.bridge.v1.BridgeService``: a thin adapter over an :class:`EventBus`.

Validation and the mapping of bus items to ``SubscribeResponse`` live here;
ordering, fencing (dedup, seq assignment, terminal events), retention,
fan-out and back-pressure live in the bus, whichever backend it is. Domain errors
become status codes in ``runwire_common.servicer``.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any

import grpc

from bridge_service.bus import SUBSCRIPTION_ENDINGS, EventBus, Gap, ReplayComplete
from bridge_service.metrics import BridgeMetrics
from bridge_service.validation import PublishLimits, prepare_events
from runwire.bridge.v1 import bridge_pb2, bridge_pb2_grpc
from runwire_common.attestation import ContextAttestor
from runwire_common.context import validate_context
from runwire_common.logs import bind
from runwire_common.servicer import server_stream, unary

log = logging.getLogger("runwire.bridge")

SERVICE_NAME = bridge_pb2.DESCRIPTOR.services_by_name["BridgeService"].full_name


class BridgeServicer(bridge_pb2_grpc.BridgeServiceServicer):
    def __init__(
        self,
        bus: EventBus,
        *,
        attestor: ContextAttestor,
        limits: PublishLimits,
        metrics: BridgeMetrics | None = None,
    ) -> None:
        self._metrics = metrics if metrics is not None else BridgeMetrics()
        self._bus = bus
        self._attestor = attestor
        self._limits = limits

    @unary
    async def Publish(
        self,
        request: bridge_pb2.PublishRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> bridge_pb2.PublishResponse:
        ctx = validate_context(request.user_context, attestor=self._attestor)
        events = prepare_events(request.events, ctx, limits=self._limits)
        result = await self._bus.publish(ctx.user_id, events)
        stored = sum(1 for event_id in result.event_ids if event_id)
        self._metrics.events_published.labels(outcome="stored").inc(stored)
        self._metrics.events_published.labels(outcome="ignored").inc(len(result.event_ids) - stored)
        return bridge_pb2.PublishResponse(event_ids=result.event_ids, seqs=result.seqs)

    @server_stream
    async def Subscribe(
        self,
        request: bridge_pb2.SubscribeRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> AsyncIterator[bridge_pb2.SubscribeResponse]:
        ctx = validate_context(request.user_context, attestor=self._attestor)
        call_log = bind(log, ctx, after=request.after)
        call_log.debug("subscribe")
        self._metrics.subscribers.inc()
        try:
            # aclosing: the bus unregisters the subscription the moment this
            # call ends, including on client cancellation.
            async with aclosing(self._bus.subscribe(ctx.user_id, after=request.after)) as items:
                async for item in items:
                    if isinstance(item, Gap):
                        yield bridge_pb2.SubscribeResponse(
                            gap=bridge_pb2.Gap(
                                requested_after=item.requested_after, oldest_event_id=item.oldest_event_id
                            )
                        )
                    elif isinstance(item, ReplayComplete):
                        yield bridge_pb2.SubscribeResponse(
                            replay_complete=bridge_pb2.ReplayComplete(
                                replayed=item.replayed, resume_after=item.resume_after
                            )
                        )
                    else:
                        yield bridge_pb2.SubscribeResponse(event=item)
                        self._metrics.events_delivered.inc()
        except SUBSCRIPTION_ENDINGS as exc:
            self._metrics.subscriptions_ended.labels(code=exc.code.name.lower()).inc()
            call_log.info("subscription ended", extra={"reason": exc.message, "cursor": exc.cursor})
            raise
        finally:
            self._metrics.subscribers.dec()
