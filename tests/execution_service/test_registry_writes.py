"""Run writes over the registry's ``WriteRuns`` stream: the client's side.

Against a real registry on loopback where the outcome is the registry's, and
against a scripted ``RegistryService`` (a real gRPC server on loopback whose
``WriteRuns`` answers as each test needs) for what a registry does only in
rare moments: draining, breaking a stream, never answering, or not knowing
``WriteRuns`` at all (an older registry during a rolling upgrade).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import grpc
import pytest

from execution_service.peers import GrpcRegistry
from execution_service.registry_writes import RunWrites
from registry_service.app import running_service
from registry_service.settings import RegistrySettings
from runwire.common.v1 import context_pb2, run_pb2
from runwire.registry.v1 import registry_pb2
from runwire_common import bundles
from runwire_common.errors import NotFound, Unavailable
from runwire_common.ids import new_id

pytestmark = pytest.mark.asyncio

SERVICE = "runwire.registry.v1.RegistryService"
TIMEOUT_S = 5.0
ContextFactory = Callable[..., context_pb2.UserContext]
Requests = AsyncIterator[registry_pb2.WriteRunsRequest]
Responses = AsyncIterator[registry_pb2.WriteRunsResponse]
StreamScript = Callable[[Requests, grpc.aio.ServicerContext[Any, Any]], Responses]
UNAVAILABLE = grpc.StatusCode.UNAVAILABLE.value[0]
TURN = [
    run_pb2.ThreadMessage(role=run_pb2.MESSAGE_ROLE_USER, content="what is 2 + 2?"),
    run_pb2.ThreadMessage(role=run_pb2.MESSAGE_ROLE_ASSISTANT, content="4"),
]


class UnaryCalls(grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    """Records the unary methods called through a channel."""

    def __init__(self) -> None:
        self.methods: list[str] = []

    async def intercept_unary_unary(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        method = client_call_details.method
        self.methods.append(method.decode() if isinstance(method, bytes) else method)
        return await continuation(client_call_details, request)


def created(request: registry_pb2.WriteRunsRequest) -> registry_pb2.WriteRunsResponse:
    """A scripted registry's answer to a CreateRun write: a run owned by the write's context."""
    ctx = request.user_context
    run = run_pb2.Run(run_id=new_id("run"), user_id=ctx.user_id, thread_id=ctx.thread_id)
    return registry_pb2.WriteRunsResponse(
        write_id=request.write_id, create_run=registry_pb2.CreateRunResponse(run=run)
    )


@asynccontextmanager
async def scripted_registry(
    write_runs: StreamScript | None, unary: dict[str, Callable[..., Awaitable[Any]]] | None = None
) -> AsyncIterator[str]:
    """A loopback server of ``RegistryService`` with just the given methods; yields its address."""
    handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}
    if write_runs is not None:
        handlers["WriteRuns"] = grpc.stream_stream_rpc_method_handler(
            write_runs,
            request_deserializer=registry_pb2.WriteRunsRequest.FromString,
            response_serializer=registry_pb2.WriteRunsResponse.SerializeToString,
        )
    for name, behaviour in (unary or {}).items():
        request_type = getattr(registry_pb2, f"{name}Request")
        response_type = getattr(registry_pb2, f"{name}Response")
        handlers[name] = grpc.unary_unary_rpc_method_handler(
            behaviour,
            request_deserializer=request_type.FromString,
            response_serializer=response_type.SerializeToString,
        )
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await server.stop(None)


@asynccontextmanager
async def client(
    address: str, *, rotate_after_s: float = 20.0, interceptor: UnaryCalls | None = None
) -> AsyncIterator[tuple[GrpcRegistry, RunWrites]]:
    channel = grpc.aio.insecure_channel(address, interceptors=[interceptor] if interceptor else None)
    writes = RunWrites(channel, timeout_s=TIMEOUT_S, rotate_after_s=rotate_after_s)
    try:
        yield GrpcRegistry(channel, call_timeout_s=TIMEOUT_S, writes=writes), writes
    finally:
        await writes.aclose()
        await channel.close()


async def create(
    registry: GrpcRegistry, ctx: context_pb2.UserContext, *, create_key: str = ""
) -> run_pb2.Run:
    made = await registry.create_run(
        ctx,
        agent="scripted",
        input_json='{"steps": []}',
        multitask_strategy=run_pb2.MULTITASK_STRATEGY_UNSPECIFIED,
        executor_id="exec-a",
        timeout_seconds=0,
        initial_state=run_pb2.RUN_STATE_RUNNING,
        create_key=create_key,
    )
    return made.run


def sqlite_registry(folder: Any, attestation_key_spec: str) -> RegistrySettings:
    """A real registry on loopback, on SQLite in ``folder``."""
    return RegistrySettings(
        attestation_keys=attestation_key_spec,
        database_url=f"sqlite+aiosqlite:///{folder / 'registry.db'}",
        host="127.0.0.1",
        port=0,
        grace_period_s=2,
    )


async def test_a_runs_writes_reach_a_real_registry_over_the_stream_and_no_unary_call_is_made(
    tmp_path: Any, attestation_key_spec: str, make_context: ContextFactory
) -> None:
    settings = sqlite_registry(tmp_path, attestation_key_spec)
    calls = UnaryCalls()
    async with (
        running_service(settings) as server,
        client(server.address, interceptor=calls) as (registry, _),
    ):
        user = new_id("user")
        runs = await asyncio.gather(
            *(create(registry, make_context(user, thread_id=new_id("thread"))) for _ in range(3))
        )
        assert {run.state for run in runs} == {run_pb2.RUN_STATE_RUNNING}
        assert len({run.run_id for run in runs}) == 3
        run = runs[0]
        ctx = make_context(user, thread_id=run.thread_id, run_id=run.run_id)
        ended = await registry.transition(
            ctx, run_pb2.RUN_STATE_COMPLETED, through_completing=True, result_json="{}", messages=TURN
        )
        assert ended.state == run_pb2.RUN_STATE_COMPLETED
        # The run's thread turn was stored with its completion, over the stream too.
        _, stored = await registry.get_thread(ctx)
        assert [(m.role, m.content, m.run_id) for m in stored] == [
            (m.role, m.content, run.run_id) for m in TURN
        ]
        beaten = await registry.heartbeat(
            make_context(user, thread_id=runs[1].thread_id, run_id=runs[1].run_id), executor_id="exec-a"
        )
        assert (beaten.run_id, beaten.state) == (runs[1].run_id, run_pb2.RUN_STATE_RUNNING)
        # Refusals arrive as the unary call's domain errors: another user's run is NOT_FOUND.
        stranger = make_context(new_id("user"), thread_id=run.thread_id, run_id=runs[1].run_id)
        with pytest.raises(NotFound):
            await registry.transition(stranger, run_pb2.RUN_STATE_CANCELLED)
        assert (await registry.get_run(ctx)).state == run_pb2.RUN_STATE_COMPLETED
    assert "/runwire.registry.v1.RegistryService/CreateRun" not in calls.methods
    assert "/runwire.registry.v1.RegistryService/TransitionRun" not in calls.methods
    assert "/runwire.registry.v1.RegistryService/Heartbeat" not in calls.methods
    assert calls.methods == [
        "/runwire.registry.v1.RegistryService/GetThread",
        "/runwire.registry.v1.RegistryService/GetRun",
    ]


async def test_a_registry_that_ignores_messages_in_the_completion_gets_them_by_append_messages(
    make_context: ContextFactory,
) -> None:
    # A registry older than TransitionRunRequest.messages parses the request without them and
    # answers without messages_stored: the client stores them with AppendMessages.
    transitions: list[registry_pb2.TransitionRunRequest] = []
    appended: list[registry_pb2.AppendMessagesRequest] = []

    async def transition_run(
        request: registry_pb2.TransitionRunRequest, context: Any
    ) -> registry_pb2.TransitionRunResponse:
        transitions.append(request)
        return registry_pb2.TransitionRunResponse(run=run_pb2.Run(state=request.to_state))

    async def append_messages(
        request: registry_pb2.AppendMessagesRequest, context: Any
    ) -> registry_pb2.AppendMessagesResponse:
        appended.append(request)
        return registry_pb2.AppendMessagesResponse(stored=len(request.messages))

    async with (
        scripted_registry(
            None, {"TransitionRun": transition_run, "AppendMessages": append_messages}
        ) as address,
        client(address) as (registry, _),
    ):
        ctx = make_context(new_id("user"), thread_id=new_id("thread"), run_id=new_id("run"))
        await registry.transition(ctx, run_pb2.RUN_STATE_COMPLETED, through_completing=True, messages=TURN)
        await registry.transition(ctx, run_pb2.RUN_STATE_FAILED)  # no messages: nothing appended
    assert len(transitions) == 2
    assert [list(request.messages) for request in appended] == [TURN]
    assert appended[0].user_context == ctx


async def test_a_registry_without_write_runs_gets_unary_calls_and_nothing_is_written_twice(
    make_context: ContextFactory,
) -> None:
    received: list[registry_pb2.CreateRunRequest] = []

    async def create_run(
        request: registry_pb2.CreateRunRequest, context: Any
    ) -> registry_pb2.CreateRunResponse:
        received.append(request)
        ctx = request.user_context
        return registry_pb2.CreateRunResponse(run=run_pb2.Run(run_id=new_id("run"), user_id=ctx.user_id))

    async with (
        scripted_registry(None, {"CreateRun": create_run}) as address,
        client(address) as (registry, writes),
    ):
        ctx = make_context(new_id("user"), thread_id=new_id("thread"))
        first = await create(registry, ctx)
        assert not writes.supported
        second = await create(registry, ctx)
    assert first.user_id == second.user_id == ctx.user_id
    assert len(received) == 2  # one each: the stream carried nothing out
    assert all(request.user_context == ctx for request in received)  # the unary call carries the context
    assert received[0].executor_id == "exec-a"


async def test_a_write_the_draining_registry_did_not_carry_out_is_sent_again_on_a_new_stream(
    make_context: ContextFactory,
) -> None:
    streams: list[list[int]] = []  # the write ids each stream received
    carried_out: list[str] = []

    async def write_runs(requests: Requests, context: Any) -> Responses:
        seen: list[int] = []
        streams.append(seen)
        draining = len(streams) == 1
        async for request in requests:
            seen.append(request.write_id)
            if draining:
                yield registry_pb2.WriteRunsResponse(
                    write_id=request.write_id, code=UNAVAILABLE, message="draining", drained=True
                )
            else:
                carried_out.append(request.user_context.user_id)
                yield created(request)

    async with scripted_registry(write_runs) as address, client(address) as (registry, _):
        ctx = make_context(new_id("user"), thread_id=new_id("thread"))
        run = await create(registry, ctx)
        again = await create(registry, make_context(new_id("user"), thread_id=new_id("thread")))
    assert run.user_id == ctx.user_id
    assert carried_out == [ctx.user_id, again.user_id]
    assert [len(seen) for seen in streams] == [1, 2]  # the drained stream took nothing more


async def test_a_write_whose_stream_breaks_is_not_sent_again_and_the_next_write_gets_a_new_stream(
    make_context: ContextFactory,
) -> None:
    streams: list[list[int]] = []

    async def write_runs(requests: Requests, context: grpc.aio.ServicerContext[Any, Any]) -> Responses:
        seen: list[int] = []
        streams.append(seen)
        async for request in requests:
            seen.append(request.write_id)
            if len(streams) == 1:  # the registry "crashes" with the write read: it may have been done
                await context.abort(grpc.StatusCode.UNAVAILABLE, "gone")
            yield created(request)

    async with scripted_registry(write_runs) as address, client(address) as (registry, _):
        with pytest.raises(Unavailable):
            await create(registry, make_context(new_id("user"), thread_id=new_id("thread")))
        ctx = make_context(new_id("user"), thread_id=new_id("thread"))
        assert (await create(registry, ctx)).user_id == ctx.user_id
    assert [len(seen) for seen in streams] == [1, 1]


async def test_a_create_with_a_key_whose_stream_breaks_is_sent_again_with_the_same_key(
    make_context: ContextFactory,
) -> None:
    streams: list[list[registry_pb2.WriteRunsRequest]] = []

    async def write_runs(requests: Requests, context: grpc.aio.ServicerContext[Any, Any]) -> Responses:
        seen: list[registry_pb2.WriteRunsRequest] = []
        streams.append(seen)
        async for request in requests:
            seen.append(request)
            if len(streams) == 1:  # the registry "crashes" with the create read: it may have been done
                await context.abort(grpc.StatusCode.UNAVAILABLE, "gone")
            yield created(request)

    async with scripted_registry(write_runs) as address, client(address) as (registry, _):
        ctx = make_context(new_id("user"), thread_id=new_id("thread"))
        made = await create(registry, ctx, create_key="create_key_of_this_run")
    assert made.user_id == ctx.user_id
    assert [len(seen) for seen in streams] == [1, 1]
    assert [seen[0].create_run.create_key for seen in streams] == ["create_key_of_this_run"] * 2


async def test_a_write_never_answered_fails_as_unavailable_within_the_call_timeout(
    make_context: ContextFactory,
) -> None:
    async def write_runs(requests: Requests, context: Any) -> Responses:
        async for _request in requests:
            pass  # read, never answered
        return
        yield  # an async generator

    async with scripted_registry(write_runs) as address, client(address) as (registry, _):
        writes_timeout = TIMEOUT_S
        loop = asyncio.get_running_loop()
        began = loop.time()
        with pytest.raises(Unavailable, match="deadline"):
            await create(registry, make_context(new_id("user"), thread_id=new_id("thread")))
        assert writes_timeout <= loop.time() - began < writes_timeout + 2


async def test_streams_are_replaced_as_they_age_and_the_old_ones_end_cleanly(
    make_context: ContextFactory,
) -> None:
    ended: list[int] = []

    async def write_runs(requests: Requests, context: Any) -> Responses:
        count = 0
        async for request in requests:
            count += 1
            yield created(request)
        ended.append(count)  # the client half-closed it

    async with scripted_registry(write_runs) as address, client(address, rotate_after_s=0.0) as (registry, _):
        for _ in range(3):
            ctx = make_context(new_id("user"), thread_id=new_id("thread"))
            assert (await create(registry, ctx)).user_id == ctx.user_id
        async with asyncio.timeout(TIMEOUT_S):
            while len(ended) < 2:
                await asyncio.sleep(0.01)
    assert ended == [1, 1, 1]  # the third ended by the client's close


async def test_an_idle_stream_told_of_the_drain_is_half_closed_and_the_next_write_opens_another(
    make_context: ContextFactory,
) -> None:
    half_closed = asyncio.Event()
    streams = 0

    async def write_runs(requests: Requests, context: Any) -> Responses:
        nonlocal streams
        streams += 1
        if streams > 1:
            async for request in requests:
                yield created(request)
            return
        yield created(await anext(requests))
        yield registry_pb2.WriteRunsResponse(drained=True)  # the notice: write_id 0, code 0
        async for request in requests:  # none is expected; a real registry answers them so
            yield registry_pb2.WriteRunsResponse(write_id=request.write_id, code=UNAVAILABLE, drained=True)
        half_closed.set()

    async with scripted_registry(write_runs) as address, client(address) as (registry, writes):
        first = make_context(new_id("user"), thread_id=new_id("thread"))
        assert (await create(registry, first)).user_id == first.user_id
        await asyncio.wait_for(half_closed.wait(), TIMEOUT_S)  # idle, and half-closed on the notice
        second = make_context(new_id("user"), thread_id=new_id("thread"))
        assert (await create(registry, second)).user_id == second.user_id
        assert writes.supported
    assert streams == 2


async def test_writes_that_queue_up_together_travel_bundled_to_a_registry_that_announces_it(
    make_context: ContextFactory,
) -> None:
    read: list[registry_pb2.WriteRunsRequest] = []

    async def announcing(requests: Requests, context: grpc.aio.ServicerContext[Any, Any]) -> Responses:
        await context.send_initial_metadata(bundles.ANNOUNCEMENT)
        assert bundles.announced(context.invocation_metadata()), "the sender reads bundled answers"
        async for message in requests:
            read.append(message)
            # Every write the message carries is answered, all in one bundled answer.
            yield bundles.bundled([created(write) for write in bundles.unbundled(message)])

    async with scripted_registry(announcing) as address, client(address) as (registry, _):
        first = make_context(new_id("user"), thread_id=new_id("thread"))
        await create(registry, first)
        contexts = [make_context(new_id("user"), thread_id=new_id("thread")) for _ in range(30)]
        runs = await asyncio.gather(*(create(registry, ctx) for ctx in contexts))
    assert [run.user_id for run in runs] == [ctx.user_id for ctx in contexts]
    assert len({run.run_id for run in runs}) == 30
    writes = [write for message in read for write in bundles.unbundled(message)]
    assert len(writes) == 31
    assert len({write.write_id for write in writes}) == 31
    assert len(read) <= 1 + 30 / 5, f"31 writes took {len(read)} messages"


async def test_a_real_registry_carries_out_and_answers_every_write_of_a_bundle(
    tmp_path: Any, attestation_key_spec: str, make_context: ContextFactory
) -> None:
    settings = sqlite_registry(tmp_path, attestation_key_spec)
    async with running_service(settings) as server, client(server.address) as (registry, _):
        await create(registry, make_context(new_id("user"), thread_id=new_id("thread")))
        contexts = [make_context(new_id("user"), thread_id=new_id("thread")) for _ in range(80)]
        runs = await asyncio.gather(*(create(registry, ctx) for ctx in contexts))
        assert [run.user_id for run in runs] == [ctx.user_id for ctx in contexts]
        assert {run.state for run in runs} == {run_pb2.RUN_STATE_RUNNING}
        ended = await asyncio.gather(
            *(
                registry.transition(
                    make_context(run.user_id, thread_id=run.thread_id, run_id=run.run_id),
                    run_pb2.RUN_STATE_COMPLETED,
                    through_completing=True,
                    result_json="{}",
                )
                for run in runs
            )
        )
        assert [run.run_id for run in ended] == [run.run_id for run in runs]
        assert {run.state for run in ended} == {run_pb2.RUN_STATE_COMPLETED}
