"""``runwire.execution.v1.ExecutionService``: a thin adapter over the engine.

Each method validates the context, builds the request-scoped objects of this
call and calls domain code; ``@unary`` maps domain errors (including the ones
propagated from the registry) to status codes in one place.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import grpc

from execution_service.catalog import AgentCatalog
from execution_service.engine import EngineConfig, RunEngine
from execution_service.peers import BridgePort, RegistryPort
from execution_service.redaction import redact
from execution_service.settings import ExecutionSettings
from execution_service.supervisor import RunSupervisor
from runwire.common.v1 import context_pb2, run_pb2
from runwire.execution.v1 import execution_pb2, execution_pb2_grpc
from runwire_common.attestation import ContextAttestor
from runwire_common.context import validate_context
from runwire_common.errors import FailedPrecondition, InvalidArgument, Unavailable
from runwire_common.logs import bind
from runwire_common.servicer import unary

MAX_REASON_CHARS = 500
DEFAULT_CANCEL_REASON = "cancelled by user"

Context = grpc.aio.ServicerContext[Any, Any]


def parse_input(input_json: str) -> dict[str, Any]:
    """The agent input: a JSON object (an empty string means ``{}``)."""
    if not input_json.strip():
        return {}
    try:
        value = json.loads(input_json)
    except ValueError:
        raise InvalidArgument("input_json is not valid JSON") from None
    if not isinstance(value, dict):
        raise InvalidArgument("input_json must be a JSON object")
    return value


def effective_timeout(agent_timeout_s: float | None, default_s: float, requested_s: int) -> float:
    """The agent's limit (or the default), lowered by the request's ``timeout_seconds``."""
    if requested_s < 0:
        raise InvalidArgument("timeout_seconds must not be negative")
    limit = agent_timeout_s or default_s
    return min(limit, float(requested_s)) if requested_s > 0 else limit


def _with_run_id(ctx: context_pb2.UserContext, run_id: str) -> context_pb2.UserContext:
    out = context_pb2.UserContext()
    out.CopyFrom(ctx)
    out.run_id = run_id
    return out


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
    ) -> None:
        self._settings = settings
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
        )

    @unary
    async def StartRun(
        self, request: execution_pb2.StartRunRequest, context: Context
    ) -> execution_pb2.StartRunResponse:
        ctx = validate_context(request.user_context, attestor=self._attestor, require=("thread_id",))
        self._supervisor.check_open()
        spec = self._catalog.agent(request.agent)
        agent_input = parse_input(request.input_json)
        spec.check_input(agent_input)
        timeout_s = effective_timeout(
            spec.timeout_s, self._settings.default_timeout_s, request.timeout_seconds
        )
        # The run id is the registry's to assign, never the caller's.
        run = await self._registry.create_run(
            _with_run_id(ctx, ""),
            agent=spec.name,
            input_json=json.dumps(redact(agent_input)),
            multitask_strategy=request.multitask_strategy,
            executor_id=self._settings.executor_id,
            timeout_seconds=max(1, round(timeout_s)),
        )
        run_ctx = _with_run_id(ctx, run.run_id)
        log = bind(self._log, run_ctx, agent=spec.name)
        engine = RunEngine(
            spec=spec,
            run=run,
            user=run_ctx,
            agent_input=agent_input,
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
            error = run_pb2.RunError(code="executor_shutdown", message="the executor is shutting down")
            await self._registry.transition(run_ctx, run_pb2.RUN_STATE_FAILED, error=error)
            raise
        log.info("run accepted", extra={"timeout_s": timeout_s})
        return execution_pb2.StartRunResponse(run=run)

    @unary
    async def CancelRun(
        self, request: execution_pb2.CancelRunRequest, context: Context
    ) -> execution_pb2.CancelRunResponse:
        ctx = validate_context(request.user_context, attestor=self._attestor, require=("run_id",))
        reason = request.reason.strip()[:MAX_REASON_CHARS] or DEFAULT_CANCEL_REASON
        engine = self._supervisor.find(ctx.run_id, user_id=ctx.user_id)
        if engine is not None:
            # Runs here: the engine records `cancelled` and emits agent_cancelled itself.
            engine.request_cancel(reason)
            wait_s = min(self._settings.call_timeout_s / 2, self._settings.cancel_grace_s + 1.0)
            await engine.wait_finished(wait_s)
            return execution_pb2.CancelRunResponse(run=await self._registry.get_run(ctx))
        # Not running here (finished, or on another replica): record the cancel in the registry.
        # The replica that runs it learns it from its next heartbeat and emits agent_cancelled.
        error = run_pb2.RunError(code="cancelled", message=reason)
        try:
            run = await self._registry.transition(ctx, run_pb2.RUN_STATE_CANCELLED, error=error)
        except FailedPrecondition:
            run = await self._registry.get_run(ctx)
        return execution_pb2.CancelRunResponse(run=run)

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
