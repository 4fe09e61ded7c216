"""``ExecutionService.StartRuns``: a gateway's run starts over one stream instead of a call each.

Every ``StartRunsRequest`` is one start, with its owner's attested context in
field 1 (the embedded ``StartRunRequest`` leaves its own empty). It goes
through exactly what ``StartRun`` does (:meth:`Starter.start`, the servicer's
own method) and is answered by one ``StartRunsResponse`` with its
``start_id``: code 0 and ``StartRun``'s response, or the status code and
message of the refusal, mapped by :func:`runwire_common.servicer.status_of` as
for an aborted call. A refused start never ends the stream.

Why: a unary call costs both ends several times the CPU of one message on an
open stream, and every run begins with one. Starts that queue up together
travel and are answered in bundles (:mod:`runwire_common.bundles`).

Deadlines: a start may say how long its sender waits (``timeout_ms``, counted
from when it is read). Past that it is cancelled as a call whose deadline
passed: one that had not asked the registry for its run yet creates nothing,
and is answered ``DEADLINE_EXCEEDED``, as is one still being started.

Concurrency: starts run concurrently, as concurrent calls would, each in a
task of its own; at most ``max_in_flight`` are read and not yet answered,
beyond which the stream stops reading (HTTP/2 flow control pushes back on the
sender). The stream's end cancels the starts still running, as a cancelled
call would: a start cancelled before it asked the registry for its run creates
nothing, one cancelled later still starts its run (see ``StartRun``).

Draining: when the drain begins the stream sends a notice (``drained`` set,
``start_id`` 0, code 0); the sender half-closes it and sends later starts to
another replica. Starts already begun are finished and answered; every start
read after the drain began is answered at once, without being carried out,
with ``UNAVAILABLE`` and ``drained`` set, and the sender sends it again. The
stream reads on until the sender half-closes, so nothing is left unread and
unanswered (as the registry's ``WriteRuns`` does, and for the same reason).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any, Protocol

import grpc

from runwire.common.v1 import context_pb2
from runwire.execution.v1 import execution_pb2
from runwire_common.answering import CarryingStream
from runwire_common.errors import DeadlineExceeded, InvalidArgument, RunwireError
from runwire_common.telemetry import Telemetry

DEFAULT_MAX_STARTS_IN_FLIGHT = 64
# A traced start's span is named like the call it stands for.
TRACED_METHOD = "/runwire.execution.v1.ExecutionService/StartRun"
DRAINING = "the executor is draining: the run was not started; send the start to another replica"

Context = grpc.aio.ServicerContext[Any, Any]


class StartStreamStats:
    """How many ``StartRuns`` messages were read and how many starts they carried (starts per message: bundling)."""

    __slots__ = ("messages", "starts")

    def __init__(self) -> None:
        self.messages = 0
        self.starts = 0

    def count(self, starts: int) -> None:
        self.messages += 1
        self.starts += starts


class Starter(Protocol):
    """What a start does: ``StartRun`` as the servicer carries it out."""

    async def start(
        self, user_context: context_pb2.UserContext, request: execution_pb2.StartRunRequest, context: Context
    ) -> execution_pb2.StartRunResponse: ...


class StartStream:
    """The state of one ``StartRuns`` call; :meth:`serve` runs it."""

    def __init__(
        self,
        starter: Starter,
        context: Context,
        *,
        draining: asyncio.Event,
        max_in_flight: int = DEFAULT_MAX_STARTS_IN_FLIGHT,
        bundle_answers: bool = False,
        on_read: Callable[[int], None] | None = None,
        telemetry: Telemetry | None = None,
    ) -> None:
        self._starter = starter
        self._context = context
        self._telemetry = telemetry if telemetry is not None and telemetry.enabled else None
        self._stream: CarryingStream[execution_pb2.StartRunsRequest, execution_pb2.StartRunsResponse] = (
            CarryingStream(
                carry_out=self._start,
                answer_type=execution_pb2.StartRunsResponse,
                id_field="start_id",
                draining=draining,
                drained_message=DRAINING,
                max_in_flight=max_in_flight,
                request_name="StartRunsRequest",
                bundle_answers=bundle_answers,
                on_read=on_read,
            )
        )

    def serve(
        self, requests: AsyncIterator[execution_pb2.StartRunsRequest]
    ) -> AsyncIterator[execution_pb2.StartRunsResponse]:
        """Answer every start read from ``requests``; end when the sender has half-closed."""
        return self._stream.serve(requests)

    async def _start(
        self, request: execution_pb2.StartRunsRequest, read_at: float
    ) -> execution_pb2.StartRunsResponse:
        deadline = read_at + request.timeout_ms / 1000 if request.timeout_ms else None
        return execution_pb2.StartRunsResponse(started=await self._traced(request, deadline))

    async def _traced(
        self, request: execution_pb2.StartRunsRequest, deadline: float | None
    ) -> execution_pb2.StartRunResponse:
        telemetry = self._telemetry
        if telemetry is None or not request.trace_context:
            return await self._carry_out(request, deadline)
        ctx = request.user_context
        with telemetry.continued_span(
            TRACED_METHOD, request.trace_context, user_id=ctx.user_id, thread_id=ctx.thread_id
        ) as span:
            try:
                return await self._carry_out(request, deadline)
            except Exception as exc:
                code = exc.code if isinstance(exc, RunwireError) else grpc.StatusCode.INTERNAL
                span.set_attribute("rpc.grpc.status_code", code.value[0])
                raise

    async def _carry_out(
        self, request: execution_pb2.StartRunsRequest, deadline: float | None
    ) -> execution_pb2.StartRunResponse:
        if deadline is None:
            return await self._checked(request)
        try:
            # Past it, the start is cancelled as a call whose deadline passed: before CreateRun
            # nothing is created, after it the run starts all the same (see StartRun).
            async with asyncio.timeout_at(deadline):
                return await self._checked(request)
        except TimeoutError:
            raise DeadlineExceeded("the start was not done within its timeout_ms") from None

    async def _checked(self, request: execution_pb2.StartRunsRequest) -> execution_pb2.StartRunResponse:
        if not request.start_id:
            raise InvalidArgument("start_id must not be 0")
        if not request.HasField("start"):
            raise InvalidArgument("a start carries `start`")
        if request.start.user_context.ByteSize():
            raise InvalidArgument(
                "the embedded request's user_context must be empty: the start's user_context stands for it"
            )
        return await self._starter.start(request.user_context, request.start, self._context)
