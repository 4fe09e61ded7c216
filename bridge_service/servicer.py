"""``runwire.bridge.v1.BridgeService``: a thin adapter over an :class:`EventBus`.

Validation and the mapping of bus items to ``SubscribeResponse`` live here
(events go out as pre-framed bytes, see :mod:`bridge_service.wire` and
:func:`register`); the two long-lived streams have their machinery in
:mod:`bridge_service.fabric` (``Fabric``) and :mod:`bridge_service.publish_stream`
(``PublishStream``). Ordering, fencing (dedup, seq assignment, terminal
events), retention, fan-out and back-pressure live in the bus, whichever
backend it is. Domain errors become status codes in ``runwire_common.servicer``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any

import grpc

from bridge_service.bus import SUBSCRIPTION_ENDINGS, EventBus, Events, Gap
from bridge_service.fabric import FabricOptions, FabricStream
from bridge_service.metrics import BridgeMetrics
from bridge_service.publish_stream import DEFAULT_MAX_IN_FLIGHT, PublishStream
from bridge_service.validation import PublishLimits, prepare_events
from bridge_service.wire import batch_response, event_response
from runwire.bridge.v1 import bridge_pb2
from runwire_common import bundles
from runwire_common.attestation import ContextAttestor
from runwire_common.context import validate_context
from runwire_common.logs import bind
from runwire_common.owners import key_of
from runwire_common.servicer import server_stream, unary
from runwire_common.telemetry import Telemetry

log = logging.getLogger("runwire.bridge")

SERVICE_NAME = bridge_pb2.DESCRIPTOR.services_by_name["BridgeService"].full_name

# A Subscribe stream yields messages, or already serialized responses (events).
Response = bridge_pb2.SubscribeResponse | bytes


class BridgeServicer:
    """Implements ``BridgeService``; host it with :func:`register`.

    Not a subclass of the generated ``BridgeServiceServicer``: ``Subscribe``
    also yields serialized responses, which only :func:`register`'s
    serializer lets through.
    """

    def __init__(
        self,
        bus: EventBus,
        *,
        attestor: ContextAttestor,
        limits: PublishLimits,
        metrics: BridgeMetrics | None = None,
        max_batch: int = 256,
        publish_stream_max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
        fabric: FabricOptions | None = None,
        telemetry: Telemetry | None = None,
    ) -> None:
        self._metrics = metrics if metrics is not None else BridgeMetrics()
        self._bus = bus
        self._attestor = attestor
        self._limits = limits
        self._max_batch = max_batch
        self._publish_stream_max_in_flight = publish_stream_max_in_flight
        self._fabric = fabric if fabric is not None else FabricOptions()
        self._draining = asyncio.Event()
        self._telemetry = telemetry if telemetry is not None else Telemetry.disabled()

    async def drain(self) -> None:
        """Start draining the long-lived streams (call before the bus drains).

        ``PublishStream`` stops reading, acknowledges what it read, then ends
        with ``UNAVAILABLE``. ``Fabric`` ends every subscription with
        ``UNAVAILABLE`` and its cursor, refuses new ones, then ends with
        ``UNAVAILABLE``.
        """
        self._draining.set()

    @unary
    async def Publish(
        self,
        request: bridge_pb2.PublishRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> bridge_pb2.PublishResponse:
        ctx = validate_context(request.user_context, attestor=self._attestor)
        events = prepare_events(request.events, ctx, limits=self._limits)
        result = await self._bus.publish(key_of(ctx), events)
        self._metrics.count_published(result)
        return bridge_pb2.PublishResponse(event_ids=result.event_ids, seqs=result.seqs)

    @server_stream
    async def Subscribe(
        self,
        request: bridge_pb2.SubscribeRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> AsyncIterator[Response]:
        ctx = validate_context(request.user_context, attestor=self._attestor)
        # 0 or 1: one event per response, as before batches existed.
        batched = request.max_batch > 1
        max_batch = min(request.max_batch, self._max_batch) if batched else 1
        if log.isEnabledFor(logging.DEBUG):
            bind(log, ctx, after=request.after).debug("subscribe")
        delivered = self._metrics.events_delivered
        self._metrics.subscribers.inc()
        try:
            # aclosing: the bus unregisters the subscription the moment this
            # call ends, including on client cancellation.
            items = self._bus.subscribe(key_of(ctx), after=request.after, max_batch=max_batch)
            async with aclosing(items):
                async for item in items:
                    if isinstance(item, Events):
                        bodies = item.wire
                        if batched:
                            yield batch_response(bodies)
                        else:
                            for body in bodies:
                                yield event_response(body)
                        delivered.inc(len(bodies))
                    elif isinstance(item, Gap):
                        yield bridge_pb2.SubscribeResponse(
                            gap=bridge_pb2.Gap(
                                requested_after=item.requested_after, oldest_event_id=item.oldest_event_id
                            )
                        )
                    else:
                        yield bridge_pb2.SubscribeResponse(
                            replay_complete=bridge_pb2.ReplayComplete(
                                replayed=item.replayed, resume_after=item.resume_after
                            )
                        )
        except SUBSCRIPTION_ENDINGS as exc:
            self._metrics.subscriptions_ended.labels(code=exc.code.name.lower()).inc()
            bind(log, ctx, after=request.after).info(
                "subscription ended", extra={"reason": exc.message, "cursor": exc.cursor}
            )
            raise
        finally:
            self._metrics.subscribers.dec()

    @server_stream
    async def PublishStream(
        self,
        requests: AsyncIterator[bridge_pb2.PublishStreamRequest],
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> AsyncIterator[bridge_pb2.PublishStreamResponse]:
        # Response headers at once, saying this bridge unpacks bundled batches.
        await context.send_initial_metadata(bundles.ANNOUNCEMENT)
        stream = PublishStream(
            self._bus,
            attestor=self._attestor,
            limits=self._limits,
            metrics=self._metrics,
            draining=self._draining,
            max_in_flight=self._publish_stream_max_in_flight,
            bundle_answers=bundles.announced(context.invocation_metadata()),
            telemetry=self._telemetry,
        )
        async for response in stream.serve(requests):
            yield response

    @server_stream
    async def Fabric(
        self,
        requests: AsyncIterator[bridge_pb2.FabricRequest],
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> AsyncIterator[bytes]:
        stream = FabricStream(
            self._bus,
            attestor=self._attestor,
            metrics=self._metrics,
            draining=self._draining,
            max_batch=self._max_batch,
            options=self._fabric,
        )
        async for response in stream.serve(requests):
            yield response


def _serialize_response(response: Response) -> bytes:
    return response if isinstance(response, bytes) else response.SerializeToString()


def register(servicer: BridgeServicer, server: grpc.aio.Server) -> None:
    """Host ``servicer`` like the generated ``add_BridgeServiceServicer_to_server``.

    The one difference: ``Subscribe`` responses may be pre-serialized bytes,
    and ``Fabric`` responses always are.
    """
    handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {
        "Publish": grpc.unary_unary_rpc_method_handler(
            servicer.Publish,
            request_deserializer=bridge_pb2.PublishRequest.FromString,
            response_serializer=bridge_pb2.PublishResponse.SerializeToString,
        ),
        "Subscribe": grpc.unary_stream_rpc_method_handler(
            servicer.Subscribe,
            request_deserializer=bridge_pb2.SubscribeRequest.FromString,
            response_serializer=_serialize_response,
        ),
        "Fabric": grpc.stream_stream_rpc_method_handler(
            servicer.Fabric,
            request_deserializer=bridge_pb2.FabricRequest.FromString,
            response_serializer=_serialize_response,
        ),
        "PublishStream": grpc.stream_stream_rpc_method_handler(
            servicer.PublishStream,
            request_deserializer=bridge_pb2.PublishStreamRequest.FromString,
            response_serializer=bridge_pb2.PublishStreamResponse.SerializeToString,
        ),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))
    server.add_registered_method_handlers(SERVICE_NAME, handlers)
