"""A StartRun call that goes away mid-way never leaves a run the registry has and nobody runs.

The gateway cancels its in-flight calls when it restarts, and a client may
hang up at any time. If that happens while CreateRun is on its way back, the
registry already holds the run (created ``running`` on this executor); before
the fix no engine ever ran it, and only the death sweeper ended it, with an
``agent_death`` as its one and only event (seen once in the key-rotation e2e
test). Now the run is started anyway, and its events reach its owner.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc

from execution_service.peers import CreatedRun
from execution_service.servicer import ExecutionServicer
from execution_service.start_stream import StartStream
from execution_service.supervisor import RunSupervisor
from runwire.common.v1 import context_pb2, run_pb2
from runwire.execution.v1 import execution_pb2
from tests.execution_service.fakes import FakeBridge, FakeRegistry, servicer_over

SCRIPT = '{"steps": [{"partial": "hello"}], "result": "done"}'


class SlowReplyRegistry(FakeRegistry):
    """Creates the run at once, then holds the reply until ``reply`` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.created = asyncio.Event()
        self.reply = asyncio.Event()
        self.create_calls = 0

    async def create_run(self, ctx: context_pb2.UserContext, **kwargs: Any) -> CreatedRun:
        self.create_calls += 1
        created = await super().create_run(ctx, **kwargs)
        self.created.set()
        await self.reply.wait()
        return created


class CallContext:
    def time_remaining(self) -> None:
        return None


def servicer_for(registry: FakeRegistry, bridge: FakeBridge) -> tuple[ExecutionServicer, RunSupervisor, Any]:
    under_test = servicer_over(registry, bridge)
    return under_test.servicer, under_test.supervisor, under_test.start_request(SCRIPT)


async def test_a_call_cancelled_while_create_run_is_in_flight_still_starts_the_run() -> None:
    registry, bridge = SlowReplyRegistry(), FakeBridge()
    servicer, supervisor, request = servicer_for(registry, bridge)
    call = asyncio.create_task(servicer.StartRun(request, CallContext()))  # type: ignore[arg-type]
    await asyncio.wait_for(registry.created.wait(), 5)
    call.cancel()
    registry.reply.set()
    await asyncio.gather(call, return_exceptions=True)
    assert call.cancelled()
    await supervisor.drain(finish_within_s=5.0, stop_within_s=1.0)

    (run,) = registry.runs.values()
    assert run.state == run_pb2.RUN_STATE_COMPLETED
    assert bridge.types(run.run_id) == ["agent_started", "partial_result", "agent_completed"]


async def test_a_call_cancelled_before_the_registry_is_asked_creates_no_run() -> None:
    registry, bridge = SlowReplyRegistry(), FakeBridge()
    servicer, supervisor, request = servicer_for(registry, bridge)
    call = asyncio.create_task(servicer.StartRun(request, CallContext()))  # type: ignore[arg-type]
    await asyncio.sleep(0)  # the call has begun: it validated the context and handed over
    assert not call.done()
    call.cancel()
    await asyncio.gather(call, return_exceptions=True)
    await asyncio.sleep(0.05)  # anything the call left behind would run now
    await supervisor.drain(finish_within_s=1.0, stop_within_s=1.0)
    assert call.cancelled()
    assert registry.create_calls == 0 and registry.runs == {}


async def test_every_start_gives_its_create_run_a_key_of_its_own() -> None:
    # The key lets a CreateRun whose answer was lost with its stream be sent again (registry_writes).
    registry, bridge = FakeRegistry(), FakeBridge()
    under_test = servicer_over(registry, bridge)
    for _ in range(3):
        await under_test.servicer.StartRun(under_test.start_request(SCRIPT), CallContext())  # type: ignore[arg-type]
    await under_test.supervisor.drain(finish_within_s=5.0, stop_within_s=1.0)
    assert len(registry.create_keys) == 3
    assert all(registry.create_keys) and len(set(registry.create_keys)) == 3


# The same over StartRuns: a start whose timeout_ms passes is cancelled like a call.


def stream_start(
    request: execution_pb2.StartRunRequest, *, timeout_ms: int
) -> execution_pb2.StartRunsRequest:
    item = execution_pb2.StartRunsRequest(start_id=7, start=request, timeout_ms=timeout_ms)
    item.user_context.CopyFrom(request.user_context)
    item.start.ClearField("user_context")
    return item


async def answers_of(
    stream: StartStream, requests: AsyncIterator[execution_pb2.StartRunsRequest]
) -> list[Any]:
    return [answer async for answer in stream.serve(requests)]


async def test_a_start_read_but_not_begun_before_its_timeout_creates_no_run() -> None:
    registry, bridge = FakeRegistry(), FakeBridge()
    servicer, supervisor, request = servicer_for(registry, bridge)

    async def requests() -> AsyncIterator[execution_pb2.StartRunsRequest]:
        yield stream_start(request, timeout_ms=20)
        time.sleep(0.1)  # noqa: ASYNC251 - on purpose: the loop is held up between reading the start and beginning it

    stream = StartStream(servicer, CallContext(), draining=asyncio.Event())  # type: ignore[arg-type]
    (answer,) = await answers_of(stream, requests())
    await supervisor.drain(finish_within_s=1.0, stop_within_s=1.0)
    assert answer.start_id == 7 and answer.code == grpc.StatusCode.DEADLINE_EXCEEDED.value[0]
    assert registry.runs == {} and bridge.events == []


async def test_a_start_whose_timeout_passes_while_create_run_is_in_flight_still_starts_the_run() -> None:
    registry, bridge = SlowReplyRegistry(), FakeBridge()
    servicer, supervisor, request = servicer_for(registry, bridge)
    done = asyncio.Event()

    async def requests() -> AsyncIterator[execution_pb2.StartRunsRequest]:
        yield stream_start(request, timeout_ms=200)
        await done.wait()

    stream = StartStream(servicer, CallContext(), draining=asyncio.Event())  # type: ignore[arg-type]
    answers = asyncio.create_task(answers_of(stream, requests()))
    await asyncio.wait_for(registry.created.wait(), 5)
    await asyncio.sleep(0.3)  # the timeout passes while CreateRun's answer is held back
    registry.reply.set()
    done.set()
    (answer,) = await asyncio.wait_for(answers, 5)
    await supervisor.drain(finish_within_s=5.0, stop_within_s=1.0)
    assert answer.code == grpc.StatusCode.DEADLINE_EXCEEDED.value[0]
    (run,) = registry.runs.values()
    assert run.state == run_pb2.RUN_STATE_COMPLETED
    assert bridge.types(run.run_id) == ["agent_started", "partial_result", "agent_completed"]
