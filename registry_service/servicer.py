"""The gRPC adapter of ``runwire.registry.v1.RegistryService``.

Each method validates the caller's ``UserContext``, validates the message,
runs the call as one database transaction of the domain modules; the
``@unary`` decorator maps domain errors to status codes. Run-scoped calls act
on ``user_context.run_id`` and always within the caller's ``(tenant_id, user_id)``.

A waiting run's ``pending_input`` is read in the same transaction as the run
(``GetRun``, ``ListRuns``, ``Heartbeat``, ``GetInput``); only waiting runs cost
the extra query.

Successful calls are logged at DEBUG (a line per call is a measurable share
of the call's CPU); interruptions, refusals and errors are logged as before.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from datetime import datetime
from typing import Any

import grpc

from registry_service import validation
from registry_service.admission import create_run
from registry_service.convert import input_message, run_message, thread_message, thread_summary
from registry_service.database import Database
from registry_service.inputs import answer_input, get_input, request_input, with_pending, with_pendings
from registry_service.metrics import RegistryMetrics
from registry_service.paging import (
    decode_page_token,
    decode_thread_token,
    encode_page_token,
    encode_thread_token,
    page_size,
)
from registry_service.runs import decide_move, get_run, heartbeat, list_runs, try_transition
from registry_service.states import RUNNING, WAITING
from registry_service.threads import (
    append_messages,
    complete_with_messages,
    delete_thread,
    get_thread,
    list_threads,
)
from registry_service.write_stream import DEFAULT_MAX_WRITES_IN_FLIGHT, RunWriteStream
from runwire.common.v1 import context_pb2
from runwire.registry.v1 import registry_pb2, registry_pb2_grpc
from runwire_common import bundles
from runwire_common.attestation import ContextAttestor
from runwire_common.context import validate_context
from runwire_common.errors import RunwireError
from runwire_common.logs import bind
from runwire_common.owners import owner_of
from runwire_common.servicer import server_stream, unary
from runwire_common.telemetry import Telemetry
from runwire_common.timeutil import utcnow

SERVICE_NAME = registry_pb2.DESCRIPTOR.services_by_name["RegistryService"].full_name

log = logging.getLogger("runwire.registry")

Context = grpc.aio.ServicerContext[Any, Any]


class RegistryServicer(registry_pb2_grpc.RegistryServiceServicer):
    def __init__(
        self,
        database: Database,
        *,
        attestor: ContextAttestor,
        max_live_runs_per_user: int,
        clock: Callable[[], datetime] = utcnow,
        metrics: RegistryMetrics | None = None,
        max_writes_in_flight: int = DEFAULT_MAX_WRITES_IN_FLIGHT,
        telemetry: Telemetry | None = None,
    ) -> None:
        self._telemetry = telemetry
        # Set by drain(): WriteRuns streams then send their notice and carry out no further write.
        self._draining = asyncio.Event()
        self._max_writes_in_flight = max_writes_in_flight
        self._metrics = metrics if metrics is not None else RegistryMetrics()
        self._database = database
        self._attestor = attestor
        self._max_live_runs = max_live_runs_per_user
        self._clock = clock

    def drain(self) -> None:
        """Drain the ``WriteRuns`` streams: see :mod:`registry_service.write_stream` ("Draining")."""
        self._draining.set()

    @unary
    async def CreateRun(
        self, request: registry_pb2.CreateRunRequest, context: Context
    ) -> registry_pb2.CreateRunResponse:
        return await self.create(request.user_context, request)

    @unary
    async def TransitionRun(
        self, request: registry_pb2.TransitionRunRequest, context: Context
    ) -> registry_pb2.TransitionRunResponse:
        return await self.transition(request.user_context, request)

    @server_stream
    async def WriteRuns(
        self, requests: AsyncIterator[registry_pb2.WriteRunsRequest], context: Context
    ) -> AsyncIterator[registry_pb2.WriteRunsResponse]:
        # Response headers at once: they commit the call at the sender (no transparent retry of
        # a stream whose writes the registry may have carried out), and say that this registry
        # unpacks bundled writes.
        await context.send_initial_metadata(bundles.ANNOUNCEMENT)
        stream = RunWriteStream(
            self,
            draining=self._draining,
            max_in_flight=self._max_writes_in_flight,
            bundle_answers=bundles.announced(context.invocation_metadata()),
            on_read=self._metrics.count_write_message,
            telemetry=self._telemetry,
        )
        async for response in stream.serve(requests):
            yield response

    async def create(
        self, user_context: context_pb2.UserContext, request: registry_pb2.CreateRunRequest
    ) -> registry_pb2.CreateRunResponse:
        """``CreateRun`` for the owner ``user_context`` (the unary call's or a ``WriteRuns`` write's)."""
        ctx = validate_context(user_context, attestor=self._attestor, require=("thread_id",))
        new = validation.new_run(request, ctx)
        now, max_live_runs = self._clock(), self._max_live_runs
        try:
            admitted = await self._database.write(
                lambda connection: create_run(connection, new, max_live_runs=max_live_runs, now=now)
            )
        except RunwireError as refused:
            self._metrics.runs_refused.labels(code=refused.code.name.lower()).inc()
            raise
        record = admitted.run
        if admitted.replayed:
            if log.isEnabledFor(logging.DEBUG):
                bind(log, ctx, run_id=record.run_id).debug("run created earlier with this create_key")
            return registry_pb2.CreateRunResponse(run=run_message(record))
        self._metrics.count_created(str(record.multitask_strategy))
        # Created further along than pending: each step counted as the TransitionRun it saved.
        for state in admitted.entered:
            self._metrics.count_transition(state)
        if admitted.interrupted or log.isEnabledFor(logging.DEBUG):
            bound = bind(log, ctx, run_id=record.run_id)
            for interrupted in admitted.interrupted:
                bound.info("run interrupted", extra={"interrupted_run_id": interrupted.run_id})
            bound.debug("run created", extra={"agent": record.agent, "strategy": record.multitask_strategy})
            if admitted.entered:
                bound.debug("run transitioned", extra={"state": record.state, "version": record.version})
        return registry_pb2.CreateRunResponse(
            run=run_message(record), interrupted_runs=[run_message(r) for r in admitted.interrupted]
        )

    async def transition(
        self, user_context: context_pb2.UserContext, request: registry_pb2.TransitionRunRequest
    ) -> registry_pb2.TransitionRunResponse:
        """``TransitionRun`` for the owner ``user_context`` (the unary call's or a ``WriteRuns`` write's)."""
        ctx = validate_context(user_context, attestor=self._attestor, require=("run_id",))
        change = validation.transition(request)
        messages = validation.completed_messages(request, run_id=ctx.run_id)
        owner, run_id, now = owner_of(ctx), ctx.run_id, self._clock()
        if messages:
            # The run's turn of its thread is stored with its completion: one transaction.
            record, entered = await self._database.write(
                lambda connection: complete_with_messages(
                    connection, change, messages, owner=owner, run_id=run_id, now=now
                )
            )
        else:
            moved = await self._database.write_statement(
                lambda connection: try_transition(connection, change, owner=owner, run_id=run_id, now=now)
            )
            if moved is None:  # a refusal, a queued start or a completing run: decided in a transaction
                moved = await self._database.write(
                    lambda connection: decide_move(connection, change, owner=owner, run_id=run_id, now=now)
                )
            record, entered = moved
        for state in entered:
            self._metrics.count_transition(state)
        if log.isEnabledFor(logging.DEBUG):
            bind(log, ctx).debug("run transitioned", extra={"state": record.state, "version": record.version})
        return registry_pb2.TransitionRunResponse(run=run_message(record), messages_stored=bool(messages))

    @unary
    async def Heartbeat(
        self, request: registry_pb2.HeartbeatRequest, context: Context
    ) -> registry_pb2.HeartbeatResponse:
        return await self.heartbeat(request.user_context, request)

    async def heartbeat(
        self, user_context: context_pb2.UserContext, request: registry_pb2.HeartbeatRequest
    ) -> registry_pb2.HeartbeatResponse:
        """``Heartbeat`` for the owner ``user_context`` (the unary call's or a ``WriteRuns`` write's)."""
        ctx = validate_context(user_context, attestor=self._attestor, require=("run_id",))
        executor_id = validation.executor_id(request.executor_id)
        owner, run_id, now = owner_of(ctx), ctx.run_id, self._clock()
        record, pending = await self._database.write_statement(
            lambda connection: with_pending(
                connection,
                heartbeat(connection, owner=owner, run_id=run_id, executor_id=executor_id, now=now),
            )
        )
        return registry_pb2.HeartbeatResponse(run=run_message(record, pending=pending))

    @unary
    async def GetRun(
        self, request: registry_pb2.GetRunRequest, context: Context
    ) -> registry_pb2.GetRunResponse:
        ctx = validate_context(request.user_context, attestor=self._attestor, require=("run_id",))
        owner, run_id = owner_of(ctx), ctx.run_id
        record, pending = await self._database.read(
            lambda connection: with_pending(connection, get_run(connection, owner=owner, run_id=run_id))
        )
        return registry_pb2.GetRunResponse(run=run_message(record, pending=pending))

    @unary
    async def ListRuns(
        self, request: registry_pb2.ListRunsRequest, context: Context
    ) -> registry_pb2.ListRunsResponse:
        ctx = validate_context(request.user_context, attestor=self._attestor)
        thread_id, state = validation.list_filters(request)
        limit = page_size(request.page_size)
        after = decode_page_token(request.page_token)
        owner = owner_of(ctx)
        page, pending = await self._database.read(
            lambda connection: with_pendings(
                connection,
                list_runs(
                    connection, owner=owner, limit=limit, thread_id=thread_id, state=state, after=after
                ),
            )
        )
        token = encode_page_token(page.next_cursor) if page.next_cursor is not None else ""
        runs = [run_message(r, pending=pending.get(r.run_id)) for r in page.runs]
        return registry_pb2.ListRunsResponse(runs=runs, next_page_token=token)

    @unary
    async def RequestInput(
        self, request: registry_pb2.RequestInputRequest, context: Context
    ) -> registry_pb2.RequestInputResponse:
        ctx = validate_context(request.user_context, attestor=self._attestor, require=("run_id",))
        new = validation.new_input(request)
        owner, run_id, now = owner_of(ctx), ctx.run_id, self._clock()
        record, stored = await self._database.write(
            lambda connection: request_input(connection, new, owner=owner, run_id=run_id, now=now)
        )
        self._metrics.count_transition(WAITING)
        if log.isEnabledFor(logging.DEBUG):
            bind(log, ctx).debug("run waits for input", extra={"input_request_id": new.request_id})
        return registry_pb2.RequestInputResponse(run=run_message(record, pending=stored))

    @unary
    async def AnswerInput(
        self, request: registry_pb2.AnswerInputRequest, context: Context
    ) -> registry_pb2.AnswerInputResponse:
        ctx = validate_context(request.user_context, attestor=self._attestor, require=("run_id",))
        request_id, response_json = validation.answer(request)
        owner, run_id, now = owner_of(ctx), ctx.run_id, self._clock()
        record, answered = await self._database.write(
            lambda connection: answer_input(
                connection,
                owner=owner,
                run_id=run_id,
                request_id=request_id,
                response_json=response_json,
                now=now,
            )
        )
        self._metrics.count_transition(RUNNING)
        if log.isEnabledFor(logging.DEBUG):
            bind(log, ctx).debug("run answered", extra={"input_request_id": request_id})
        return registry_pb2.AnswerInputResponse(run=run_message(record), input=input_message(answered))

    @unary
    async def GetInput(
        self, request: registry_pb2.GetInputRequest, context: Context
    ) -> registry_pb2.GetInputResponse:
        ctx = validate_context(request.user_context, attestor=self._attestor, require=("run_id",))
        request_id = validation.request_id(request.request_id)
        owner, run_id = owner_of(ctx), ctx.run_id
        stored, record, pending = await self._database.read(
            lambda connection: get_input(connection, owner=owner, run_id=run_id, request_id=request_id)
        )
        return registry_pb2.GetInputResponse(
            input=input_message(stored), run=run_message(record, pending=pending)
        )

    @unary
    async def AppendMessages(
        self, request: registry_pb2.AppendMessagesRequest, context: Context
    ) -> registry_pb2.AppendMessagesResponse:
        ctx = validate_context(request.user_context, attestor=self._attestor, require=("run_id", "thread_id"))
        messages = validation.messages(request.messages, run_id=ctx.run_id)
        owner, thread_id, run_id, now = owner_of(ctx), ctx.thread_id, ctx.run_id, self._clock()
        stored = await self._database.write(
            lambda connection: append_messages(
                connection, messages, owner=owner, thread_id=thread_id, run_id=run_id, now=now
            )
        )
        return registry_pb2.AppendMessagesResponse(stored=stored)

    @unary
    async def ListThreads(
        self, request: registry_pb2.ListThreadsRequest, context: Context
    ) -> registry_pb2.ListThreadsResponse:
        ctx = validate_context(request.user_context, attestor=self._attestor)
        limit = page_size(request.page_size)
        after = decode_thread_token(request.page_token)
        owner = owner_of(ctx)
        page = await self._database.read(
            lambda connection: list_threads(connection, owner=owner, limit=limit, after=after)
        )
        token = encode_thread_token(page.next_cursor) if page.next_cursor is not None else ""
        return registry_pb2.ListThreadsResponse(
            threads=[thread_summary(t) for t in page.threads], next_page_token=token
        )

    @unary
    async def GetThread(
        self, request: registry_pb2.GetThreadRequest, context: Context
    ) -> registry_pb2.GetThreadResponse:
        ctx = validate_context(request.user_context, attestor=self._attestor, require=("thread_id",))
        max_messages = validation.max_messages(request.max_messages)
        owner, thread_id = owner_of(ctx), ctx.thread_id
        summary, messages = await self._database.read(
            lambda connection: get_thread(
                connection, owner=owner, thread_id=thread_id, max_messages=max_messages
            )
        )
        return registry_pb2.GetThreadResponse(
            thread=thread_summary(summary), messages=[thread_message(m) for m in messages]
        )

    @unary
    async def DeleteThread(
        self, request: registry_pb2.DeleteThreadRequest, context: Context
    ) -> registry_pb2.DeleteThreadResponse:
        ctx = validate_context(request.user_context, attestor=self._attestor, require=("thread_id",))
        owner, thread_id, now = owner_of(ctx), ctx.thread_id, self._clock()
        runs, messages = await self._database.write(
            lambda connection: delete_thread(connection, owner=owner, thread_id=thread_id, now=now)
        )
        bind(log, ctx).info("thread deleted", extra={"deleted_runs": runs, "deleted_messages": messages})
        return registry_pb2.DeleteThreadResponse(deleted_runs=runs, deleted_messages=messages)
