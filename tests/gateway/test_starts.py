"""The gateway's run starts over ``StartRuns`` streams, against scripted execution replicas.

Each replica is a real gRPC server on a loopback port whose ``StartRuns``
answers as its script says (run, refuse, drain, break), so every way a start
can end is played: spread over replicas, bundles, sending again where nothing
was carried out, never where something may have been, the fallback to the
unary call for an execution service without ``StartRuns``, and the deadline.
"""

from __future__ import annotations

import asyncio
import itertools
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import grpc
import pytest

from gateway.calls import Backends
from gateway.starts import MAX_SENDS, RunStarts, StartFailed
from gateway.stats import GatewayStats
from runwire.common.v1 import context_pb2, run_pb2
from runwire.execution.v1 import execution_pb2, execution_pb2_grpc
from runwire_common import bundles
from runwire_common.errors import status_code
from tests.gateway.fakes import serving

Answer = execution_pb2.StartRunsResponse
# What a replica does with one start: an answer, or None to leave it unanswered.
Script = Callable[[execution_pb2.StartRunsRequest], Answer | None]
UNAVAILABLE = grpc.StatusCode.UNAVAILABLE.value[0]


def run_of(name: str) -> Script:
    """Start every run: its id names this replica, its owner is the start's user."""
    counter = itertools.count(1)

    def script(item: execution_pb2.StartRunsRequest) -> Answer:
        run = run_pb2.Run(run_id=f"run_{name}_{next(counter)}", user_id=item.user_context.user_id)
        return Answer(started=execution_pb2.StartRunResponse(run=run))

    return script


class ScriptedExecution(execution_pb2_grpc.ExecutionServiceServicer):
    """``StartRuns`` as scripted; also a unary ``StartRun`` that starts a run."""

    def __init__(self, name: str, script: Script | None = None, *, hold: asyncio.Event | None = None) -> None:
        self.name = name
        self.script = script or run_of(name)
        self.hold = hold  # answers wait for it
        self.starts: list[execution_pb2.StartRunsRequest] = []
        self.messages = 0
        self.unary_calls = 0
        self.streams = 0
        self.half_closed = 0  # streams whose sender said it sends no more

    async def StartRun(
        self, request: execution_pb2.StartRunRequest, context: Any
    ) -> execution_pb2.StartRunResponse:
        self.unary_calls += 1
        return execution_pb2.StartRunResponse(
            run=run_pb2.Run(run_id=f"run_{self.name}_unary", user_id=request.user_context.user_id)
        )

    async def StartRuns(self, requests: AsyncIterator[Any], context: Any) -> AsyncIterator[Answer]:
        self.streams += 1
        await context.send_initial_metadata(bundles.ANNOUNCEMENT)
        outgoing: asyncio.Queue[Answer] = asyncio.Queue()

        async def answer(item: execution_pb2.StartRunsRequest) -> None:
            if self.hold is not None:
                await self.hold.wait()
            response = self.script(item)
            if response is not None:
                response.start_id = item.start_id
                await outgoing.put(response)

        async def read() -> None:
            async for message in requests:
                self.messages += 1
                for item in bundles.unbundled(message):
                    self.starts.append(item)
                    asyncio.get_running_loop().create_task(answer(item))
            self.half_closed += 1

        reader = asyncio.create_task(read())
        try:
            while not (reader.done() and outgoing.empty()):
                getter = asyncio.ensure_future(outgoing.get())
                done, _ = await asyncio.wait((getter, reader), return_when=asyncio.FIRST_COMPLETED)
                if getter in done:
                    yield getter.result()
                else:
                    getter.cancel()
        finally:
            reader.cancel()


class OldExecution(execution_pb2_grpc.ExecutionServiceServicer):
    """An execution service from before ``StartRuns``: only the unary call."""

    def __init__(self) -> None:
        self.unary_calls = 0

    async def StartRun(
        self, request: execution_pb2.StartRunRequest, context: Any
    ) -> execution_pb2.StartRunResponse:
        self.unary_calls += 1
        return execution_pb2.StartRunResponse(
            run=run_pb2.Run(run_id="run_old", user_id=request.user_context.user_id)
        )


@asynccontextmanager
async def replicas(*servicers: Any) -> AsyncIterator[list[str]]:
    async with AsyncExitStack() as stack:
        yield [
            await stack.enter_async_context(
                serving(servicer, execution_pb2_grpc.add_ExecutionServiceServicer_to_server)
            )
            for servicer in servicers
        ]


@asynccontextmanager
async def run_starts(
    addresses: list[str], *, timeout_s: float = 5.0
) -> AsyncIterator[tuple[RunStarts, GatewayStats]]:
    stats = GatewayStats()
    starts = RunStarts(
        "ipv4:" + ",".join(addresses),
        open_channel=grpc.aio.insecure_channel,
        timeout_s=timeout_s,
        stats=stats,
    )
    try:
        yield starts, stats
    finally:
        await starts.aclose()


def unused_address() -> str:
    """A loopback address whose port was bound and released: connections to it are refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"127.0.0.1:{port}"


def ctx(user: str) -> context_pb2.UserContext:
    return context_pb2.UserContext(user_id=user, request_id=f"req_{user}")


def request() -> execution_pb2.StartRunRequest:
    return execution_pb2.StartRunRequest(agent="scripted", input_json='{"steps": []}')


async def test_starts_spread_over_the_replicas_travel_bundled_and_each_gets_its_own_run() -> None:
    a, b = ScriptedExecution("a"), ScriptedExecution("b")
    async with replicas(a, b) as addresses, run_starts(addresses) as (starts, stats):
        # One start each first: a stream bundles once its replica's headers said it unpacks bundles.
        for user in ("first_a", "first_b"):
            await starts.start(ctx(user), request())
        users = [f"user_{n}" for n in range(200)]
        started = await asyncio.gather(*(starts.start(ctx(user), request()) for user in users))
    assert [response.run.user_id for response in started] == users
    assert len({response.run.run_id for response in started}) == 200
    assert [item.user_context.user_id for item in a.starts[:1] + b.starts[:1]] == ["first_a", "first_b"]
    a.starts, b.starts = a.starts[1:], b.starts[1:]
    # Every start carries its owner in field 1 and leaves the embedded context empty.
    for item in a.starts + b.starts:
        assert item.user_context.user_id and not item.start.user_context.ByteSize()
        assert item.start.agent == "scripted"
        assert 0 < item.timeout_ms <= 5000  # what is left of the call timeout
    assert len(a.starts) + len(b.starts) == 200
    assert len(a.starts) >= 60 and len(b.starts) >= 60, (len(a.starts), len(b.starts))
    # 200 starts at once queue up behind each other: far fewer messages than starts.
    assert a.messages + b.messages <= 2 + 20, (a.messages, b.messages)
    assert a.streams == b.streams == 1 and stats.start_streams_opened == 2
    assert stats.starts_sent_again == 0


@pytest.mark.parametrize(
    ("code", "message"),
    [
        (grpc.StatusCode.NOT_FOUND, "unknown agent 'nope'"),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, "user has 3 live runs"),
        (grpc.StatusCode.UNAUTHENTICATED, "context not attested"),
    ],
)
async def test_a_refusal_fails_the_start_with_its_code_and_message_and_the_stream_serves_on(
    code: grpc.StatusCode, message: str
) -> None:
    refusing = ScriptedExecution("a", lambda item: Answer(code=code.value[0], message=message))
    async with replicas(refusing) as addresses, run_starts(addresses) as (starts, stats):
        with pytest.raises(StartFailed) as failed:
            await starts.start(ctx("alice"), request())
        assert failed.value.code == code and failed.value.details == message
        refusing.script = run_of("a")
        assert (await starts.start(ctx("alice"), request())).run.user_id == "alice"
    assert refusing.streams == 1 and stats.starts_sent_again == 0


async def test_a_draining_replica_s_starts_go_to_the_other_one_and_its_stream_is_half_closed() -> None:
    draining = ScriptedExecution("a", lambda item: Answer(code=UNAVAILABLE, message="draining", drained=True))
    b = ScriptedExecution("b")
    async with replicas(draining, b) as addresses, run_starts(addresses) as (starts, stats):
        started = await asyncio.gather(*(starts.start(ctx(f"u{n}"), request()) for n in range(20)))
        assert all(response.run.run_id.startswith("run_b_") for response in started)
        # Marked down: later starts go straight to b.
        before = len(draining.starts)
        await asyncio.gather(*(starts.start(ctx(f"v{n}"), request()) for n in range(20)))
        assert len(draining.starts) == before
        assert draining.half_closed >= 1 and b.half_closed == 0
    assert len(b.starts) == 40 and stats.starts_sent_again == before


async def test_an_unavailable_answer_is_sent_again_to_another_replica() -> None:
    shutting_down = ScriptedExecution(
        "a", lambda item: Answer(code=UNAVAILABLE, message="this executor is shutting down")
    )
    b = ScriptedExecution("b")
    async with replicas(shutting_down, b) as addresses, run_starts(addresses) as (starts, stats):
        started = await asyncio.gather(*(starts.start(ctx(f"u{n}"), request()) for n in range(10)))
    assert all(response.run.run_id.startswith("run_b_") for response in started)
    assert len(b.starts) == 10 and stats.starts_sent_again == len(shutting_down.starts) > 0


async def test_a_replica_that_is_not_listening_is_skipped_without_losing_a_start() -> None:
    b = ScriptedExecution("b")
    async with replicas(b) as (address,):
        async with run_starts([unused_address(), address]) as (starts, stats):
            started = await asyncio.gather(*(starts.start(ctx(f"u{n}"), request()) for n in range(10)))
    assert [response.run.user_id for response in started] == [f"u{n}" for n in range(10)]
    assert len(b.starts) == 10 and 1 <= stats.starts_sent_again <= 10


async def test_a_start_left_unanswered_by_a_stream_that_broke_is_not_sent_again() -> None:
    # The replica read the start (its headers came first), then went away: it may have
    # started the run, so the start fails instead of starting a second run elsewhere.
    silent = ScriptedExecution("a", lambda item: None)
    b = ScriptedExecution("b")
    async with AsyncExitStack() as stack:
        address_a = await stack.enter_async_context(
            serving(silent, execution_pb2_grpc.add_ExecutionServiceServicer_to_server)
        )
        stopped = stack.pop_all()
        async with replicas(b) as (address_b,), run_starts([address_a, address_b]) as (starts, stats):
            # A fresh RunStarts sends its first start to the first replica.
            pending = asyncio.create_task(starts.start(ctx("alice"), request()))
            while not silent.starts:
                await asyncio.sleep(0.01)
            await stopped.aclose()
            with pytest.raises(StartFailed) as failed:
                await pending
    assert failed.value.code == grpc.StatusCode.UNAVAILABLE
    assert b.starts == [] and stats.starts_sent_again == 0


async def test_an_execution_service_without_start_runs_gets_unary_calls() -> None:
    old = OldExecution()
    async with replicas(old) as (address,):
        channel = grpc.aio.insecure_channel(address)
        async with run_starts([address]) as (starts, _):
            backends = Backends(execution=channel, registry=channel, call_timeout_s=5, starts=starts)
            first = await backends.start_run(
                ctx("alice"), agent="scripted", input_json="{}", multitask_strategy=0
            )
            second = await backends.start_run(
                ctx("bob"), agent="scripted", input_json="{}", multitask_strategy=0
            )
            assert not starts.usable
        await channel.close()
    assert (first.user_id, second.user_id) == ("alice", "bob")
    assert old.unary_calls == 2


async def test_a_start_without_an_answer_in_time_fails_with_deadline_exceeded() -> None:
    hold = asyncio.Event()
    slow = ScriptedExecution("a", hold=hold)
    async with replicas(slow) as addresses, run_starts(addresses, timeout_s=0.3) as (starts, _):
        with pytest.raises(StartFailed) as failed:
            await starts.start(ctx("alice"), request())
        hold.set()
        assert (await starts.start(ctx("bob"), request())).run.user_id == "bob"
    assert failed.value.code == grpc.StatusCode.DEADLINE_EXCEEDED


async def test_a_start_is_sent_at_most_max_sends_times() -> None:
    refusing = [
        ScriptedExecution(name, lambda item: Answer(code=UNAVAILABLE, message="shutting down"))
        for name in "abcd"
    ]
    async with replicas(*refusing) as addresses, run_starts(addresses) as (starts, stats):
        with pytest.raises(StartFailed) as failed:
            await starts.start(ctx("alice"), request())
    assert failed.value.code == grpc.StatusCode.UNAVAILABLE
    assert sum(len(replica.starts) for replica in refusing) == MAX_SENDS
    assert stats.starts_sent_again == MAX_SENDS - 1
    assert status_code(UNAVAILABLE) == grpc.StatusCode.UNAVAILABLE


async def test_a_dns_target_is_resolved_again_and_a_replica_it_no_longer_names_is_let_go(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    a, b = ScriptedExecution("a"), ScriptedExecution("b")
    async with replicas(a, b) as (address_a, address_b):
        names = [(address_a, address_b)]

        async def resolve(target: str) -> tuple[str, ...]:
            assert target == "dns:///execution.test:50051"
            return names[-1]

        monkeypatch.setattr("gateway.starts.resolve_replicas", resolve)
        stats = GatewayStats()
        starts = RunStarts(
            "dns:///execution.test:50051",
            open_channel=grpc.aio.insecure_channel,
            timeout_s=5,
            stats=stats,
            rotate_after_s=0.05,
        )
        try:
            await asyncio.gather(*(starts.start(ctx(f"u{n}"), request()) for n in range(20)))
            assert a.starts and b.starts
            names.append((address_b,))  # the name no longer resolves to a
            await asyncio.sleep(0.1)  # past the rotation: the next start resolves again
            await starts.start(ctx("rotate"), request())
            for _ in range(100):
                if a.half_closed == a.streams:
                    break
                await asyncio.sleep(0.01)
            assert a.half_closed == a.streams  # every stream to a was half-closed
            seen_by_a = len(a.starts)
            await asyncio.gather(*(starts.start(ctx(f"v{n}"), request()) for n in range(20)))
        finally:
            await starts.aclose()
    assert len(a.starts) == seen_by_a
    assert [item.user_context.user_id for item in b.starts[-20:]] == [f"v{n}" for n in range(20)]
