"""Helpers for the registry tests: a client wrapper and status-code helpers."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import grpc

from registry_service.app import running_service
from registry_service.settings import RegistrySettings
from runwire.common.v1 import context_pb2, run_pb2
from runwire.registry.v1 import registry_pb2, registry_pb2_grpc
from runwire_common.ids import new_id
from runwire_common.server import GrpcServer

CALL_TIMEOUT_S = 20.0

# The moves that take a fresh (pending) run to each state.
PATHS: Mapping[int, tuple[int, ...]] = MappingProxyType(
    {
        run_pb2.RUN_STATE_PENDING: (),
        run_pb2.RUN_STATE_STARTING: (run_pb2.RUN_STATE_STARTING,),
        run_pb2.RUN_STATE_RUNNING: (run_pb2.RUN_STATE_STARTING, run_pb2.RUN_STATE_RUNNING),
        run_pb2.RUN_STATE_COMPLETING: (
            run_pb2.RUN_STATE_STARTING,
            run_pb2.RUN_STATE_RUNNING,
            run_pb2.RUN_STATE_COMPLETING,
        ),
        run_pb2.RUN_STATE_COMPLETED: (
            run_pb2.RUN_STATE_STARTING,
            run_pb2.RUN_STATE_RUNNING,
            run_pb2.RUN_STATE_COMPLETING,
            run_pb2.RUN_STATE_COMPLETED,
        ),
        run_pb2.RUN_STATE_FAILED: (run_pb2.RUN_STATE_FAILED,),
        run_pb2.RUN_STATE_TIMEOUT: (run_pb2.RUN_STATE_TIMEOUT,),
        run_pb2.RUN_STATE_CANCELLED: (run_pb2.RUN_STATE_CANCELLED,),
        run_pb2.RUN_STATE_DEAD: (run_pb2.RUN_STATE_STARTING, run_pb2.RUN_STATE_DEAD),
    }
)


@dataclass
class Registry:
    """A running registry and a client of it."""

    server: GrpcServer
    stub: registry_pb2_grpc.RegistryServiceAsyncStub
    settings: RegistrySettings
    make_context: Callable[..., context_pb2.UserContext]

    async def create(self, user: str, **fields: Any) -> run_pb2.Run:
        """The run :meth:`create_run` creates with ``fields``."""
        return (await self.create_run(user, **fields)).run

    async def create_run(
        self,
        user: str,
        *,
        thread_id: str | None = None,
        agent: str = "scripted",
        input_json: str = '{"steps": []}',
        strategy: int = run_pb2.MULTITASK_STRATEGY_UNSPECIFIED,
        executor_id: str = "executor-a",
        timeout_seconds: int = 0,
        initial_state: int = run_pb2.RUN_STATE_UNSPECIFIED,
        create_key: str = "",
    ) -> registry_pb2.CreateRunResponse:
        """The whole ``CreateRun`` answer (:meth:`create` keeps only its run)."""
        ctx = self.make_context(user, thread_id=thread_id or new_id("thread"))
        return await self.stub.CreateRun(
            registry_pb2.CreateRunRequest(
                user_context=ctx,
                agent=agent,
                input_json=input_json,
                multitask_strategy=strategy,  # type: ignore[arg-type]
                executor_id=executor_id,
                timeout_seconds=timeout_seconds,
                initial_state=initial_state,  # type: ignore[arg-type]
                create_key=create_key,
            ),
            timeout=CALL_TIMEOUT_S,
        )

    def run_context(self, run: run_pb2.Run, *, user: str | None = None) -> context_pb2.UserContext:
        return self.make_context(
            user or run.user_id, tenant_id=run.tenant_id, thread_id=run.thread_id, run_id=run.run_id
        )

    async def transition(
        self,
        run: run_pb2.Run,
        to_state: int,
        *,
        user: str | None = None,
        expected_version: int = 0,
        error: run_pb2.RunError | None = None,
        result_json: str = "",
        through_completing: bool = False,
    ) -> run_pb2.Run:
        response = await self.stub.TransitionRun(
            registry_pb2.TransitionRunRequest(
                user_context=self.run_context(run, user=user),
                to_state=to_state,  # type: ignore[arg-type]
                expected_version=expected_version,
                error=error,
                result_json=result_json,
                through_completing=through_completing,
            ),
            timeout=CALL_TIMEOUT_S,
        )
        return response.run

    async def list_thread(self, user: str, thread_id: str) -> list[run_pb2.Run]:
        """Every run of ``user`` on ``thread_id``, newest first."""
        response = await self.stub.ListRuns(
            registry_pb2.ListRunsRequest(user_context=self.make_context(user), thread_id=thread_id),
            timeout=CALL_TIMEOUT_S,
        )
        return list(response.runs)

    async def get(self, run: run_pb2.Run, *, user: str | None = None) -> run_pb2.Run:
        response = await self.stub.GetRun(
            registry_pb2.GetRunRequest(user_context=self.run_context(run, user=user)), timeout=CALL_TIMEOUT_S
        )
        return response.run

    async def heartbeat(
        self, run: run_pb2.Run, *, user: str | None = None, executor_id: str = ""
    ) -> run_pb2.Run:
        response = await self.stub.Heartbeat(
            registry_pb2.HeartbeatRequest(
                user_context=self.run_context(run, user=user), executor_id=executor_id
            ),
            timeout=CALL_TIMEOUT_S,
        )
        return response.run

    async def run_in(self, user: str, state: int, *, thread_id: str | None = None) -> run_pb2.Run:
        """A fresh run of ``user`` moved to ``state`` along the legal path (``waiting``: asked for input)."""
        run = await self.create(user, thread_id=thread_id)
        for step in PATHS[run_pb2.RUN_STATE_RUNNING if state == run_pb2.RUN_STATE_WAITING else state]:
            run = await self.transition(run, step)
        if state == run_pb2.RUN_STATE_WAITING:
            run = await self.request_input(run)
        assert run.state == state
        return run

    async def request_input(
        self,
        run: run_pb2.Run,
        *,
        request_id: str = "ask_0123456789abcdef",
        kind: int = run_pb2.INPUT_KIND_INPUT,
        prompt: str = "Which city?",
        user: str | None = None,
        **fields: Any,
    ) -> run_pb2.Run:
        asked = run_pb2.InputRequest(request_id=request_id, kind=kind, prompt=prompt, **fields)  # type: ignore[arg-type]
        response = await self.stub.RequestInput(
            registry_pb2.RequestInputRequest(user_context=self.run_context(run, user=user), input=asked),
            timeout=CALL_TIMEOUT_S,
        )
        return response.run

    async def answer_input(
        self,
        run: run_pb2.Run,
        *,
        request_id: str = "ask_0123456789abcdef",
        response_json: str = '{"text": "Paris"}',
        user: str | None = None,
    ) -> registry_pb2.AnswerInputResponse:
        return await self.stub.AnswerInput(
            registry_pb2.AnswerInputRequest(
                user_context=self.run_context(run, user=user),
                request_id=request_id,
                response_json=response_json,
            ),
            timeout=CALL_TIMEOUT_S,
        )

    async def get_input(
        self, run: run_pb2.Run, *, request_id: str = "ask_0123456789abcdef", user: str | None = None
    ) -> registry_pb2.GetInputResponse:
        return await self.stub.GetInput(
            registry_pb2.GetInputRequest(
                user_context=self.run_context(run, user=user), request_id=request_id
            ),
            timeout=CALL_TIMEOUT_S,
        )

    async def append_messages(
        self,
        run: run_pb2.Run,
        messages: Sequence[run_pb2.ThreadMessage],
        *,
        user: str | None = None,
        thread_id: str | None = None,
    ) -> int:
        ctx = self.make_context(user or run.user_id, thread_id=thread_id or run.thread_id, run_id=run.run_id)
        response = await self.stub.AppendMessages(
            registry_pb2.AppendMessagesRequest(user_context=ctx, messages=messages), timeout=CALL_TIMEOUT_S
        )
        return response.stored

    async def list_threads(
        self, user: str, *, page_size: int = 0, page_token: str = ""
    ) -> registry_pb2.ListThreadsResponse:
        return await self.stub.ListThreads(
            registry_pb2.ListThreadsRequest(
                user_context=self.make_context(user), page_size=page_size, page_token=page_token
            ),
            timeout=CALL_TIMEOUT_S,
        )

    async def get_thread(
        self, user: str, thread_id: str, *, max_messages: int = 0
    ) -> registry_pb2.GetThreadResponse:
        return await self.stub.GetThread(
            registry_pb2.GetThreadRequest(
                user_context=self.make_context(user, thread_id=thread_id), max_messages=max_messages
            ),
            timeout=CALL_TIMEOUT_S,
        )

    async def delete_thread(self, user: str, thread_id: str) -> registry_pb2.DeleteThreadResponse:
        return await self.stub.DeleteThread(
            registry_pb2.DeleteThreadRequest(user_context=self.make_context(user, thread_id=thread_id)),
            timeout=CALL_TIMEOUT_S,
        )


async def status_of(call: Awaitable[object]) -> grpc.StatusCode:
    """The status code a call ends with (``OK`` when it succeeds)."""
    try:
        await call
    except grpc.aio.AioRpcError as error:
        return error.code()
    return grpc.StatusCode.OK


async def rpc_error(call: Awaitable[object]) -> grpc.aio.AioRpcError:
    try:
        await call
    except grpc.aio.AioRpcError as error:
        return error
    raise AssertionError("the call succeeded but an error was expected")


@asynccontextmanager
async def open_registry(
    settings: RegistrySettings, make_context: Callable[..., context_pb2.UserContext]
) -> AsyncIterator[Registry]:
    """A registry process-in-a-context with ``settings``, and a client of it."""
    async with (
        running_service(settings) as server,
        grpc.aio.insecure_channel(server.address) as channel,
    ):
        yield Registry(
            server=server,
            stub=registry_pb2_grpc.RegistryServiceStub(channel),
            settings=settings,
            make_context=make_context,
        )


async def eventually(
    check: Callable[[], Awaitable[bool]], *, timeout_s: float = 15.0, interval_s: float = 0.05
) -> None:
    """Wait until ``check()`` is true; fail after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout_s} s")
        await asyncio.sleep(interval_s)
