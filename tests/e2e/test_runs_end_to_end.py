"""One system, real processes, real WebSocket clients: the product path."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from tests.e2e.conftest import System
from tests.e2e.wsclient import Frame, WsClient

pytestmark = pytest.mark.e2e

PAYLOAD_KEYS = {
    "agent_started": {"message", "input"},
    "agent_thinking": {"reasoning"},
    "tool_executing": {"tool_name", "parameters", "call_id"},
    "tool_completed": {"tool_name", "call_id", "status", "duration_ms"},
    "partial_result": {"content", "index"},
    "agent_completed": {"status", "result", "final_response", "duration_ms"},
    "agent_cancelled": {"reason"},
}
ENVELOPE_KEYS = {"event_id", "seq", "type", "run_id", "thread_id", "user_id", "agent", "timestamp", "payload"}


def _script(marker: str, *, sleep_ms: int = 0) -> dict[str, Any]:
    steps: list[dict[str, Any]] = [{"think": f"thinking {marker}"}]
    if sleep_ms:
        steps.append({"sleep_ms": sleep_ms})
    steps += [
        {"partial": f"part {marker}"},
        {"tool": "echo", "args": {"text": marker}},
    ]
    return {"steps": steps, "result": f"done {marker}"}


async def test_an_assistant_run_emits_the_five_core_events_in_order_with_their_payloads(
    system: System, user: Callable[[], str]
) -> None:
    me = user()
    client = await WsClient.open(system.url, system.token(me))
    try:
        accepted = await client.start_run("assistant", {"message": "what is 12 * (3 + 4)?"})
        assert accepted["type"] == "run.accepted", accepted
        run = accepted["run"]
        assert {"run_id", "thread_id", "agent", "state", "created_at", "updated_at"} <= run.keys()
        final = await client.wait_terminal(run["run_id"])
        events = client.events(run["run_id"])
        kinds = [e["type"] for e in events]
        core = [
            k
            for k in kinds
            if k in ("agent_started", "agent_thinking", "tool_executing", "tool_completed", "agent_completed")
        ]
        assert core[0] == "agent_started" and core[-1] == "agent_completed"
        first = {k: core.index(k) for k in set(core)}
        assert (
            first["agent_started"]
            < first["agent_thinking"]
            < first["tool_executing"]
            < first["tool_completed"]
            < first["agent_completed"]
        )
        for event in events:
            assert event.keys() >= ENVELOPE_KEYS, event
            assert event["user_id"] == me
            assert PAYLOAD_KEYS.get(event["type"], set()) <= event["payload"].keys(), event
        assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
        assert final["type"] == "agent_completed"
        assert "84" in final["payload"]["final_response"]
        state = await client.call({"type": "run.get", "run_id": run["run_id"]})
        assert state["type"] == "run" and state["run"]["state"] == "completed"
    finally:
        await client.close()


async def test_fifty_users_at_once_each_receive_all_and_only_their_own_events(
    system: System, user: Callable[[], str]
) -> None:
    users = [user() for _ in range(50)]
    runs_per_user = 2

    async def one_user(me: str) -> tuple[str, WsClient, list[str]]:
        client = await WsClient.open(system.url, system.token(me))
        run_ids = []
        for _ in range(runs_per_user):
            reply = await client.start_run("scripted", _script(f"secret-{me}"))
            assert reply["type"] == "run.accepted", reply
            run_ids.append(reply["run"]["run_id"])
        for run_id in run_ids:
            await client.wait_terminal(run_id, timeout=60)
        return me, client, run_ids

    results = await asyncio.gather(*(one_user(me) for me in users))
    try:
        foreign = missing = duplicated = 0
        for me, client, run_ids in results:
            events = client.events()
            for event in events:
                text = str(event)
                if event["user_id"] != me or any(f"secret-{other}" in text for other in users if other != me):
                    foreign += 1
            ids = [e["event_id"] for e in events]
            duplicated += len(ids) - len(set(ids))
            assert ids == sorted(ids, key=lambda i: tuple(int(p) for p in i.split("-"))), "event_id order"
            for run_id in run_ids:
                seqs = [e["seq"] for e in events if e["run_id"] == run_id]
                missing += 0 if seqs == list(range(1, 7)) else 1
        assert (foreign, missing, duplicated) == (0, 0, 0)
    finally:
        await asyncio.gather(*(client.close() for _, client, _ in results))


async def test_every_connection_of_a_user_receives_its_events_and_nobody_else_does(
    system: System, user: Callable[[], str]
) -> None:
    owner, stranger = user(), user()
    tab1 = await WsClient.open(system.url, system.token(owner))
    tab2 = await WsClient.open(system.url, system.token(owner))
    other = await WsClient.open(system.url, system.token(stranger))
    try:
        reply = await tab1.start_run("scripted", _script("tabs"))
        run_id = reply["run"]["run_id"]
        await tab1.wait_terminal(run_id)
        await tab2.wait_terminal(run_id)
        assert [e["event_id"] for e in tab1.events(run_id)] == [e["event_id"] for e in tab2.events(run_id)]
        pong = await other.call({"type": "ping"})
        assert pong["type"] == "pong"
        assert other.events() == []
    finally:
        for client in (tab1, tab2, other):
            await client.close()


async def test_cancelling_mid_run_ends_it_with_agent_cancelled_and_state_cancelled(
    system: System, user: Callable[[], str]
) -> None:
    client = await WsClient.open(system.url, system.token(user()))
    try:
        reply = await client.start_run(
            "scripted", {"steps": [{"think": "start"}, {"sleep_ms": 20_000}], "result": "never"}
        )
        run_id = reply["run"]["run_id"]
        await client.wait_for(lambda f: f.get("run_id") == run_id and f.get("type") == "agent_thinking")
        cancelling = await client.call({"type": "run.cancel", "run_id": run_id})
        assert cancelling["type"] == "run.cancelling", cancelling
        final = await client.wait_terminal(run_id, timeout=15)
        assert final["type"] == "agent_cancelled"
        assert [e["type"] for e in client.events(run_id)].count("agent_cancelled") == 1
        state = await client.call({"type": "run.get", "run_id": run_id})
        assert state["run"]["state"] == "cancelled"
        again = await client.call({"type": "run.cancel", "run_id": run_id})
        assert again["type"] == "run.cancelling" and again["run"]["state"] == "cancelled"
    finally:
        await client.close()


async def test_the_fourth_concurrent_run_of_a_user_is_refused_and_other_users_are_unaffected(
    system: System, user: Callable[[], str]
) -> None:
    greedy = await WsClient.open(system.url, system.token(user()))
    bystander = await WsClient.open(system.url, system.token(user()))
    slow = {"steps": [{"sleep_ms": 5_000}], "result": "slow"}
    try:
        accepted = [await greedy.start_run("scripted", slow) for _ in range(3)]
        assert all(r["type"] == "run.accepted" for r in accepted), accepted
        refused = await greedy.start_run("scripted", slow)
        assert refused["type"] == "error" and refused["code"] == "resource_exhausted", refused
        ok = await bystander.start_run("scripted", _script("bystander"))
        assert ok["type"] == "run.accepted"
        final = await bystander.wait_terminal(ok["run"]["run_id"])
        assert final["type"] == "agent_completed"
        for reply in accepted:
            await greedy.call({"type": "run.cancel", "run_id": reply["run"]["run_id"]})
    finally:
        await greedy.close()
        await bystander.close()


async def test_reconnecting_with_the_last_event_id_replays_what_was_missed_then_live_events(
    system: System, user: Callable[[], str]
) -> None:
    me = user()
    steps: list[dict[str, Any]] = []
    for i in range(12):
        steps += [{"partial": f"chunk-{i}"}, {"sleep_ms": 150}]
    first = await WsClient.open(system.url, system.token(me))
    reply = await first.start_run("scripted", {"steps": steps, "result": "all chunks"})
    run_id = reply["run"]["run_id"]
    await first.wait_for(
        lambda f: f.get("run_id") == run_id and f.get("payload", {}).get("content") == "chunk-2"
    )
    await first.close()
    seen: list[Frame] = first.events(run_id)
    last = seen[-1]["event_id"]
    await asyncio.sleep(0.6)  # events keep flowing while nobody listens
    second = await WsClient.open(system.url, system.token(me), after=last)
    try:
        await second.wait_terminal(run_id)
        rest = second.events(run_id)
        combined = seen + rest
        seqs = [e["seq"] for e in combined]
        assert seqs == list(range(1, len(combined) + 1)), seqs
        assert combined[-1]["type"] == "agent_completed"
        assert len({e["event_id"] for e in combined}) == len(combined)
    finally:
        await second.close()


async def test_a_resume_frame_replays_events_after_the_cursor_and_confirms(
    system: System, user: Callable[[], str]
) -> None:
    client = await WsClient.open(system.url, system.token(user()))
    try:
        reply = await client.start_run("scripted", _script("resume"))
        run_id = reply["run"]["run_id"]
        await client.wait_terminal(run_id)
        events = client.events(run_id)
        cursor = events[1]["event_id"]
        before = len(client.frames)
        resumed = await client.call({"type": "resume", "after": cursor})
        assert resumed["type"] == "resumed" and resumed["replayed"] == len(events) - 2, resumed
        replayed = [f for f in client.frames[before:] if f.get("run_id") == run_id]
        assert [e["seq"] for e in replayed] == [e["seq"] for e in events[2:]]
    finally:
        await client.close()
