"""``WriteRuns``: CreateRun and TransitionRun over one stream, answered as the unary calls are.

A real registry on loopback, on SQLite and on PostgreSQL; the stream is driven
with the raw generated stub, as the execution service's client does.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from contextlib import AsyncExitStack

import grpc
import pytest

from registry_service.app import running_service
from registry_service.settings import RegistrySettings
from runwire.common.v1 import context_pb2, run_pb2
from runwire.registry.v1 import registry_pb2, registry_pb2_grpc
from runwire_common.ids import new_id
from tests.registry_service.support import CALL_TIMEOUT_S, Registry, open_registry

pytestmark = pytest.mark.asyncio

OK = grpc.StatusCode.OK.value[0]
CODES = {code.value[0]: code for code in grpc.StatusCode}
Answer = registry_pb2.WriteRunsResponse
MakeContext = Callable[..., context_pb2.UserContext]


def create(write_id: int, ctx: context_pb2.UserContext, **fields: object) -> registry_pb2.WriteRunsRequest:
    request = registry_pb2.CreateRunRequest(
        agent="scripted", input_json='{"steps": []}', executor_id="exec-a"
    )
    for name, value in fields.items():
        setattr(request, name, value)
    return registry_pb2.WriteRunsRequest(user_context=ctx, write_id=write_id, create_run=request)


def transition(write_id: int, ctx: context_pb2.UserContext, to_state: int) -> registry_pb2.WriteRunsRequest:
    request = registry_pb2.TransitionRunRequest(to_state=to_state)  # type: ignore[arg-type]
    return registry_pb2.WriteRunsRequest(user_context=ctx, write_id=write_id, transition_run=request)


async def answers(call: grpc.aio.StreamStreamCall, count: int) -> dict[int, Answer]:
    """The next ``count`` answers, by write_id (each write is answered once)."""
    received: dict[int, Answer] = {}
    async with asyncio.timeout(CALL_TIMEOUT_S):
        while len(received) < count:
            answer = await call.read()
            assert isinstance(answer, Answer), f"the stream ended: {answer!r}"
            assert answer.write_id not in received, f"write {answer.write_id} answered twice"
            received[answer.write_id] = answer
    return received


async def test_a_run_created_and_ended_over_the_stream_is_the_one_the_unary_calls_would_make(
    registry: Registry, make_context: MakeContext
) -> None:
    user, thread_id = new_id("user"), new_id("thread")
    call = registry.stub.WriteRuns()
    ctx = make_context(user, thread_id=thread_id)
    await call.write(create(1, ctx, initial_state=run_pb2.RUN_STATE_RUNNING))
    created = (await answers(call, 1))[1]
    assert created.code == OK, created.message
    run = created.create_run.run
    assert (run.user_id, run.thread_id, run.state, run.version) == (
        user,
        thread_id,
        run_pb2.RUN_STATE_RUNNING,
        3,
    )

    beat = registry_pb2.HeartbeatRequest(executor_id="exec-b")
    await call.write(
        registry_pb2.WriteRunsRequest(user_context=registry.run_context(run), write_id=3, heartbeat=beat)
    )
    beaten = (await answers(call, 1))[3]
    assert beaten.code == OK, beaten.message
    assert beaten.heartbeat.run.run_id == run.run_id
    assert beaten.heartbeat.run.executor_id == "exec-b"  # as the unary Heartbeat records it

    ended = registry_pb2.TransitionRunRequest(
        to_state=run_pb2.RUN_STATE_COMPLETED, through_completing=True, result_json='{"ok": true}'
    )
    await call.write(
        registry_pb2.WriteRunsRequest(
            user_context=registry.run_context(run), write_id=2, transition_run=ended
        )
    )
    moved = (await answers(call, 1))[2]
    assert moved.code == OK, moved.message
    assert moved.transition_run.run.state == run_pb2.RUN_STATE_COMPLETED
    await call.done_writing()
    assert await call.code() == grpc.StatusCode.OK

    stored = await registry.get(run)
    assert stored.state == run_pb2.RUN_STATE_COMPLETED
    assert stored.version == moved.transition_run.run.version == 5
    assert stored.result_json == '{"ok": true}'


async def test_refused_writes_are_answered_with_their_status_and_the_stream_serves_on(
    registry: Registry, make_context: MakeContext
) -> None:
    owner = await registry.run_in(new_id("user"), run_pb2.RUN_STATE_RUNNING)
    stranger = make_context(new_id("user"), thread_id=owner.thread_id, run_id=owner.run_id)
    forged = make_context(new_id("user"), thread_id=new_id("thread"))
    forged.user_id = new_id("user")  # no longer what was attested
    embedded = create(4, make_context(new_id("user"), thread_id=new_id("thread")))
    embedded.create_run.user_context.CopyFrom(make_context(new_id("user"), thread_id=new_id("thread")))
    refused = [
        transition(1, stranger, run_pb2.RUN_STATE_COMPLETED),  # another user's run
        create(2, forged),
        registry_pb2.WriteRunsRequest(user_context=make_context(new_id("user")), write_id=3),  # no write
        embedded,
        transition(5, registry.run_context(owner), run_pb2.RUN_STATE_PENDING),  # an illegal move
    ]
    witness = create(6, make_context(new_id("user"), thread_id=new_id("thread")))
    call = registry.stub.WriteRuns()
    for request in [*refused, witness]:
        await call.write(request)
    got = await answers(call, len(refused) + 1)
    assert {write_id: CODES[answer.code] for write_id, answer in got.items()} == {
        1: grpc.StatusCode.NOT_FOUND,
        2: grpc.StatusCode.UNAUTHENTICATED,
        3: grpc.StatusCode.INVALID_ARGUMENT,
        4: grpc.StatusCode.INVALID_ARGUMENT,
        5: grpc.StatusCode.FAILED_PRECONDITION,
        6: grpc.StatusCode.OK,
    }
    for write_id in range(1, 6):
        assert got[write_id].message.strip(), f"write {write_id} refused without a reason"
        assert got[write_id].WhichOneof("result") is None
    assert "user_context" in got[4].message
    assert got[6].create_run.run.run_id
    await call.done_writing()
    assert await call.code() == grpc.StatusCode.OK
    assert (await registry.get(owner)).state == run_pb2.RUN_STATE_RUNNING  # untouched by the refusals


async def test_many_users_writing_at_once_each_get_their_own_answer_and_run(
    registry: Registry, make_context: MakeContext
) -> None:
    users = [new_id("user") for _ in range(300)]
    call = registry.stub.WriteRuns()
    for write_id, user in enumerate(users, start=1):
        await call.write(create(write_id, make_context(user, thread_id=new_id("thread"))))
    got = await answers(call, len(users))
    for write_id, user in enumerate(users, start=1):
        answer = got[write_id]
        assert answer.code == OK, answer.message
        assert answer.create_run.run.user_id == user
    assert len({answer.create_run.run.run_id for answer in got.values()}) == len(users)
    # The runs exist for their owners only, as the unary CreateRun would have made them.
    for write_id in (1, 150, 300):
        run = got[write_id].create_run.run
        assert (await registry.get(run)).run_id == run.run_id
    await call.done_writing()
    assert await call.code() == grpc.StatusCode.OK


async def test_a_draining_registry_answers_every_write_and_carries_out_none_it_calls_drained(
    registry_settings: RegistrySettings, make_context: MakeContext
) -> None:
    users = [new_id("user") for _ in range(300)]
    got: dict[int, Answer] = {}
    notices: list[Answer] = []
    # A long grace period: the drain must not wait for it (the streams end as soon as they may).
    registry_settings = registry_settings.model_copy(update={"grace_period_s": 60.0})
    service = AsyncExitStack()
    server = await service.enter_async_context(running_service(registry_settings))
    channel = grpc.aio.insecure_channel(server.address)
    try:
        stub = registry_pb2_grpc.RegistryServiceStub(channel)
        idle = stub.WriteRuns()  # nothing in flight when the drain begins
        await idle.write(create(1, make_context(new_id("user"), thread_id=new_id("thread"))))
        assert (await answers(idle, 1))[1].code == OK
        call = stub.WriteRuns()
        await call.write(create(1, make_context(users[0], thread_id=new_id("thread"))))
        got.update(await answers(call, 1))  # carried out before the drain begins

        async def write_all() -> None:
            for write_id, user in enumerate(users[1:], start=2):
                await call.write(create(write_id, make_context(user, thread_id=new_id("thread"))))
                if write_id == 30:
                    started.set()
                await asyncio.sleep(0)
            await call.done_writing()

        started = asyncio.Event()
        writer = asyncio.create_task(write_all())
        await started.wait()
        began = asyncio.get_running_loop().time()
        draining = asyncio.create_task(service.aclose())  # the registry's shutdown: drain, then stop
        async with asyncio.timeout(CALL_TIMEOUT_S):
            notice = await idle.read()
            assert isinstance(notice, Answer)
            assert (notice.drained, notice.write_id, notice.code) == (True, 0, OK)
            await idle.done_writing()  # what the sender does on the notice
            assert await idle.read() is grpc.aio.EOF
            assert await idle.code() == grpc.StatusCode.OK
            while (answer := await call.read()) is not grpc.aio.EOF:
                assert isinstance(answer, Answer)
                if answer.write_id == 0:
                    notices.append(answer)
                    continue
                assert answer.write_id not in got, f"write {answer.write_id} answered twice"
                got[answer.write_id] = answer
            await writer
            assert await call.code() == grpc.StatusCode.OK, await call.details()
            await draining
        assert asyncio.get_running_loop().time() - began < registry_settings.grace_period_s / 2
    finally:
        await service.aclose()
        await channel.close()
    assert [(n.drained, n.code) for n in notices] == [(True, OK)], "one notice that the drain began"
    assert sorted(got) == list(range(1, len(users) + 1)), "a write was left unanswered"
    drained = {write_id for write_id, answer in got.items() if answer.drained}
    for write_id in drained:
        assert CODES[got[write_id].code] == grpc.StatusCode.UNAVAILABLE
        assert "draining" in got[write_id].message
    assert all(got[w].code == OK for w in got if w not in drained)
    assert drained, "the drain came after every write: nothing was answered as drained"
    assert 1 not in drained, "the first write was answered before the drain began"

    # Started again on the same database: exactly the writes carried out made runs.
    registry_settings = registry_settings.model_copy(update={"migrate_on_start": False})
    async with open_registry(registry_settings, make_context) as reopened:
        for write_id, user in enumerate(users, start=1):
            listed = await reopened.stub.ListRuns(
                registry_pb2.ListRunsRequest(user_context=make_context(user)), timeout=CALL_TIMEOUT_S
            )
            expected = [] if write_id in drained else [got[write_id].create_run.run.run_id]
            assert [run.run_id for run in listed.runs] == expected, f"write {write_id}"
