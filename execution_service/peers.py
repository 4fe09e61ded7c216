"""Clients of the registry and the bridge, and the one place peer errors are mapped.

The engine and the servicer talk to the :class:`RegistryPort` and
:class:`BridgePort` protocols; :class:`GrpcRegistry` implements the first over
the process's channel, :class:`~execution_service.publisher.StreamPublisher`
the second. Callers pass contexts that are already attested (a run's
:class:`~execution_service.identity.RunIdentity`, minted once per run). Every
registry call carries a deadline and turns a ``grpc.aio.AioRpcError`` into the
matching ``runwire_common.errors`` error with the peer's message, so a registry
``RESOURCE_EXHAUSTED`` reaches the client unchanged. ``CreateRun``,
``TransitionRun`` and ``Heartbeat`` travel over the registry's ``WriteRuns`` stream when the
process has one (:mod:`execution_service.registry_writes`), with the same
errors.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, TypeVar

import grpc

from runwire.bridge.v1 import bridge_pb2
from runwire.common.v1 import context_pb2, event_pb2, run_pb2
from runwire.registry.v1 import registry_pb2, registry_pb2_grpc
from runwire_common.errors import map_rpc_error

if TYPE_CHECKING:
    from execution_service.outcomes import TerminalEvent
    from execution_service.registry_writes import RunWrites

REGISTRY_SERVICE = registry_pb2.DESCRIPTOR.services_by_name["RegistryService"].full_name
BRIDGE_SERVICE = bridge_pb2.DESCRIPTOR.services_by_name["BridgeService"].full_name

T = TypeVar("T")


class WritesUnsupported(Exception):
    """The registry has no ``WriteRuns`` stream; nothing was carried out: use the unary call."""


M = TypeVar(
    "M", registry_pb2.CreateRunRequest, registry_pb2.TransitionRunRequest, registry_pb2.HeartbeatRequest
)


def _with_context(request: M, ctx: context_pb2.UserContext) -> M:
    """A copy of ``request`` carrying ``ctx``, for the unary call."""
    message = type(request)()
    message.CopyFrom(request)
    message.user_context.CopyFrom(ctx)
    return message


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
        create_key: str = "",
    ) -> CreatedRun: ...

    async def transition(
        self,
        ctx: context_pb2.UserContext,
        to_state: run_pb2.RunState.ValueType,
        *,
        error: run_pb2.RunError | None = None,
        result_json: str = "",
        through_completing: bool = False,
        end_event: TerminalEvent | None = None,
        messages: Sequence[run_pb2.ThreadMessage] = (),
    ) -> run_pb2.Run:
        """Move the run to ``to_state``; with ``messages`` (completing only), store its thread turn too."""
        ...

    async def heartbeat(self, ctx: context_pb2.UserContext, *, executor_id: str) -> run_pb2.Run: ...

    async def get_run(self, ctx: context_pb2.UserContext) -> run_pb2.Run: ...

    async def request_input(self, ctx: context_pb2.UserContext, request: run_pb2.InputRequest) -> run_pb2.Run:
        """Move RUNNING ``ctx.run_id`` to WAITING with ``request`` pending; return the run."""
        ...

    async def get_input(
        self, ctx: context_pb2.UserContext, request_id: str
    ) -> tuple[run_pb2.InputRequest, run_pb2.Run]:
        """One input request of ``ctx.run_id`` (with its answer once given) and the run as it is now."""
        ...

    async def answer_input(
        self, ctx: context_pb2.UserContext, request_id: str, response_json: str
    ) -> tuple[run_pb2.Run, run_pb2.InputRequest]:
        """Record the answer and move the WAITING run back to RUNNING; return both."""
        ...

    async def append_messages(
        self, ctx: context_pb2.UserContext, messages: Sequence[run_pb2.ThreadMessage]
    ) -> int:
        """Store what ``ctx.run_id`` adds to ``ctx.thread_id``; how many were stored (0 the second time)."""
        ...

    async def get_thread(
        self, ctx: context_pb2.UserContext, *, max_messages: int = 0
    ) -> tuple[run_pb2.Thread, list[run_pb2.ThreadMessage]]:
        """``ctx.thread_id`` and its messages, oldest first (only the newest ``max_messages`` if > 0)."""
        ...


class BridgePort(Protocol):
    """What the execution service needs from the bridge.

    ``publish`` sends one owner's events (``ctx`` attested) and answers the
    ``event_id`` of each event, ``""`` for one the bridge ignored (a duplicate
    seq, or after the run's terminal event). It raises :class:`Unavailable`
    when the batch may be resent, another ``RunwireError`` when it was refused.
    """

    async def publish(
        self, ctx: context_pb2.UserContext, events: Sequence[event_pb2.RunEvent]
    ) -> Sequence[str]: ...


class GrpcRegistry:
    """:class:`RegistryPort` over a ``grpc.aio`` channel; contexts arrive attested."""

    def __init__(
        self, channel: grpc.aio.Channel, *, call_timeout_s: float, writes: RunWrites | None = None
    ) -> None:
        self._timeout = call_timeout_s
        self._stub = registry_pb2_grpc.RegistryServiceStub(channel)
        # CreateRun, TransitionRun and Heartbeat go over the registry's WriteRuns stream when there is one.
        self._writes = writes

    async def _call(self, invoke: Callable[[float], Awaitable[T]]) -> T:
        try:
            return await invoke(self._timeout)
        except grpc.aio.AioRpcError as exc:
            raise map_rpc_error(exc, peer="registry") from None

    async def _written(
        self, over_stream: Callable[[RunWrites], Awaitable[T]], unary: Callable[[float], Awaitable[T]]
    ) -> T:
        """A write over the ``WriteRuns`` stream, or the unary call where the registry has none."""
        writes = self._writes
        if writes is not None and writes.supported:
            try:
                return await over_stream(writes)
            except WritesUnsupported:
                pass  # nothing was carried out
        return await self._call(unary)

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
        create_key: str = "",
    ) -> CreatedRun:
        request = registry_pb2.CreateRunRequest(
            agent=agent,
            input_json=input_json,
            multitask_strategy=multitask_strategy,
            executor_id=executor_id,
            timeout_seconds=timeout_seconds,
            initial_state=initial_state,
            create_key=create_key,
        )
        response = await self._written(
            lambda writes: writes.create_run(ctx, request),
            lambda t: self._stub.CreateRun(_with_context(request, ctx), timeout=t),
        )
        return CreatedRun(run=response.run, interrupted=tuple(response.interrupted_runs))

    async def transition(
        self,
        ctx: context_pb2.UserContext,
        to_state: run_pb2.RunState.ValueType,
        *,
        error: run_pb2.RunError | None = None,
        result_json: str = "",
        through_completing: bool = False,
        end_event: TerminalEvent | None = None,
        messages: Sequence[run_pb2.ThreadMessage] = (),
    ) -> run_pb2.Run:
        request = registry_pb2.TransitionRunRequest(
            to_state=to_state,
            error=error,
            result_json=result_json,
            through_completing=through_completing,
            messages=messages,
        )
        if end_event is not None:
            # Kept as the run's end notice: the registry delivers it if our publication never arrives.
            request.end_event_type = end_event.type
            request.end_payload_json = end_event.payload_json
        response = await self._written(
            lambda writes: writes.transition_run(ctx, request),
            lambda t: self._stub.TransitionRun(_with_context(request, ctx), timeout=t),
        )
        if messages and not response.messages_stored:
            # A registry older than TransitionRunRequest.messages ignored them: store them the old way.
            await self.append_messages(ctx, messages)
        return response.run

    async def heartbeat(self, ctx: context_pb2.UserContext, *, executor_id: str) -> run_pb2.Run:
        request = registry_pb2.HeartbeatRequest(executor_id=executor_id)
        response = await self._written(
            lambda writes: writes.heartbeat(ctx, request),
            lambda t: self._stub.Heartbeat(_with_context(request, ctx), timeout=t),
        )
        return response.run

    async def get_run(self, ctx: context_pb2.UserContext) -> run_pb2.Run:
        request = registry_pb2.GetRunRequest(user_context=ctx)
        response = await self._call(lambda t: self._stub.GetRun(request, timeout=t))
        return response.run

    async def request_input(self, ctx: context_pb2.UserContext, request: run_pb2.InputRequest) -> run_pb2.Run:
        message = registry_pb2.RequestInputRequest(user_context=ctx, input=request)
        response = await self._call(lambda t: self._stub.RequestInput(message, timeout=t))
        return response.run

    async def get_input(
        self, ctx: context_pb2.UserContext, request_id: str
    ) -> tuple[run_pb2.InputRequest, run_pb2.Run]:
        request = registry_pb2.GetInputRequest(user_context=ctx, request_id=request_id)
        response = await self._call(lambda t: self._stub.GetInput(request, timeout=t))
        return response.input, response.run

    async def answer_input(
        self, ctx: context_pb2.UserContext, request_id: str, response_json: str
    ) -> tuple[run_pb2.Run, run_pb2.InputRequest]:
        request = registry_pb2.AnswerInputRequest(
            user_context=ctx, request_id=request_id, response_json=response_json
        )
        response = await self._call(lambda t: self._stub.AnswerInput(request, timeout=t))
        return response.run, response.input

    async def append_messages(
        self, ctx: context_pb2.UserContext, messages: Sequence[run_pb2.ThreadMessage]
    ) -> int:
        request = registry_pb2.AppendMessagesRequest(user_context=ctx, messages=messages)
        response = await self._call(lambda t: self._stub.AppendMessages(request, timeout=t))
        return response.stored

    async def get_thread(
        self, ctx: context_pb2.UserContext, *, max_messages: int = 0
    ) -> tuple[run_pb2.Thread, list[run_pb2.ThreadMessage]]:
        request = registry_pb2.GetThreadRequest(user_context=ctx, max_messages=max_messages)
        response = await self._call(lambda t: self._stub.GetThread(request, timeout=t))
        return response.thread, list(response.messages)
