"""TransitionRun to completed carrying the run's thread messages: one transaction, stored once."""

from __future__ import annotations

import asyncio

import grpc

from runwire.common.v1 import run_pb2
from runwire.registry.v1 import registry_pb2
from runwire_common.ids import new_id
from tests.registry_service.support import CALL_TIMEOUT_S, Registry, rpc_error

S = run_pb2
M = run_pb2.ThreadMessage


def turn(question: str, answer: str) -> list[run_pb2.ThreadMessage]:
    return [M(role=S.MESSAGE_ROLE_USER, content=question), M(role=S.MESSAGE_ROLE_ASSISTANT, content=answer)]


async def complete(
    registry: Registry,
    run: run_pb2.Run,
    messages: list[run_pb2.ThreadMessage],
    *,
    to_state: int = S.RUN_STATE_COMPLETED,
    through_completing: bool = True,
    user: str | None = None,
) -> registry_pb2.TransitionRunResponse:
    return await registry.stub.TransitionRun(
        registry_pb2.TransitionRunRequest(
            user_context=registry.run_context(run, user=user),
            to_state=to_state,  # type: ignore[arg-type]
            result_json='{"answer": "a"}' if to_state == S.RUN_STATE_COMPLETED else "",
            through_completing=through_completing,
            messages=messages,
        ),
        timeout=CALL_TIMEOUT_S,
    )


async def thread_contents(registry: Registry, user: str, thread_id: str) -> list[str]:
    return [m.content for m in (await registry.get_thread(user, thread_id)).messages]


async def test_a_run_completed_with_its_messages_has_them_in_its_thread(registry: Registry) -> None:
    user = new_id("user")
    run = await registry.run_in(user, S.RUN_STATE_RUNNING)

    response = await complete(registry, run, turn("q", "a"))

    assert response.messages_stored
    assert response.run.state == S.RUN_STATE_COMPLETED
    assert response.run.version == run.version + 2  # through completing, as without messages
    assert await thread_contents(registry, user, run.thread_id) == ["q", "a"]
    assert {m.run_id for m in (await registry.get_thread(user, run.thread_id)).messages} == {run.run_id}


async def test_a_completing_run_also_completes_with_its_messages(registry: Registry) -> None:
    user = new_id("user")
    run = await registry.run_in(user, S.RUN_STATE_COMPLETING)

    response = await complete(registry, run, turn("q", "a"), through_completing=False)

    assert (response.run.state, response.messages_stored) == (S.RUN_STATE_COMPLETED, True)
    assert await thread_contents(registry, user, run.thread_id) == ["q", "a"]


async def test_without_messages_nothing_is_reported_stored(registry: Registry) -> None:
    user = new_id("user")
    run = await registry.run_in(user, S.RUN_STATE_RUNNING)

    response = await complete(registry, run, [])

    assert (response.run.state, response.messages_stored) == (S.RUN_STATE_COMPLETED, False)
    assert await thread_contents(registry, user, run.thread_id) == []


async def test_a_refused_completion_stores_no_messages(registry: Registry) -> None:
    user = new_id("user")
    run = await registry.run_in(user, S.RUN_STATE_RUNNING)
    await registry.transition(run, S.RUN_STATE_CANCELLED)

    error = await rpc_error(complete(registry, run, turn("q", "a")))

    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert await thread_contents(registry, user, run.thread_id) == []


async def test_messages_already_appended_are_not_stored_twice(registry: Registry) -> None:
    user = new_id("user")
    run = await registry.run_in(user, S.RUN_STATE_RUNNING)
    assert await registry.append_messages(run, turn("q", "a")) == 2

    response = await complete(registry, run, turn("other", "words"))

    assert response.messages_stored
    assert await thread_contents(registry, user, run.thread_id) == ["q", "a"]
    assert await registry.append_messages(run, turn("q", "a")) == 0  # and an AppendMessages retry neither


async def test_messages_with_another_state_are_an_invalid_argument_and_change_nothing(
    registry: Registry,
) -> None:
    user = new_id("user")
    run = await registry.run_in(user, S.RUN_STATE_RUNNING)

    error = await rpc_error(
        complete(registry, run, turn("q", "a"), to_state=S.RUN_STATE_FAILED, through_completing=False)
    )

    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "messages" in (error.details() or "")
    assert (await registry.get(run)).state == S.RUN_STATE_RUNNING


async def test_invalid_messages_refuse_the_whole_transition(registry: Registry) -> None:
    user = new_id("user")
    run = await registry.run_in(user, S.RUN_STATE_RUNNING)
    bad = [M(role=S.MESSAGE_ROLE_TOOL, content="no call id")]

    error = await rpc_error(complete(registry, run, bad))

    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "messages[0].tool_call_id" in (error.details() or "")
    assert (await registry.get(run)).state == S.RUN_STATE_RUNNING
    assert await thread_contents(registry, user, run.thread_id) == []


async def test_another_users_run_is_not_found_and_gets_no_messages(registry: Registry) -> None:
    owner, intruder = new_id("user"), new_id("user")
    run = await registry.run_in(owner, S.RUN_STATE_RUNNING)

    error = await rpc_error(complete(registry, run, turn("mine?", "no"), user=intruder))

    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert (await registry.get(run)).state == S.RUN_STATE_RUNNING
    assert await thread_contents(registry, owner, run.thread_id) == []


async def test_many_runs_completing_at_once_each_store_their_own_turn(registry: Registry) -> None:
    users = [new_id("user") for _ in range(40)]
    runs = await asyncio.gather(*(registry.run_in(user, S.RUN_STATE_RUNNING) for user in users))

    responses = await asyncio.gather(
        *(complete(registry, run, turn(f"q {run.user_id}", f"a {run.run_id}")) for run in runs)
    )

    assert all(r.messages_stored and r.run.state == S.RUN_STATE_COMPLETED for r in responses)
    for run in runs:
        assert await thread_contents(registry, run.user_id, run.thread_id) == [
            f"q {run.user_id}",
            f"a {run.run_id}",
        ]
