"""CreateRun: the new run, the per-user quota and the one-live-run-per-thread rule."""

from __future__ import annotations

import asyncio
import json

import grpc
import pytest

from runwire.common.v1 import run_pb2
from runwire.registry.v1 import registry_pb2
from runwire_common.ids import new_id
from tests.registry_service.support import Registry, rpc_error, status_of

S = run_pb2


async def test_a_new_run_is_pending_at_version_one_with_everything_the_caller_gave(
    registry: Registry,
) -> None:
    user, thread = new_id("user"), new_id("thread")
    ctx = registry.make_context(user, thread_id=thread, tenant_id="tenant_acme_corporation")

    response = await registry.stub.CreateRun(
        registry_pb2.CreateRunRequest(
            user_context=ctx,
            agent="assistant",
            input_json='{"message": "2+2"}',
            multitask_strategy=S.MULTITASK_STRATEGY_REJECT,
            executor_id="executor-7",
            timeout_seconds=42,
        ),
        timeout=10,
    )

    run = response.run
    assert run.run_id.startswith("run_")
    assert (run.user_id, run.tenant_id, run.thread_id) == (user, "tenant_acme_corporation", thread)
    assert (run.agent, run.state, run.version) == ("assistant", S.RUN_STATE_PENDING, 1)
    assert json.loads(run.input_json) == {"message": "2+2"}
    assert (run.executor_id, run.timeout_seconds) == ("executor-7", 42)
    assert run.multitask_strategy == S.MULTITASK_STRATEGY_REJECT
    assert run.created_at == run.updated_at
    assert not run.cancel_requested
    assert await registry.get(run) == run


async def test_an_unspecified_strategy_is_stored_as_reject(registry: Registry) -> None:
    run = await registry.create(new_id("user"), strategy=S.MULTITASK_STRATEGY_UNSPECIFIED)

    assert run.multitask_strategy == S.MULTITASK_STRATEGY_REJECT


async def test_an_empty_input_is_stored_as_an_empty_object(registry: Registry) -> None:
    run = await registry.create(new_id("user"), input_json="")

    assert json.loads(run.input_json) == {}


@pytest.mark.parametrize("bad_input", ["[1, 2]", '"text"', "{oops", "42"])
async def test_an_input_that_is_not_a_json_object_is_an_invalid_argument(
    registry: Registry, bad_input: str
) -> None:
    error = await rpc_error(registry.create(new_id("user"), input_json=bad_input))

    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "input_json" in (error.details() or "")


async def test_a_missing_agent_is_an_invalid_argument(registry: Registry) -> None:
    error = await rpc_error(registry.create(new_id("user"), agent="  "))

    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "agent" in (error.details() or "")


async def test_a_negative_timeout_is_an_invalid_argument(registry: Registry) -> None:
    assert (
        await status_of(registry.create(new_id("user"), timeout_seconds=-1))
        == grpc.StatusCode.INVALID_ARGUMENT
    )


async def test_an_unknown_strategy_is_an_invalid_argument(registry: Registry) -> None:
    assert await status_of(registry.create(new_id("user"), strategy=17)) == grpc.StatusCode.INVALID_ARGUMENT


async def test_a_run_without_a_thread_is_an_invalid_argument(registry: Registry) -> None:
    ctx = registry.make_context(new_id("user"))

    error = await rpc_error(
        registry.stub.CreateRun(registry_pb2.CreateRunRequest(user_context=ctx, agent="scripted"), timeout=10)
    )

    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "thread_id" in (error.details() or "")


async def test_the_fourth_live_run_of_a_user_is_refused_naming_the_limit(registry: Registry) -> None:
    user = new_id("user")
    for _ in range(3):
        await registry.create(user)

    error = await rpc_error(registry.create(user))

    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "limit is 3" in (error.details() or "")


async def test_a_finished_run_frees_its_place_in_the_quota(registry: Registry) -> None:
    user = new_id("user")
    runs = [await registry.create(user) for _ in range(3)]

    await registry.transition(runs[0], S.RUN_STATE_CANCELLED)

    assert (await registry.create(user)).state == S.RUN_STATE_PENDING


async def test_the_quota_of_one_user_does_not_limit_another(registry: Registry) -> None:
    busy = new_id("user")
    for _ in range(3):
        await registry.create(busy)

    assert (await registry.create(new_id("user"))).state == S.RUN_STATE_PENDING


async def test_twenty_concurrent_creates_on_different_threads_admit_exactly_three(registry: Registry) -> None:
    user = new_id("user")

    statuses = await asyncio.gather(*(status_of(registry.create(user)) for _ in range(20)))

    assert statuses.count(grpc.StatusCode.OK) == 3
    assert statuses.count(grpc.StatusCode.RESOURCE_EXHAUSTED) == 17
    listed = await registry.stub.ListRuns(
        registry_pb2.ListRunsRequest(user_context=registry.make_context(user)), timeout=10
    )
    assert len(listed.runs) == 3


async def test_concurrent_creates_of_many_users_each_get_their_full_quota(registry: Registry) -> None:
    users = [new_id("user") for _ in range(5)]

    results = await asyncio.gather(*(status_of(registry.create(user)) for user in users for _ in range(5)))

    assert results.count(grpc.StatusCode.OK) == 5 * 3
    assert results.count(grpc.StatusCode.RESOURCE_EXHAUSTED) == 5 * 2


async def test_a_second_run_on_a_busy_thread_is_refused_naming_the_live_run(registry: Registry) -> None:
    user, thread = new_id("user"), new_id("thread")
    first = await registry.create(user, thread_id=thread)

    error = await rpc_error(registry.create(user, thread_id=thread))

    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert first.run_id in (error.details() or "")


async def test_a_thread_frees_once_its_run_is_terminal(registry: Registry) -> None:
    user, thread = new_id("user"), new_id("thread")
    first = await registry.create(user, thread_id=thread)
    await registry.transition(first, S.RUN_STATE_FAILED)

    second = await registry.create(user, thread_id=thread)

    assert second.thread_id == thread and second.run_id != first.run_id


async def test_ten_concurrent_creates_on_one_thread_admit_exactly_one(registry: Registry) -> None:
    user, thread = new_id("user"), new_id("thread")

    statuses = await asyncio.gather(*(status_of(registry.create(user, thread_id=thread)) for _ in range(10)))

    assert statuses.count(grpc.StatusCode.OK) == 1
    assert statuses.count(grpc.StatusCode.FAILED_PRECONDITION) == 9


async def test_enqueue_on_a_free_thread_starts_a_run_at_once(registry: Registry) -> None:
    run = await registry.create(new_id("user"), strategy=S.MULTITASK_STRATEGY_ENQUEUE)

    assert run.state == S.RUN_STATE_PENDING
    assert run.multitask_strategy == S.MULTITASK_STRATEGY_ENQUEUE
