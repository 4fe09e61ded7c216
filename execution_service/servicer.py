"""``runwire.execution.v1.ExecutionService``: a thin adapter over the engine.

Each method validates the context, builds the request-scoped objects of this
call and calls domain code; ``@unary`` maps domain errors (including the ones
propagated from the registry) to status codes in one place.

Cancel, from any replica: a run that executes here is cancelled by its engine
(which records ``cancelled`` and announces ``agent_cancelled``, hard-stopping
an agent that ignores the signal after ``cancel_grace_s``). A live run that
executes elsewhere is moved to ``cancelled`` here and, if this call won that
transition, announced here (``seq = 0``); its executor learns it from its
next heartbeat and stops silently. A run that already ended is returned
unchanged. Runs the registry interrupted for a newer run (multitask
``interrupt``) are stopped if local and announced here.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Sequence
from typing import Any

import grpc

from execution_service.announcer import Announcer
from execution_service.catalog import AgentCatalog
from execution_service.engine import EngineConfig, RunEngine
from execution_service.identity import RunIdentity, new_run_context
from execution_service.outcomes import Outcome, failure
from execution_service.peers import BridgePort, RegistryPort
from execution_service.retry import Backoff
from execution_service.run_input import parse_input
from execution_service.settings import ExecutionSettings
from execution_service.start_stream import StartStream, StartStreamStats
from execution_service.supervisor import RunSupervisor
from execution_service.waiting import answer_problem, parse_answer
from runwire.common.v1 import context_pb2, run_pb2
from runwire.execution.v1 import execution_pb2, execution_pb2_grpc
from runwire_common import bundles
from runwire_common.attestation import ContextAttestor
from runwire_common.context import validate_context
from runwire_common.errors import FailedPrecondition, InvalidArgument, Unavailable, bounded_detail
from runwire_common.ids import new_id
from runwire_common.logs import bind
from runwire_common.owners import owner_of
from runwire_common.servicer import server_stream, unary
from runwire_common.telemetry import Telemetry

DEFAULT_CANCEL_REASON = "cancelled by user"
INTERRUPT_REASON = "interrupted by a newer run on this thread"
EXECUTOR_SHUTDOWN = "executor_shutdown"
EXECUTOR_SHUTDOWN_MESSAGE = "the executor is shutting down; start the run again"
# Kept free at the end of a call's deadline to answer it.
ANSWER_MARGIN_S = 0.25
# Longest a StartRun waits for the announcements of the runs it interrupted.
INTERRUPT_ANNOUNCE_WAIT_S = 2.0

Context = grpc.aio.ServicerContext[Any, Any]


def effective_timeout(agent_timeout_s: float | None, default_s: float, requested_s: int) -> float:
    """The agent's limit (or the default), lowered by the request's ``timeout_seconds``."""
    if requested_s < 0:
        raise InvalidArgument("timeout_seconds must not be negative")
    limit = agent_timeout_s or default_s
    return min(limit, float(requested_s)) if requested_s > 0 else limit


def time_left(context: Context, *, at_most: float) -> float:
    """Seconds this call may still wait before answering (its deadline minus a margin)."""
    remaining: object = context.time_remaining()  # no deadline: None, or a huge value
    if not isinstance(remaining, int | float):
        return at_most
    return max(0.0, min(at_most, remaining - ANSWER_MARGIN_S))


class ExecutionServicer(execution_pb2_grpc.ExecutionServiceServicer):
    def __init__(
        self,
        *,
        settings: ExecutionSettings,
        attestor: ContextAttestor,
        catalog: AgentCatalog,
        supervisor: RunSupervisor,
        registry: RegistryPort,
        bridge: BridgePort,
        log: logging.Logger | None = None,
        telemetry: Telemetry | None = None,
    ) -> None:
        self._settings = settings
        self._telemetry = telemetry
        # Set by drain(): StartRuns streams then send their notice and start no further run.
        self._draining = asyncio.Event()
        self.start_stream_stats = StartStreamStats()
        self._attestor = attestor
        self._catalog = catalog
        self._supervisor = supervisor
        self._registry = registry
        self._bridge = bridge
        self._log = log or logging.getLogger("runwire.execution")
        self._engine_config = EngineConfig(
            executor_id=settings.executor_id,
            heartbeat_interval_s=settings.heartbeat_interval_s,
            cancel_grace_s=settings.cancel_grace_s,
            tool_timeout_s=settings.tool_timeout_s,
            event_queue_size=settings.event_queue_size,
            publish_batch_size=settings.publish_batch_size,
            max_payload_bytes=settings.max_payload_bytes,
            publish_retry_s=settings.publish_retry_s,
            registry_retry_s=settings.registry_retry_s,
            queue_poll_initial_s=settings.queue_poll_initial_s,
            queue_poll_max_s=settings.queue_poll_max_s,
            input_timeout_s=settings.input_timeout_s,
            input_poll_s=settings.input_poll_s,
        )
        self._announcer = Announcer(
            registry=registry,
            bridge=bridge,
            track=supervisor.track,
            publish_retry=Backoff(budget_s=settings.publish_retry_s),
            log=self._log,
        )

    def _identity(self, ctx: context_pb2.UserContext) -> RunIdentity:
        return RunIdentity(ctx, attestor=self._attestor, ttl_s=self._settings.context_ttl_s)

    def drain(self) -> None:
        """Drain the ``StartRuns`` streams: see :mod:`execution_service.start_stream` ("Draining")."""
        self._draining.set()

    @unary
    async def StartRun(
        self, request: execution_pb2.StartRunRequest, context: Context
    ) -> execution_pb2.StartRunResponse:
        return await self.start(request.user_context, request, context)

    @server_stream
    async def StartRuns(
        self, requests: AsyncIterator[execution_pb2.StartRunsRequest], context: Context
    ) -> AsyncIterator[execution_pb2.StartRunsResponse]:
        # Response headers at once: they tell the sender that nothing was started before them
        # (a stream that breaks earlier may be sent again), and that this service unpacks bundles.
        await context.send_initial_metadata(bundles.ANNOUNCEMENT)
        stream = StartStream(
            self,
            context,
            draining=self._draining,
            bundle_answers=bundles.announced(context.invocation_metadata()),
            on_read=self.start_stream_stats.count,
            telemetry=self._telemetry,
        )
        async for response in stream.serve(requests):
            yield response

    async def start(
        self, user_context: context_pb2.UserContext, request: execution_pb2.StartRunRequest, context: Context
    ) -> execution_pb2.StartRunResponse:
        """``StartRun`` as ``user_context`` (``request.user_context`` is not read), for the call and the stream."""
        ctx = validate_context(user_context, attestor=self._attestor)
        # Once the registry is asked for the run, the run is created *and started* whatever the
        # caller does: a call cancelled while CreateRun was in flight (the gateway restarting, a
        # client gone) would otherwise leave a run the registry has and no engine runs, which
        # only the death sweeper ends, as agent_death. A call cancelled before that creates nothing.
        admission = asyncio.ensure_future(self._admit(request, ctx, context, caller=asyncio.current_task()))
        try:
            run, log, timeout_s = await asyncio.shield(admission)
        except asyncio.CancelledError:
            admission.add_done_callback(self._admitted_without_caller)
            raise
        log.info("run accepted", extra={"timeout_s": timeout_s})
        return execution_pb2.StartRunResponse(run=run)

    async def _admit(
        self,
        request: execution_pb2.StartRunRequest,
        ctx: context_pb2.UserContext,
        context: Context,
        *,
        caller: asyncio.Task[Any] | None,
    ) -> tuple[run_pb2.Run, logging.LoggerAdapter, float]:  # type: ignore[type-arg]
        """Create the run and start its engine; the run, its logger and its timeout."""
        # Until the run is started (or refused), a drain waits for this call: see RunSupervisor.drain.
        async with self._supervisor.admitting():
            spec = self._catalog.agent(request.agent)
            if spec.unavailable_reason:  # listed, but not configured on this server (the llm agent)
                raise FailedPrecondition(spec.unavailable_reason)
            run_input = parse_input(request.input_json)
            spec.check_input(run_input.value)
            timeout_s = effective_timeout(
                spec.timeout_s, self._settings.default_timeout_s, request.timeout_seconds
            )
            # Attested once for the whole run; on a new thread when the caller named none.
            identity = self._identity(new_run_context(ctx))
            if caller is not None and caller.cancelling():
                raise asyncio.CancelledError  # nobody waits for this run any more: do not create it
            created = await self._registry.create_run(
                identity.context(),
                agent=spec.name,
                input_json=run_input.redacted_json,
                multitask_strategy=request.multitask_strategy,
                executor_id=self._settings.executor_id,
                timeout_seconds=max(1, round(timeout_s)),
                # Created RUNNING unless it queues behind its thread: two round trips less.
                initial_state=run_pb2.RUN_STATE_RUNNING,
                # So that a CreateRun whose answer was lost with its stream can be sent again.
                create_key=new_id("create"),
            )
            run = created.run
            identity.bind_run(run.run_id)
            run_ctx = identity.context()
            log = bind(self._log, run_ctx, agent=spec.name)
            if created.interrupted:
                await self._announce_interrupted(run_ctx, created.interrupted, context)
            engine = RunEngine(
                spec=spec,
                run=run,
                identity=identity,
                run_input=run_input,
                timeout_s=timeout_s,
                tools=self._catalog.tools_of(spec),
                registry=self._registry,
                bridge=self._bridge,
                config=self._engine_config,
                log=log,
            )
            try:
                self._supervisor.start(engine)
            except Unavailable:
                await self._announcer.end_run(
                    run_ctx,
                    failure(EXECUTOR_SHUTDOWN, EXECUTOR_SHUTDOWN_MESSAGE),
                    wait_s=time_left(context, at_most=self._settings.call_timeout_s),
                )
                raise
        return run, log, timeout_s

    def _admitted_without_caller(self, admission: asyncio.Future[Any]) -> None:
        """Log how a run whose StartRun call was cancelled came out (its events reach the owner)."""
        if admission.cancelled():
            return
        error = admission.exception()
        if error is None:
            _, log, _ = admission.result()
            log.info("run started after its caller went away")
        elif not isinstance(error, asyncio.CancelledError):
            self._log.warning("run not started after its caller went away", extra={"error": repr(error)})

    async def _announce_interrupted(
        self, ctx: context_pb2.UserContext, interrupted: Sequence[run_pb2.Run], context: Context
    ) -> None:
        """Stop the interrupted runs that execute here, and announce the end of each."""
        announcements = []
        for old in interrupted:
            engine = self._supervisor.find(old.run_id, owner=owner_of(ctx))
            if engine is not None:
                engine.stop_silently(old, INTERRUPT_REASON)
            announcements.append(self._announcer.announce(ctx, old, Outcome.cancelled(INTERRUPT_REASON)))
            self._log.info("run interrupted", extra={"run_id": old.run_id, "local": engine is not None})
        # The old runs' ends reach the user before the new run's first event, as a rule.
        wait_s = time_left(context, at_most=INTERRUPT_ANNOUNCE_WAIT_S)
        await asyncio.wait(announcements, timeout=wait_s)

    @unary
    async def CancelRun(
        self, request: execution_pb2.CancelRunRequest, context: Context
    ) -> execution_pb2.CancelRunResponse:
        ctx = validate_context(request.user_context, attestor=self._attestor, require=("run_id",))
        reason = bounded_detail(request.reason.strip()) or DEFAULT_CANCEL_REASON
        engine = self._supervisor.find(ctx.run_id, owner=owner_of(ctx))
        ctx = self._identity(ctx).context()  # attested once for this call's peer calls
        if engine is not None:
            # Runs here: the engine records `cancelled` and announces agent_cancelled itself.
            engine.request_cancel(reason)
            stop_s = self._settings.cancel_grace_s + self._engine_config.hard_stop_s + 1.0
            await engine.wait_finished(time_left(context, at_most=stop_s))
            return execution_pb2.CancelRunResponse(run=await self._registry.get_run(ctx))
        # Not running here (finished, or on another replica): whoever wins the transition announces.
        run = await self._announcer.end_run(
            ctx,
            Outcome.cancelled(reason),
            wait_s=time_left(context, at_most=self._settings.call_timeout_s),
        )
        return execution_pb2.CancelRunResponse(run=run)

    @unary
    async def RespondRun(
        self, request: execution_pb2.RespondRunRequest, context: Context
    ) -> execution_pb2.RespondRunResponse:
        ctx = validate_context(request.user_context, attestor=self._attestor, require=("run_id",))
        answer = parse_answer(request.request_id, request.response_json)
        ctx = self._identity(ctx).context()  # attested once for this call's peer calls
        question, _ = await self._registry.get_input(ctx, request.request_id)
        if question.response_json:
            raise FailedPrecondition(f"request {request.request_id!r} was already answered")
        problem = answer_problem(question, answer)
        if problem is not None:
            raise InvalidArgument(problem)
        run, _ = await self._registry.answer_input(ctx, request.request_id, request.response_json)
        engine = self._supervisor.find(ctx.run_id, owner=owner_of(ctx))
        if engine is not None:  # runs here: hand the answer over now rather than at its next poll
            engine.inputs.deliver(request.request_id, request.response_json)
        return execution_pb2.RespondRunResponse(run=run)

    @unary
    async def ListAgents(
        self, request: execution_pb2.ListAgentsRequest, context: Context
    ) -> execution_pb2.ListAgentsResponse:
        validate_context(request.user_context, attestor=self._attestor)
        tools = self._catalog.tools
        return execution_pb2.ListAgentsResponse(
            agents=[
                execution_pb2.AgentInfo(
                    name=agent.name,
                    description=agent.description,
                    tools=[
                        execution_pb2.ToolInfo(
                            name=name,
                            description=tools[name].tool.description,
                            parameters_schema_json=tools[name].parameters_json,
                        )
                        for name in agent.tools
                    ],
                )
                for agent in self._catalog.agents
            ]
        )
