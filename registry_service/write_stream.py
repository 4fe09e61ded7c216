"""``RegistryService.WriteRuns``: an execution process's run writes over one stream.

Every ``WriteRunsRequest`` is one write — a ``CreateRun``, a
``TransitionRun`` or a ``Heartbeat`` — with its owner's attested context in field 1. It goes
through exactly what the unary call does (:class:`RunWriter`, the servicer's
own methods) and is answered by one ``WriteRunsResponse`` with its
``write_id``: code 0 and the unary call's response, or the status code and
message of its refusal, mapped by :func:`runwire_common.servicer.status_of`
as for an aborted call. A refused write never ends the stream.

What this saves is the per-call cost of gRPC: a unary call costs its server
about four times the CPU of one message on an open stream (see
``docs/internals.md``), and a run makes two such writes and a heartbeat
every two seconds.

Concurrency: writes run concurrently, as concurrent unary calls would; at
most ``max_in_flight`` are read and not yet answered, beyond which the stream
stops reading (HTTP/2 flow control pushes back on the sender). Answers leave
in completion order; a sender that needs one write after another waits for
the first answer, as the execution service does.

Bundles: a message may carry several writes (``bundle``), each carried out
and answered as if it had been sent alone; answers ready together leave as
one message when the sender announced that it reads bundles
(:mod:`runwire_common.bundles`).

Draining: when the drain begins the stream sends a notice (``drained`` set,
``write_id`` 0, code 0), and the sender half-closes it and sends later writes
on a new stream (another replica). Writes already begun are finished and
answered; every write read after the drain began is answered at once,
without being carried out, with ``UNAVAILABLE`` and ``drained`` set, and the
sender sends it again. The stream goes on reading until the sender
half-closes it, so no write is left unread and unanswered: a write the
sender has no answer for is one the registry may have carried out. (A
server that stops reading and closes instead loses its last answers to the
TCP reset that unread data causes.) The server's grace period ends a stream
whose sender never half-closes.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Mapping
from types import MappingProxyType
from typing import Protocol

import grpc

from runwire.common.v1 import context_pb2
from runwire.registry.v1 import registry_pb2
from runwire_common.answering import CarryingStream
from runwire_common.errors import InvalidArgument, RunwireError
from runwire_common.telemetry import Telemetry

DEFAULT_MAX_WRITES_IN_FLIGHT = 64
# A traced write's span is named like the unary call it stands for.
TRACED_METHODS: Mapping[str, str] = MappingProxyType(
    {
        "create_run": "/runwire.registry.v1.RegistryService/CreateRun",
        "transition_run": "/runwire.registry.v1.RegistryService/TransitionRun",
        "heartbeat": "/runwire.registry.v1.RegistryService/Heartbeat",
    }
)
TRACED_STREAM = "/runwire.registry.v1.RegistryService/WriteRuns"
DRAINING = "the registry is draining: the write was not carried out; send it again on a new stream"


class RunWriter(Protocol):
    """The writes a stream carries, as the unary calls perform them."""

    async def create(
        self, user_context: context_pb2.UserContext, request: registry_pb2.CreateRunRequest
    ) -> registry_pb2.CreateRunResponse: ...

    async def transition(
        self, user_context: context_pb2.UserContext, request: registry_pb2.TransitionRunRequest
    ) -> registry_pb2.TransitionRunResponse: ...

    async def heartbeat(
        self, user_context: context_pb2.UserContext, request: registry_pb2.HeartbeatRequest
    ) -> registry_pb2.HeartbeatResponse: ...


class RunWriteStream:
    """The state of one ``WriteRuns`` call; :meth:`serve` runs it."""

    def __init__(
        self,
        writer: RunWriter,
        *,
        draining: asyncio.Event,
        max_in_flight: int,
        bundle_answers: bool = False,
        on_read: Callable[[int], None] | None = None,
        telemetry: Telemetry | None = None,
    ) -> None:
        self._writer = writer
        self._telemetry = telemetry if telemetry is not None and telemetry.enabled else None
        self._stream: CarryingStream[registry_pb2.WriteRunsRequest, registry_pb2.WriteRunsResponse] = (
            CarryingStream(
                carry_out=self._traced,
                answer_type=registry_pb2.WriteRunsResponse,
                id_field="write_id",
                draining=draining,
                drained_message=DRAINING,
                max_in_flight=max_in_flight,
                request_name="WriteRunsRequest",
                bundle_answers=bundle_answers,
                on_read=on_read,
            )
        )

    def serve(
        self, requests: AsyncIterator[registry_pb2.WriteRunsRequest]
    ) -> AsyncIterator[registry_pb2.WriteRunsResponse]:
        """Answer every write read from ``requests``; end when the sender has half-closed."""
        return self._stream.serve(requests)

    async def _traced(
        self, request: registry_pb2.WriteRunsRequest, read_at: float
    ) -> registry_pb2.WriteRunsResponse:
        telemetry = self._telemetry
        if telemetry is None or not request.trace_context:
            return await self._carry_out(request)
        ctx = request.user_context
        kind = request.WhichOneof("write")
        method = TRACED_METHODS.get(kind or "", TRACED_STREAM)
        with telemetry.continued_span(
            method, request.trace_context, user_id=ctx.user_id, run_id=ctx.run_id, thread_id=ctx.thread_id
        ) as span:
            try:
                return await self._carry_out(request)
            except Exception as exc:
                code = exc.code if isinstance(exc, RunwireError) else grpc.StatusCode.INTERNAL
                span.set_attribute("rpc.grpc.status_code", code.value[0])
                raise

    async def _carry_out(self, request: registry_pb2.WriteRunsRequest) -> registry_pb2.WriteRunsResponse:
        if not request.write_id:
            raise InvalidArgument("write_id must not be 0")
        kind = request.WhichOneof("write")
        if kind == "create_run":
            _no_embedded_context(request.create_run.user_context)
            created = await self._writer.create(request.user_context, request.create_run)
            return registry_pb2.WriteRunsResponse(create_run=created)
        if kind == "transition_run":
            _no_embedded_context(request.transition_run.user_context)
            moved = await self._writer.transition(request.user_context, request.transition_run)
            return registry_pb2.WriteRunsResponse(transition_run=moved)
        if kind == "heartbeat":
            _no_embedded_context(request.heartbeat.user_context)
            beat = await self._writer.heartbeat(request.user_context, request.heartbeat)
            return registry_pb2.WriteRunsResponse(heartbeat=beat)
        raise InvalidArgument("a write carries create_run, transition_run or heartbeat")


def _no_embedded_context(embedded: context_pb2.UserContext) -> None:
    if embedded.ByteSize():
        raise InvalidArgument(
            "the embedded request's user_context must be empty: the write's user_context stands for it"
        )
