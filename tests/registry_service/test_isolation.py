"""Ownership: another user's run does not exist, whatever the call."""

from __future__ import annotations

import grpc

from runwire.common.v1 import run_pb2
from runwire.registry.v1 import registry_pb2
from runwire_common.ids import new_id
from tests.registry_service.support import Registry, rpc_error

S = run_pb2


async def test_another_users_run_is_not_found_by_get_run(registry: Registry) -> None:
    run = await registry.create(new_id("user"))

    error = await rpc_error(registry.get(run, user=new_id("user")))

    assert error.code() == grpc.StatusCode.NOT_FOUND


async def test_a_foreign_run_and_a_missing_run_give_the_same_answer(registry: Registry) -> None:
    run = await registry.create(new_id("user"))
    intruder = new_id("user")
    missing = run_pb2.Run(run_id=new_id("run"), user_id=intruder, thread_id=run.thread_id)

    foreign = await rpc_error(registry.get(run, user=intruder))
    absent = await rpc_error(registry.get(missing))

    assert foreign.code() == absent.code() == grpc.StatusCode.NOT_FOUND
    assert foreign.details() == (absent.details() or "").replace(missing.run_id, run.run_id)


async def test_another_user_cannot_transition_a_run(registry: Registry) -> None:
    run = await registry.create(new_id("user"))

    error = await rpc_error(registry.transition(run, S.RUN_STATE_CANCELLED, user=new_id("user")))

    assert error.code() == grpc.StatusCode.NOT_FOUND
    after = await registry.get(run)
    assert (after.state, after.version) == (S.RUN_STATE_PENDING, 1)


async def test_another_user_cannot_transition_a_terminal_run_either(registry: Registry) -> None:
    run = await registry.run_in(new_id("user"), S.RUN_STATE_COMPLETED)

    error = await rpc_error(registry.transition(run, S.RUN_STATE_FAILED, user=new_id("user")))

    assert error.code() == grpc.StatusCode.NOT_FOUND


async def test_another_user_cannot_heartbeat_a_run(registry: Registry) -> None:
    run = await registry.run_in(new_id("user"), S.RUN_STATE_RUNNING)

    error = await rpc_error(registry.heartbeat(run, user=new_id("user"), executor_id="executor-evil"))

    assert error.code() == grpc.StatusCode.NOT_FOUND
    after = await registry.get(run)
    assert not after.HasField("last_heartbeat_at")
    assert after.executor_id == run.executor_id


async def test_another_users_runs_are_not_listed(registry: Registry) -> None:
    owner = new_id("user")
    run = await registry.create(owner)

    listed = await registry.stub.ListRuns(
        registry_pb2.ListRunsRequest(user_context=registry.make_context(new_id("user"))), timeout=10
    )
    filtered = await registry.stub.ListRuns(
        registry_pb2.ListRunsRequest(
            user_context=registry.make_context(new_id("user")), thread_id=run.thread_id
        ),
        timeout=10,
    )

    assert list(listed.runs) == [] and listed.next_page_token == ""
    assert list(filtered.runs) == []


async def test_another_users_busy_thread_does_not_block_mine(registry: Registry) -> None:
    thread = new_id("thread")
    await registry.create(new_id("user"), thread_id=thread)

    mine = await registry.create(new_id("user"), thread_id=thread)

    assert mine.state == S.RUN_STATE_PENDING
