"""Human in the loop and threads, end to end: WebSocket clients against the services as processes."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from runwire_common.attestation import ContextAttestor
from tests.e2e.conftest import Launch, System
from tests.e2e.test_faults import assert_one_clean_run
from tests.e2e.test_scale_out import _executor_of
from tests.e2e.wsclient import Frame, WsClient

pytestmark = pytest.mark.e2e


async def _asked(client: WsClient, run_id: str, *, index: int = 0) -> Frame:
    """The run's ``input_required`` event number ``index``."""
    await client.wait_for(
        lambda f: (
            f["type"] == "input_required"
            and f["run_id"] == run_id
            and len([e for e in client.events(run_id) if e["type"] == "input_required"]) > index
        )
    )
    return [e for e in client.events(run_id) if e["type"] == "input_required"][index]


async def _respond(client: WsClient, run_id: str, request_id: str, response: dict[str, Any]) -> Frame:
    return await client.call(
        {"type": "run.respond", "run_id": run_id, "request_id": request_id, "response": response}
    )


async def test_a_question_is_answered_from_a_second_connection_and_the_run_goes_on(
    system: System, user: Callable[[], str]
) -> None:
    me = user()
    first = await WsClient.open(system.url, system.token(me))
    second = await WsClient.open(system.url, system.token(me))
    stranger = await WsClient.open(system.url, system.token(user()))
    try:
        reply = await first.start_run(
            "scripted", {"steps": [{"ask": "Your name?"}, {"partial": "!"}], "result": "ok"}
        )
        run_id = reply["run"]["run_id"]
        asked = await _asked(first, run_id)
        payload = asked["payload"]
        assert payload["kind"] == "input" and payload["prompt"] == "Your name?"
        # Both tabs see the question, and the run says what it waits for.
        await _asked(second, run_id)
        got = await second.call({"type": "run.get", "run_id": run_id})
        assert got["run"]["state"] == "waiting"
        assert got["run"]["pending_input"]["request_id"] == payload["request_id"]

        refused = await _respond(stranger, run_id, payload["request_id"], {"text": "Mallory"})
        assert (refused["type"], refused["code"]) == ("error", "not_found")
        wrong = await _respond(second, run_id, "input_does_not_exist", {"text": "Ada"})
        assert (wrong["type"], wrong["code"]) == ("error", "not_found")
        invalid = await _respond(second, run_id, payload["request_id"], {"txt": "Ada"})
        assert (invalid["type"], invalid["code"]) == ("error", "invalid_argument")

        answered = await _respond(second, run_id, payload["request_id"], {"text": "Ada"})
        assert answered["type"] == "run.responded", answered
        assert answered["run"]["state"] in ("running", "completed")
        again = await _respond(first, run_id, payload["request_id"], {"text": "Eve"})
        assert (again["type"], again["code"]) == ("error", "failed_precondition")

        final = await first.wait_terminal(run_id)
        assert final["type"] == "agent_completed"
        events = first.events(run_id)
        assert_one_clean_run(events)
        assert [e["payload"]["content"] for e in events if e["type"] == "partial_result"] == ["Ada", "!"]
        assert not stranger.events()
    finally:
        await asyncio.gather(first.close(), second.close(), stranger.close())


async def test_a_user_who_reconnects_answers_and_resumes_with_nothing_lost(
    system: System, user: Callable[[], str]
) -> None:
    me = user()
    client = await WsClient.open(system.url, system.token(me))
    reply = await client.start_run(
        "scripted", {"steps": [{"partial": "a"}, {"ask": "Go on?"}, {"partial": "b"}]}
    )
    run_id = reply["run"]["run_id"]
    asked = await _asked(client, run_id)
    cursor = asked["event_id"]
    await client.close()

    back = await WsClient.open(system.url, system.token(me), after=cursor)
    try:
        answered = await _respond(back, run_id, asked["payload"]["request_id"], {"text": "yes"})
        assert answered["type"] == "run.responded", answered
        await back.wait_terminal(run_id)
        before = [e for e in client.events(run_id) if e["seq"] <= asked["seq"]]
        assert_one_clean_run(before + back.events(run_id))
        assert [e["payload"]["content"] for e in back.events(run_id) if e["type"] == "partial_result"] == [
            "yes",
            "b",
        ]
    finally:
        await back.close()


@pytest.mark.parametrize("approved", [True, False], ids=["approved", "denied"])
async def test_a_tool_call_waits_for_approval(
    system: System, user: Callable[[], str], approved: bool
) -> None:
    client = await WsClient.open(system.url, system.token(user()))
    try:
        script = {
            "steps": [{"tool": "echo", "args": {"word": "hi"}, "require_approval": True}],
            "result": "ok",
        }
        run_id = (await client.start_run("scripted", script))["run"]["run_id"]
        asked = (await _asked(client, run_id))["payload"]
        assert asked["kind"] == "approval" and asked["tool_name"] == "echo"
        response: dict[str, Any] = {"approved": True} if approved else {"approved": False, "reason": "no"}
        assert (await _respond(client, run_id, asked["request_id"], response))["type"] == "run.responded"
        assert (await client.wait_terminal(run_id))["type"] == "agent_completed"
        completed = [e for e in client.events(run_id) if e["type"] == "tool_completed"]
        assert [e["payload"]["call_id"] for e in completed] == [asked["call_id"]]
        assert completed[0]["payload"]["status"] == ("success" if approved else "denied")
        assert_one_clean_run(client.events(run_id))
    finally:
        await client.close()


async def test_threads_remember_their_turns_and_belong_to_their_owner(
    system: System, user: Callable[[], str]
) -> None:
    me = user()
    client = await WsClient.open(system.url, system.token(me))
    stranger = await WsClient.open(system.url, system.token(user()))
    try:
        first = await client.start_run("assistant", {"message": "what is 2 + 3?"})
        thread_id = first["run"]["thread_id"]
        await client.wait_terminal(first["run"]["run_id"])
        second = await client.start_run("assistant", {"message": "echo hello"}, thread_id=thread_id)
        await client.wait_terminal(second["run"]["run_id"])

        thread = await client.call({"type": "thread.get", "thread_id": thread_id})
        assert thread["type"] == "thread", thread
        roles = [(m["role"], m["content"]) for m in thread["messages"]]
        assert roles[0] == ("user", "what is 2 + 3?") and roles[2] == ("user", "echo hello")
        assert [r for r, _ in roles] == ["user", "assistant", "user", "assistant"]
        assert thread["thread"]["title"] == "what is 2 + 3?"
        assert thread["thread"]["last_run_state"] == "completed"

        listed = await client.call({"type": "threads.list"})
        assert [t["thread_id"] for t in listed["threads"]] == [thread_id]
        hidden = await stranger.call({"type": "thread.get", "thread_id": thread_id})
        assert (hidden["type"], hidden["code"]) == ("error", "not_found")
        assert (await stranger.call({"type": "threads.list"}))["threads"] == []
        refused = await stranger.call({"type": "thread.delete", "thread_id": thread_id})
        assert (refused["type"], refused["code"]) == ("error", "not_found")

        busy = await client.start_run("scripted", {"steps": [{"ask": "wait"}]}, thread_id=thread_id)
        await _asked(client, busy["run"]["run_id"])
        live = await client.call({"type": "thread.delete", "thread_id": thread_id})
        assert (live["type"], live["code"]) == ("error", "failed_precondition")
        await client.call({"type": "run.cancel", "run_id": busy["run"]["run_id"]})
        await client.wait_terminal(busy["run"]["run_id"])

        deleted = await client.call({"type": "thread.delete", "thread_id": thread_id})
        assert deleted == {"type": "thread.deleted", "id": deleted["id"], "thread_id": thread_id}
        gone = await client.call({"type": "thread.get", "thread_id": thread_id})
        assert (gone["type"], gone["code"]) == ("error", "not_found")
    finally:
        await asyncio.gather(client.close(), stranger.close())


async def test_an_unanswered_question_ends_the_run_in_timeout(
    launch: Launch, user: Callable[[], str]
) -> None:
    system = launch(service_env={"execution": {"RUNWIRE_EXECUTION_INPUT_TIMEOUT_S": "1"}})
    client = await WsClient.open(system.url, system.token(user()))
    try:
        run_id = (await client.start_run("scripted", {"steps": [{"ask": "anyone?"}]}))["run"]["run_id"]
        final = await client.wait_terminal(run_id)
        assert final["type"] == "agent_error"
        assert (final["payload"]["status"], final["payload"]["error_code"]) == ("timeout", "input_timeout")
        run = await client.call({"type": "run.get", "run_id": run_id})
        assert run["run"]["state"] == "timeout" and run["run"]["pending_input"] is None
    finally:
        await client.close()


async def test_with_two_execution_replicas_the_answer_reaches_the_one_running_the_run(
    launch: Launch,
    fresh_database: str,
    redis_url: str,
    attestor: ContextAttestor,
    user: Callable[[], str],
) -> None:
    system = launch(replicas=2, database_url=fresh_database, redis_url=redis_url)
    users = [user() for _ in range(8)]
    clients = [await WsClient.open(system.url, system.token(me)) for me in users]
    try:
        runs = [
            (await c.start_run("scripted", {"steps": [{"ask": "name?"}], "result": "ok"}))["run"]["run_id"]
            for c in clients
        ]
        executors = {
            await _executor_of(system, attestor, me, run_id) for me, run_id in zip(users, runs, strict=True)
        }
        assert len(executors) == 2, executors  # both replicas run some of them
        for client, run_id in zip(clients, runs, strict=True):
            asked = (await _asked(client, run_id))["payload"]
            answered = await _respond(client, run_id, asked["request_id"], {"text": f"answer-{run_id}"})
            assert answered["type"] == "run.responded", answered
        for client, run_id in zip(clients, runs, strict=True):
            assert (await client.wait_terminal(run_id))["type"] == "agent_completed"
            partials = [
                e["payload"]["content"] for e in client.events(run_id) if e["type"] == "partial_result"
            ]
            assert partials == [f"answer-{run_id}"]
    finally:
        await asyncio.gather(*(c.close() for c in clients))
