"""Threads: messages appended by runs, and ListThreads, GetThread, DeleteThread."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime

import grpc
import pytest

from registry_service.paging import PageCursor, encode_page_token
from registry_service.validation import MAX_MESSAGE_LENGTH, MAX_MESSAGES_PER_CALL
from runwire.common.v1 import run_pb2
from runwire.registry.v1 import registry_pb2
from runwire_common.ids import new_id
from tests.registry_service.support import Registry, rpc_error, status_of

S = run_pb2
M = run_pb2.ThreadMessage
TOOL_CALLS = json.dumps(
    [{"id": "call_1", "type": "function", "function": {"name": "calculator", "arguments": '{"x": 1}'}}]
)


def turn(question: str, answer: str) -> list[run_pb2.ThreadMessage]:
    return [M(role=S.MESSAGE_ROLE_USER, content=question), M(role=S.MESSAGE_ROLE_ASSISTANT, content=answer)]


def with_tools() -> list[run_pb2.ThreadMessage]:
    return [
        M(role=S.MESSAGE_ROLE_USER, content="What is 1 + 1?"),
        M(role=S.MESSAGE_ROLE_ASSISTANT, tool_calls_json=TOOL_CALLS),
        M(role=S.MESSAGE_ROLE_TOOL, content='{"value": 2}', tool_call_id="call_1", name="calculator"),
        M(role=S.MESSAGE_ROLE_ASSISTANT, content="2"),
    ]


def contents(messages: list[run_pb2.ThreadMessage]) -> list[str]:
    return [m.content for m in messages]


async def finished(registry: Registry, user: str, thread_id: str, messages: list[M]) -> run_pb2.Run:
    """A completed run of ``thread_id`` that appended ``messages``."""
    run = await registry.run_in(user, S.RUN_STATE_RUNNING, thread_id=thread_id)
    assert await registry.append_messages(run, messages) == len(messages)
    return await registry.transition(run, S.RUN_STATE_COMPLETED, through_completing=True)


# --- AppendMessages and GetThread --------------------------------------------------------------


async def test_appended_messages_come_back_in_order_with_their_run(registry: Registry) -> None:
    user, thread_id = new_id("user"), new_id("thread")
    run = await registry.run_in(user, S.RUN_STATE_RUNNING, thread_id=thread_id)

    stored = await registry.append_messages(run, with_tools())
    thread = await registry.get_thread(user, thread_id)

    assert stored == 4
    assert [(m.role, m.content) for m in thread.messages] == [(m.role, m.content) for m in with_tools()]
    assert {m.run_id for m in thread.messages} == {run.run_id}
    call, result = thread.messages[1], thread.messages[2]
    assert json.loads(call.tool_calls_json) == json.loads(TOOL_CALLS)
    assert (result.tool_call_id, result.name) == ("call_1", "calculator")
    assert all(m.HasField("created_at") for m in thread.messages)


async def test_a_runs_second_append_stores_nothing(registry: Registry) -> None:
    user, thread_id = new_id("user"), new_id("thread")
    run = await registry.run_in(user, S.RUN_STATE_RUNNING, thread_id=thread_id)
    await registry.append_messages(run, turn("hi", "hello"))

    again = await registry.append_messages(run, turn("hi", "hello"))
    other = await registry.append_messages(run, turn("something", "else"))

    assert (again, other) == (0, 0)
    assert contents(list((await registry.get_thread(user, thread_id)).messages)) == ["hi", "hello"]


async def test_concurrent_appends_of_one_run_store_its_messages_once(registry: Registry) -> None:
    user, thread_id = new_id("user"), new_id("thread")
    run = await registry.run_in(user, S.RUN_STATE_RUNNING, thread_id=thread_id)

    stored = await asyncio.gather(*(registry.append_messages(run, turn("q", "a")) for _ in range(10)))

    assert sorted(stored) == [0] * 9 + [2]
    assert len((await registry.get_thread(user, thread_id)).messages) == 2


async def test_a_finished_run_may_append_its_messages(registry: Registry) -> None:
    user, thread_id = new_id("user"), new_id("thread")

    await finished(registry, user, thread_id, turn("q", "a"))

    assert contents(list((await registry.get_thread(user, thread_id)).messages)) == ["q", "a"]


async def test_runs_of_a_thread_add_to_one_conversation(registry: Registry) -> None:
    user, thread_id = new_id("user"), new_id("thread")
    first = await finished(registry, user, thread_id, turn("one", "1"))
    second = await finished(registry, user, thread_id, turn("two", "2"))

    thread = await registry.get_thread(user, thread_id)

    assert contents(list(thread.messages)) == ["one", "1", "two", "2"]
    assert [m.run_id for m in thread.messages] == [first.run_id] * 2 + [second.run_id] * 2


async def test_max_messages_keeps_the_newest_in_order(registry: Registry) -> None:
    user, thread_id = new_id("user"), new_id("thread")
    await finished(registry, user, thread_id, turn("one", "1"))
    await finished(registry, user, thread_id, turn("two", "2"))

    newest = await registry.get_thread(user, thread_id, max_messages=3)
    more_than_all = await registry.get_thread(user, thread_id, max_messages=100)
    negative = await status_of(registry.get_thread(user, thread_id, max_messages=-1))

    assert contents(list(newest.messages)) == ["1", "two", "2"]
    assert contents(list(more_than_all.messages)) == ["one", "1", "two", "2"]
    assert negative == grpc.StatusCode.INVALID_ARGUMENT


async def test_a_thread_with_runs_but_no_messages_is_empty(registry: Registry) -> None:
    user = new_id("user")
    run = await registry.run_in(user, S.RUN_STATE_RUNNING)

    thread = await registry.get_thread(user, run.thread_id)

    assert list(thread.messages) == []
    assert (thread.thread.thread_id, thread.thread.title) == (run.thread_id, "")
    assert thread.thread.last_run_state == S.RUN_STATE_RUNNING


async def test_appending_to_another_users_run_or_another_thread_is_not_found(registry: Registry) -> None:
    owner = new_id("user")
    run = await registry.run_in(owner, S.RUN_STATE_RUNNING)

    foreign = await status_of(registry.append_messages(run, turn("q", "a"), user=new_id("user")))
    elsewhere = await status_of(registry.append_messages(run, turn("q", "a"), thread_id=new_id("thread")))

    assert foreign == elsewhere == grpc.StatusCode.NOT_FOUND
    assert list((await registry.get_thread(owner, run.thread_id)).messages) == []


async def test_appending_without_a_thread_or_run_id_is_an_invalid_argument(registry: Registry) -> None:
    user = new_id("user")
    contexts = (
        registry.make_context(user, run_id=new_id("run")),
        registry.make_context(user, thread_id=new_id("thread")),
    )

    for ctx in contexts:
        request = registry_pb2.AppendMessagesRequest(user_context=ctx, messages=turn("q", "a"))
        assert (
            await status_of(registry.stub.AppendMessages(request, timeout=10))
            == grpc.StatusCode.INVALID_ARGUMENT
        )


@pytest.mark.parametrize(
    ("messages", "problem"),
    [
        ([M(role=S.MESSAGE_ROLE_USER)] * (MAX_MESSAGES_PER_CALL + 1), "at most 500 messages"),
        ([M(role=S.MESSAGE_ROLE_UNSPECIFIED, content="x")], "messages[0].role"),
        ([M(role=S.MESSAGE_ROLE_USER), M(role=7, content="x")], "messages[1].role"),  # type: ignore[arg-type]
        ([M(role=S.MESSAGE_ROLE_USER, content="x" * (MAX_MESSAGE_LENGTH + 1))], "messages[0].content"),
        ([M(role=S.MESSAGE_ROLE_USER, content="x" * MAX_MESSAGE_LENGTH)] * 9, "total at most"),
        ([M(role=S.MESSAGE_ROLE_TOOL, content="{}")], "messages[0].tool_call_id"),
        ([M(role=S.MESSAGE_ROLE_ASSISTANT, tool_calls_json='{"id": 1}')], "messages[0].tool_calls_json"),
        ([M(role=S.MESSAGE_ROLE_USER, tool_calls_json=TOOL_CALLS)], "messages[0].tool_calls_json"),
        ([M(role=S.MESSAGE_ROLE_USER, run_id="run_someone_elses_000001")], "messages[0].run_id"),
        ([M(role=S.MESSAGE_ROLE_USER, content="nul \x00 byte")], "messages[0].content"),
    ],
    ids=lambda v: str(v)[:24] if isinstance(v, str) else None,
)
async def test_messages_out_of_bounds_are_an_invalid_argument_and_store_nothing(
    registry: Registry, messages: list[run_pb2.ThreadMessage], problem: str
) -> None:
    user = new_id("user")
    run = await registry.run_in(user, S.RUN_STATE_RUNNING)

    error = await rpc_error(registry.append_messages(run, messages))

    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert problem in (error.details() or "")
    assert list((await registry.get_thread(user, run.thread_id)).messages) == []
    assert await registry.append_messages(run, turn("q", "a")) == 2  # the refusal did not count


async def test_an_empty_append_stores_nothing_and_does_not_use_up_the_run(registry: Registry) -> None:
    user = new_id("user")
    run = await registry.run_in(user, S.RUN_STATE_RUNNING)

    assert await registry.append_messages(run, []) == 0
    assert await registry.append_messages(run, turn("q", "a")) == 2


async def test_another_users_thread_is_not_found_even_with_the_same_thread_id(registry: Registry) -> None:
    owner, intruder, thread_id = new_id("user"), new_id("user"), new_id("thread")
    await finished(registry, owner, thread_id, turn("secret", "kept"))

    foreign = await rpc_error(registry.get_thread(intruder, thread_id))
    missing = await rpc_error(registry.get_thread(owner, new_id("thread")))
    await finished(registry, intruder, thread_id, turn("mine", "ok"))  # the same id, the intruder's own
    own = await registry.get_thread(intruder, thread_id)

    assert foreign.code() == missing.code() == grpc.StatusCode.NOT_FOUND
    assert contents(list(own.messages)) == ["mine", "ok"]
    assert contents(list((await registry.get_thread(owner, thread_id)).messages)) == ["secret", "kept"]


# --- ListThreads -------------------------------------------------------------------------------


async def test_a_thread_summary_is_derived_from_its_runs_and_messages(registry: Registry) -> None:
    user, thread_id = new_id("user"), new_id("thread")
    long_question = "Tell me   about\nthe " + "history of Paris " * 20
    first = await finished(registry, user, thread_id, turn(long_question, "It is long."))
    second = await finished(registry, user, thread_id, turn("And Rome?", "Also long."))
    newest = await registry.run_in(user, S.RUN_STATE_WAITING, thread_id=thread_id)

    (listed,) = (await registry.list_threads(user)).threads
    got = (await registry.get_thread(user, thread_id)).thread

    assert listed == got
    assert (listed.thread_id, listed.user_id) == (thread_id, user)
    assert listed.created_at == first.created_at
    assert listed.updated_at == newest.updated_at
    assert listed.updated_at.ToDatetime() >= second.updated_at.ToDatetime()
    assert listed.last_run_state == S.RUN_STATE_WAITING
    assert len(listed.title) == 80 and listed.title.endswith("…")
    assert listed.title.startswith("Tell me about the history of Paris")


async def test_a_message_after_the_last_run_change_updates_the_thread(registry: Registry) -> None:
    user, thread_id = new_id("user"), new_id("thread")
    run = await registry.run_in(user, S.RUN_STATE_RUNNING, thread_id=thread_id)
    await asyncio.sleep(0.01)

    await registry.append_messages(run, turn("q", "a"))

    thread = (await registry.get_thread(user, thread_id)).thread
    message_time = (await registry.get_thread(user, thread_id)).messages[0].created_at
    assert thread.updated_at == message_time
    assert thread.updated_at.ToDatetime() > run.updated_at.ToDatetime()
    assert thread.title == "q"


async def test_threads_are_listed_most_recently_updated_first(registry: Registry) -> None:
    user = new_id("user")
    threads = [new_id("thread") for _ in range(3)]
    runs = [await registry.run_in(user, S.RUN_STATE_RUNNING, thread_id=t) for t in threads]
    await asyncio.sleep(0.01)

    await registry.append_messages(runs[0], turn("oldest, now newest", "ok"))

    listed = [t.thread_id for t in (await registry.list_threads(user)).threads]
    assert listed == [threads[0], threads[2], threads[1]]


async def test_list_threads_pages_through_every_thread_once(registry: Registry) -> None:
    user = new_id("user")
    threads = {(await registry.run_in(user, S.RUN_STATE_CANCELLED)).thread_id for _ in range(5)}
    threads |= {(await registry.create(user)).thread_id for _ in range(2)}  # live ones too
    await registry.create(new_id("user"))  # someone else's

    seen: list[str] = []
    token, pages = "", 0
    while True:
        page = await registry.list_threads(user, page_size=2, page_token=token)
        seen += [t.thread_id for t in page.threads]
        pages += 1
        token = page.next_page_token
        if not token:
            break

    assert pages == 4
    assert len(seen) == len(set(seen)) == 7 and set(seen) == threads
    everything = await registry.list_threads(user)
    assert [t.thread_id for t in everything.threads] == seen and not everything.next_page_token


async def test_list_threads_of_a_user_without_runs_is_empty(registry: Registry) -> None:
    page = await registry.list_threads(new_id("user"))

    assert list(page.threads) == [] and page.next_page_token == ""


@pytest.mark.parametrize("token", ["garbage!", "eyJ2IjoxfQ"])
async def test_a_malformed_thread_page_token_is_an_invalid_argument(registry: Registry, token: str) -> None:
    status = await status_of(registry.list_threads(new_id("user"), page_token=token))

    assert status == grpc.StatusCode.INVALID_ARGUMENT


async def test_a_list_runs_token_is_not_a_list_threads_token(registry: Registry) -> None:
    token = encode_page_token(PageCursor(created_at=datetime.now(UTC), run_id=new_id("run")))

    status = await status_of(registry.list_threads(new_id("user"), page_token=token))

    assert status == grpc.StatusCode.INVALID_ARGUMENT


async def test_a_negative_page_size_is_an_invalid_argument(registry: Registry) -> None:
    assert (
        await status_of(registry.list_threads(new_id("user"), page_size=-1))
        == grpc.StatusCode.INVALID_ARGUMENT
    )


# --- DeleteThread ------------------------------------------------------------------------------


async def test_deleting_a_thread_removes_its_runs_requests_and_messages(registry: Registry) -> None:
    user, thread_id = new_id("user"), new_id("thread")
    first = await finished(registry, user, thread_id, turn("q", "a"))
    asked = await registry.run_in(user, S.RUN_STATE_WAITING, thread_id=thread_id)
    await registry.answer_input(asked)
    ended = await registry.transition(asked, S.RUN_STATE_CANCELLED)
    kept = await finished(registry, user, new_id("thread"), turn("other", "thread"))

    deleted = await registry.delete_thread(user, thread_id)

    assert (deleted.deleted_runs, deleted.deleted_messages) == (2, 2)
    for run in (first, ended):
        assert await status_of(registry.get(run)) == grpc.StatusCode.NOT_FOUND
    assert await status_of(registry.get_input(ended)) == grpc.StatusCode.NOT_FOUND
    assert await status_of(registry.get_thread(user, thread_id)) == grpc.StatusCode.NOT_FOUND
    assert [t.thread_id for t in (await registry.list_threads(user)).threads] == [kept.thread_id]
    assert contents(list((await registry.get_thread(user, kept.thread_id)).messages)) == ["other", "thread"]


@pytest.mark.parametrize(
    "state", [S.RUN_STATE_PENDING, S.RUN_STATE_RUNNING, S.RUN_STATE_WAITING, S.RUN_STATE_COMPLETING]
)
async def test_a_thread_with_a_live_run_is_not_deleted(registry: Registry, state: int) -> None:
    user, thread_id = new_id("user"), new_id("thread")
    await finished(registry, user, thread_id, turn("q", "a"))
    live = await registry.run_in(user, state, thread_id=thread_id)

    error = await rpc_error(registry.delete_thread(user, thread_id))

    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert live.run_id in (error.details() or "")
    thread = await registry.get_thread(user, thread_id)
    assert contents(list(thread.messages)) == ["q", "a"]
    assert await registry.get(live) == live


async def test_a_thread_can_be_used_again_after_it_was_deleted(registry: Registry) -> None:
    user, thread_id = new_id("user"), new_id("thread")
    await finished(registry, user, thread_id, turn("before", "x"))
    await registry.delete_thread(user, thread_id)

    await finished(registry, user, thread_id, turn("after", "y"))

    assert contents(list((await registry.get_thread(user, thread_id)).messages)) == ["after", "y"]


async def test_deleting_another_users_or_an_unknown_thread_is_not_found(registry: Registry) -> None:
    owner, thread_id = new_id("user"), new_id("thread")
    run = await finished(registry, owner, thread_id, turn("q", "a"))

    foreign = await status_of(registry.delete_thread(new_id("user"), thread_id))
    unknown = await status_of(registry.delete_thread(owner, new_id("thread")))

    assert foreign == unknown == grpc.StatusCode.NOT_FOUND
    assert await registry.get(run) == run


@pytest.mark.parametrize("method", ["GetThread", "DeleteThread"])
async def test_thread_calls_without_a_thread_id_are_invalid_arguments(
    registry: Registry, method: str
) -> None:
    ctx = registry.make_context(new_id("user"))
    request = getattr(registry_pb2, f"{method}Request")(user_context=ctx)

    error = await rpc_error(getattr(registry.stub, method)(request, timeout=10))

    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "thread_id" in (error.details() or "")
