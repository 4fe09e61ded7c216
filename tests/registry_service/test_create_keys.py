"""CreateRun's create_key: a call sent again after its answer was lost creates nothing more."""

from __future__ import annotations

import asyncio

import grpc

from runwire.common.v1 import run_pb2
from runwire.registry.v1 import registry_pb2
from runwire_common.ids import new_id
from tests.registry_service.support import Registry, rpc_error

S = run_pb2


async def create(
    registry: Registry,
    user: str,
    thread_id: str,
    key: str,
    *,
    strategy: int = S.MULTITASK_STRATEGY_UNSPECIFIED,
) -> registry_pb2.CreateRunResponse:
    return await registry.create_run(
        user, thread_id=thread_id, strategy=strategy, initial_state=S.RUN_STATE_RUNNING, create_key=key
    )


async def test_the_same_key_answers_the_run_it_created_and_creates_no_other(registry: Registry) -> None:
    user, thread_id, key = new_id("user"), new_id("thread"), new_id("create")

    first = await create(registry, user, thread_id, key)
    again = await create(registry, user, thread_id, key)

    assert again.run == first.run
    assert first.run.state == S.RUN_STATE_RUNNING
    assert [run.run_id for run in await registry.list_thread(user, thread_id)] == [first.run.run_id]


async def test_a_replay_is_answered_even_with_the_thread_busy_and_the_quota_reached(
    registry: Registry,
) -> None:
    user, key = new_id("user"), new_id("create")
    thread_id = new_id("thread")
    first = await create(registry, user, thread_id, key)
    for _ in range(2):  # the quota is 3 live runs
        await create(registry, user, new_id("thread"), new_id("create"))

    again = await create(registry, user, thread_id, key)
    error = await rpc_error(create(registry, user, new_id("thread"), new_id("create")))

    assert again.run.run_id == first.run.run_id
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


async def test_a_replay_answers_the_run_as_it_is_now(registry: Registry) -> None:
    user, thread_id, key = new_id("user"), new_id("thread"), new_id("create")
    first = await create(registry, user, thread_id, key)
    await registry.transition(first.run, S.RUN_STATE_CANCELLED)

    again = await create(registry, user, thread_id, key)

    assert (again.run.run_id, again.run.state) == (first.run.run_id, S.RUN_STATE_CANCELLED)
    assert list(again.interrupted_runs) == []


async def test_keys_are_the_owners_own(registry: Registry) -> None:
    owner, other, key = new_id("user"), new_id("user"), new_id("create")

    mine = await create(registry, owner, new_id("thread"), key)
    theirs = await create(registry, other, new_id("thread"), key)

    assert mine.run.run_id != theirs.run.run_id
    assert theirs.run.user_id == other


async def test_concurrent_calls_with_one_key_make_one_run(registry: Registry) -> None:
    user, thread_id, key = new_id("user"), new_id("thread"), new_id("create")

    answers = await asyncio.gather(*(create(registry, user, thread_id, key) for _ in range(10)))

    assert len({answer.run.run_id for answer in answers}) == 1
    assert len(await registry.list_thread(user, thread_id)) == 1


async def test_without_a_key_every_call_creates_a_run(registry: Registry) -> None:
    user = new_id("user")

    runs = [await create(registry, user, new_id("thread"), "") for _ in range(2)]

    assert runs[0].run.run_id != runs[1].run.run_id


async def test_a_key_longer_than_64_characters_is_an_invalid_argument(registry: Registry) -> None:
    error = await rpc_error(create(registry, new_id("user"), new_id("thread"), "k" * 65))

    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "create_key" in (error.details() or "")
