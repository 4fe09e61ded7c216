"""The gRPC adapter of ``runwire.registry.v1.RegistryService``.

Each method validates the caller's ``UserContext``, validates the message,
runs the call as one database transaction of the domain modules; the
``@unary`` decorator maps domain errors to status codes. Run-scoped calls act
on ``user_context.run_id`` and always within ``user_context.user_id``.

Successful calls are logged at DEBUG (a line per call is a measurable share
of the call's CPU); interruptions, refusals and errors are logged as before.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime
from typing import Any

import grpc

from registry_service import validation
from registry_service.admission import create_run
from registry_service.convert import run_message
from registry_service.database import Database
from registry_service.metrics import RegistryMetrics
from registry_service.paging import decode_page_token, encode_page_token, page_size
from registry_service.runs import (
    complete_through,
    get_run,
    heartbeat,
    list_runs,
    transition_run,
    try_transition,
)
from runwire.registry.v1 import registry_pb2, registry_pb2_grpc
from runwire_common.attestation import ContextAttestor
from runwire_common.context import validate_context
from runwire_common.errors import RunwireError
from runwire_common.logs import bind
from runwire_common.servicer import unary
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
    ) -> None:
        self._metrics = metrics if metrics is not None else RegistryMetrics()
        self._database = database
        self._attestor = attestor
        self._max_live_runs = max_live_runs_per_user
        self._clock = clock

    @unary
    async def CreateRun(
        self, request: registry_pb2.CreateRunRequest, context: Context
    ) -> registry_pb2.CreateRunResponse:
        ctx = validate_context(request.user_context, attestor=self._attestor, require=("thread_id",))
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

    @unary
    async def TransitionRun(
        self, request: registry_pb2.TransitionRunRequest, context: Context
    ) -> registry_pb2.TransitionRunResponse:
        ctx = validate_context(request.user_context, attestor=self._attestor, require=("run_id",))
        change = validation.transition(request)
        user_id, run_id, now = ctx.user_id, ctx.run_id, self._clock()
        moved = await self._database.write_statement(
            lambda connection: try_transition(connection, change, user_id=user_id, run_id=run_id, now=now)
        )
        if moved is not None:
            record, entered = moved
        elif change.through_completing:
            record, entered = await self._database.write(
                lambda connection: complete_through(
                    connection, change, user_id=user_id, run_id=run_id, now=now
                )
            )
        else:
            record = await self._database.write(
                lambda connection: transition_run(connection, change, user_id=user_id, run_id=run_id, now=now)
            )
            entered = (str(record.state),)
        for state in entered:
            self._metrics.count_transition(state)
        if log.isEnabledFor(logging.DEBUG):
            bind(log, ctx).debug("run transitioned", extra={"state": record.state, "version": record.version})
        return registry_pb2.TransitionRunResponse(run=run_message(record))

    @unary
    async def Heartbeat(
        self, request: registry_pb2.HeartbeatRequest, context: Context
    ) -> registry_pb2.HeartbeatResponse:
        ctx = validate_context(request.user_context, attestor=self._attestor, require=("run_id",))
        executor_id = validation.executor_id(request.executor_id)
        user_id, run_id, now = ctx.user_id, ctx.run_id, self._clock()
        record = await self._database.write_statement(
            lambda connection: heartbeat(
                connection, user_id=user_id, run_id=run_id, executor_id=executor_id, now=now
            )
        )
        return registry_pb2.HeartbeatResponse(run=run_message(record))

    @unary
    async def GetRun(
        self, request: registry_pb2.GetRunRequest, context: Context
    ) -> registry_pb2.GetRunResponse:
        ctx = validate_context(request.user_context, attestor=self._attestor, require=("run_id",))
        user_id, run_id = ctx.user_id, ctx.run_id
        record = await self._database.read(
            lambda connection: get_run(connection, user_id=user_id, run_id=run_id)
        )
        return registry_pb2.GetRunResponse(run=run_message(record))

    @unary
    async def ListRuns(
        self, request: registry_pb2.ListRunsRequest, context: Context
    ) -> registry_pb2.ListRunsResponse:
        ctx = validate_context(request.user_context, attestor=self._attestor)
        thread_id, state = validation.list_filters(request)
        limit = page_size(request.page_size)
        after = decode_page_token(request.page_token)
        user_id = ctx.user_id
        page = await self._database.read(
            lambda connection: list_runs(
                connection, user_id=user_id, limit=limit, thread_id=thread_id, state=state, after=after
            )
        )
        token = encode_page_token(page.next_cursor) if page.next_cursor is not None else ""
        return registry_pb2.ListRunsResponse(runs=[run_message(r) for r in page.runs], next_page_token=token)
