"""Clients of the registry and the bridge, and the one place peer errors are mapped.

The engine and the servicer talk to the :class:`RegistryPort` and
:class:`BridgePort` protocols; :class:`GrpcRegistry` and :class:`GrpcBridge`
implement them over the process's channels. Every call re-mints the caller's
context (so a long run never outlives it), carries a deadline, and turns a
``grpc.aio.AioRpcError`` into the matching ``runwire_common.errors`` error with
the peer's message, so a registry ``RESOURCE_EXHAUSTED`` reaches the client
unchanged.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Protocol, TypeVar

import grpc

from runwire.bridge.v1 import bridge_pb2, bridge_pb2_grpc
from runwire.common.v1 import context_pb2, event_pb2, run_pb2
from runwire.registry.v1 import registry_pb2, registry_pb2_grpc
from runwire_common import errors
from runwire_common.attestation import ContextAttestor

REGISTRY_SERVICE = registry_pb2.DESCRIPTOR.services_by_name["RegistryService"].full_name
BRIDGE_SERVICE = bridge_pb2.DESCRIPTOR.services_by_name["BridgeService"].full_name

_ERRORS_BY_CODE: Mapping[grpc.StatusCode, type[errors.RunwireError]] = MappingProxyType(
    {
        grpc.StatusCode.INVALID_ARGUMENT: errors.InvalidArgument,
        grpc.StatusCode.UNAUTHENTICATED: errors.Unauthenticated,
        grpc.StatusCode.PERMISSION_DENIED: errors.PermissionDenied,
        grpc.StatusCode.NOT_FOUND: errors.NotFound,
        grpc.StatusCode.FAILED_PRECONDITION: errors.FailedPrecondition,
        grpc.StatusCode.RESOURCE_EXHAUSTED: errors.ResourceExhausted,
        grpc.StatusCode.ALREADY_EXISTS: errors.AlreadyExists,
        grpc.StatusCode.ABORTED: errors.Aborted,
        grpc.StatusCode.UNAVAILABLE: errors.Unavailable,
        grpc.StatusCode.DEADLINE_EXCEEDED: errors.Unavailable,
        grpc.StatusCode.CANCELLED: errors.Unavailable,
    }
)

T = TypeVar("T")


def map_rpc_error(exc: grpc.aio.AioRpcError, *, peer: str) -> errors.RunwireError:
    """The domain error for a failed call to ``peer``; unknown codes become INTERNAL."""
    code = exc.code()
    details = exc.details() or ""
    error_class = _ERRORS_BY_CODE.get(code)
    if error_class is None:
        return errors.RunwireError(f"{peer} failed")
    if error_class is errors.Unavailable:
        return errors.Unavailable(f"{peer} is unavailable ({code.name.lower()})")
    return error_class(details or f"{peer}: {code.name.lower()}")


@dataclass(frozen=True)
class CreatedRun:
    """A new run, and the runs the registry cancelled for it (multitask ``interrupt``)."""

    run: run_pb2.Run
    interrupted: tuple[run_pb2.Run, ...] = ()


class RegistryPort(Protocol):
    """What the execution service needs from the registry."""

    async def create_run(
        self,
        ctx: context_pb2.UserContext,
        *,
        agent: str,
        input_json: str,
        multitask_strategy: run_pb2.MultitaskStrategy.ValueType,
        executor_id: str,
        timeout_seconds: int,
        initial_state: run_pb2.RunState.ValueType = run_pb2.RUN_STATE_PENDING,
    ) -> CreatedRun: ...

    async def transition(
        self,
        ctx: context_pb2.UserContext,
        to_state: run_pb2.RunState.ValueType,
        *,
        error: run_pb2.RunError | None = None,
        result_json: str = "",
        through_completing: bool = False,
    ) -> run_pb2.Run: ...

    async def heartbeat(self, ctx: context_pb2.UserContext, *, executor_id: str) -> run_pb2.Run: ...

    async def get_run(self, ctx: context_pb2.UserContext) -> run_pb2.Run: ...


class BridgePort(Protocol):
    """What the execution service needs from the bridge.

    ``publish`` answers the ``event_id`` of each event, ``""`` for one the
    bridge ignored (a duplicate seq, or after the run's terminal event).
    """

    async def publish(
        self, ctx: context_pb2.UserContext, events: Sequence[event_pb2.RunEvent]
    ) -> Sequence[str]: ...


class _Peer:
    def __init__(
        self, *, name: str, attestor: ContextAttestor, call_timeout_s: float, context_ttl_s: float
    ) -> None:
        self._name = name
        self._attestor = attestor
        self._timeout = call_timeout_s
        self._ttl = context_ttl_s

    def _mint(self, ctx: context_pb2.UserContext) -> context_pb2.UserContext:
        return self._attestor.mint(ctx, ttl_s=self._ttl)

    async def _call(self, invoke: Callable[[float], Awaitable[T]]) -> T:
        try:
            return await invoke(self._timeout)
        except grpc.aio.AioRpcError as exc:
            raise map_rpc_error(exc, peer=self._name) from None


class GrpcRegistry(_Peer):
    """:class:`RegistryPort` over a ``grpc.aio`` channel."""

    def __init__(
        self,
        channel: grpc.aio.Channel,
        *,
        attestor: ContextAttestor,
        call_timeout_s: float,
        context_ttl_s: float,
    ) -> None:
        super().__init__(
            name="registry", attestor=attestor, call_timeout_s=call_timeout_s, context_ttl_s=context_ttl_s
        )
        self._stub = registry_pb2_grpc.RegistryServiceStub(channel)

    async def create_run(
        self,
        ctx: context_pb2.UserContext,
        *,
        agent: str,
        input_json: str,
        multitask_strategy: run_pb2.MultitaskStrategy.ValueType,
        executor_id: str,
        timeout_seconds: int,
        initial_state: run_pb2.RunState.ValueType = run_pb2.RUN_STATE_PENDING,
    ) -> CreatedRun:
        request = registry_pb2.CreateRunRequest(
            user_context=self._mint(ctx),
            agent=agent,
            input_json=input_json,
            multitask_strategy=multitask_strategy,
            executor_id=executor_id,
            timeout_seconds=timeout_seconds,
            initial_state=initial_state,
        )
        response = await self._call(lambda t: self._stub.CreateRun(request, timeout=t))
        return CreatedRun(run=response.run, interrupted=tuple(response.interrupted_runs))

    async def transition(
        self,
        ctx: context_pb2.UserContext,
        to_state: run_pb2.RunState.ValueType,
        *,
        error: run_pb2.RunError | None = None,
        result_json: str = "",
        through_completing: bool = False,
    ) -> run_pb2.Run:
        request = registry_pb2.TransitionRunRequest(
            user_context=self._mint(ctx),
            to_state=to_state,
            error=error,
            result_json=result_json,
            through_completing=through_completing,
        )
        response = await self._call(lambda t: self._stub.TransitionRun(request, timeout=t))
        return response.run

    async def heartbeat(self, ctx: context_pb2.UserContext, *, executor_id: str) -> run_pb2.Run:
        request = registry_pb2.HeartbeatRequest(user_context=self._mint(ctx), executor_id=executor_id)
        response = await self._call(lambda t: self._stub.Heartbeat(request, timeout=t))
        return response.run

    async def get_run(self, ctx: context_pb2.UserContext) -> run_pb2.Run:
        request = registry_pb2.GetRunRequest(user_context=self._mint(ctx))
        response = await self._call(lambda t: self._stub.GetRun(request, timeout=t))
        return response.run


class GrpcBridge(_Peer):
    """:class:`BridgePort` over a ``grpc.aio`` channel."""

    def __init__(
        self,
        channel: grpc.aio.Channel,
        *,
        attestor: ContextAttestor,
        call_timeout_s: float,
        context_ttl_s: float,
    ) -> None:
        super().__init__(
            name="bridge", attestor=attestor, call_timeout_s=call_timeout_s, context_ttl_s=context_ttl_s
        )
        self._stub = bridge_pb2_grpc.BridgeServiceStub(channel)
        self.events_published = 0  # a counter for metrics

    async def publish(
        self, ctx: context_pb2.UserContext, events: Sequence[event_pb2.RunEvent]
    ) -> Sequence[str]:
        request = bridge_pb2.PublishRequest(user_context=self._mint(ctx), events=events)
        response = await self._call(lambda t: self._stub.Publish(request, timeout=t))
        self.events_published += len(events)
        return tuple(response.event_ids)
