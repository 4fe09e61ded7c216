"""Thin wrappers around the gateway's outbound gRPC calls.

Every unary call carries a freshly minted, attested ``UserContext`` (so a long
connection never sends an expired identity) and a deadline. gRPC status codes
become protocol error codes in one place, :func:`error_for_status`, without
leaking internals.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

import grpc

from gateway.auth import Identity
from gateway.starts import RunStarts, StartsUnsupported
from runwire.common.v1 import context_pb2, run_pb2
from runwire.execution.v1 import execution_pb2, execution_pb2_grpc
from runwire.registry.v1 import registry_pb2, registry_pb2_grpc
from runwire_common.attestation import ContextAttestor
from runwire_common.errors import bounded_detail
from runwire_common.ids import new_id

EXECUTION_SERVICE = "runwire.execution.v1.ExecutionService"
REGISTRY_SERVICE = "runwire.registry.v1.RegistryService"

_CODES: Mapping[grpc.StatusCode, str] = MappingProxyType(
    {
        grpc.StatusCode.INVALID_ARGUMENT: "invalid_argument",
        grpc.StatusCode.NOT_FOUND: "not_found",
        grpc.StatusCode.RESOURCE_EXHAUSTED: "resource_exhausted",
        grpc.StatusCode.FAILED_PRECONDITION: "failed_precondition",
        grpc.StatusCode.ALREADY_EXISTS: "failed_precondition",
        grpc.StatusCode.UNAVAILABLE: "unavailable",
        grpc.StatusCode.DEADLINE_EXCEEDED: "unavailable",
        grpc.StatusCode.UNAUTHENTICATED: "unauthenticated",
        grpc.StatusCode.PERMISSION_DENIED: "permission_denied",
    }
)
# Codes whose details are written for end users by the services (domain errors).
_SAFE_DETAILS = frozenset(
    {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.ALREADY_EXISTS,
        grpc.StatusCode.PERMISSION_DENIED,
    }
)


def error_for_status(code: grpc.StatusCode | None, details: str | None) -> tuple[str, str]:
    """``(protocol code, user-safe message)`` for a failed call."""
    if code is None:
        return "internal", "internal error"
    protocol_code = _CODES.get(code, "internal")
    if code in _SAFE_DETAILS and details:
        return protocol_code, bounded_detail(details)
    if protocol_code == "unavailable":
        return protocol_code, "service temporarily unavailable; retry shortly"
    if protocol_code == "unauthenticated":
        return protocol_code, "identity not accepted"
    return protocol_code, "internal error"


class ContextMinter:
    """Mints the attested contexts of one connection, never past the token's expiry."""

    __slots__ = ("_attestor", "_connection_id", "_identity", "_ttl_s")

    def __init__(
        self, attestor: ContextAttestor, identity: Identity, *, connection_id: str, ttl_s: float
    ) -> None:
        self._attestor = attestor
        self._identity = identity
        self._connection_id = connection_id
        self._ttl_s = ttl_s

    def mint(self, *, thread_id: str = "", run_id: str = "") -> context_pb2.UserContext:
        expires_at = min(self._identity.expires_at, time.time() + self._ttl_s)
        ctx = context_pb2.UserContext(
            user_id=self._identity.user_id,
            tenant_id=self._identity.tenant_id,
            roles=self._identity.roles,
            connection_id=self._connection_id,
            request_id=new_id("req"),
            thread_id=thread_id,
            run_id=run_id,
        )
        ctx.expires_at.seconds = int(expires_at)
        return self._attestor.mint(ctx)


@dataclass(frozen=True)
class RunPage:
    runs: list[run_pb2.Run]
    next_page_token: str


@dataclass(frozen=True)
class ThreadPage:
    threads: list[run_pb2.Thread]
    next_page_token: str


class Backends:
    """The peers of the gateway, over channels opened once per process.

    Runs start over the ``StartRuns`` streams of ``starts`` when there are any
    (:mod:`gateway.starts`), otherwise by a ``StartRun`` call each; every other
    request is a unary call. (Events come over the bridge's ``Fabric``
    streams, :mod:`gateway.fabric`.)
    """

    def __init__(
        self,
        *,
        execution: grpc.aio.Channel,
        registry: grpc.aio.Channel,
        call_timeout_s: float,
        starts: RunStarts | None = None,
    ) -> None:
        self._execution = execution_pb2_grpc.ExecutionServiceStub(execution)
        self._registry = registry_pb2_grpc.RegistryServiceStub(registry)
        self._timeout = call_timeout_s
        self._starts = starts

    async def start_run(
        self,
        ctx: context_pb2.UserContext,
        *,
        agent: str,
        input_json: str,
        multitask_strategy: int,
    ) -> run_pb2.Run:
        request = execution_pb2.StartRunRequest(
            agent=agent,
            input_json=input_json,
            multitask_strategy=multitask_strategy,  # type: ignore[arg-type]
        )
        starts = self._starts
        if starts is not None and starts.usable:
            try:
                return (await starts.start(ctx, request)).run
            except StartsUnsupported:
                pass  # an execution service older than this gateway: the call below
        request.user_context.CopyFrom(ctx)
        response = await self._execution.StartRun(request, timeout=self._timeout)
        return response.run

    async def cancel_run(self, ctx: context_pb2.UserContext, *, reason: str) -> run_pb2.Run:
        request = execution_pb2.CancelRunRequest(user_context=ctx, reason=reason)
        response = await self._execution.CancelRun(request, timeout=self._timeout)
        return response.run

    async def get_run(self, ctx: context_pb2.UserContext) -> run_pb2.Run:
        response = await self._registry.GetRun(
            registry_pb2.GetRunRequest(user_context=ctx), timeout=self._timeout
        )
        return response.run

    async def list_runs(
        self,
        ctx: context_pb2.UserContext,
        *,
        thread_id: str,
        state: int,
        page_size: int,
        page_token: str,
    ) -> RunPage:
        request = registry_pb2.ListRunsRequest(
            user_context=ctx,
            thread_id=thread_id,
            state=state,  # type: ignore[arg-type]
            page_size=page_size,
            page_token=page_token,
        )
        response = await self._registry.ListRuns(request, timeout=self._timeout)
        return RunPage(list(response.runs), response.next_page_token)

    async def respond_run(
        self, ctx: context_pb2.UserContext, *, request_id: str, response_json: str
    ) -> run_pb2.Run:
        request = execution_pb2.RespondRunRequest(
            user_context=ctx, request_id=request_id, response_json=response_json
        )
        response = await self._execution.RespondRun(request, timeout=self._timeout)
        return response.run

    async def list_threads(
        self, ctx: context_pb2.UserContext, *, page_size: int, page_token: str
    ) -> ThreadPage:
        request = registry_pb2.ListThreadsRequest(
            user_context=ctx, page_size=page_size, page_token=page_token
        )
        response = await self._registry.ListThreads(request, timeout=self._timeout)
        return ThreadPage(list(response.threads), response.next_page_token)

    async def get_thread(
        self, ctx: context_pb2.UserContext
    ) -> tuple[run_pb2.Thread, list[run_pb2.ThreadMessage]]:
        response = await self._registry.GetThread(
            registry_pb2.GetThreadRequest(user_context=ctx), timeout=self._timeout
        )
        return response.thread, list(response.messages)

    async def list_agents(self, ctx: context_pb2.UserContext) -> list[execution_pb2.AgentInfo]:
        response = await self._execution.ListAgents(
            execution_pb2.ListAgentsRequest(user_context=ctx), timeout=self._timeout
        )
        return list(response.agents)

    async def delete_thread(self, ctx: context_pb2.UserContext) -> None:
        await self._registry.DeleteThread(
            registry_pb2.DeleteThreadRequest(user_context=ctx), timeout=self._timeout
        )
