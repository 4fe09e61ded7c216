"""Clients of the platform Runwire replaces, against the services as processes.

They connect as that platform's browsers do (a ``jwt-auth`` subprotocol with the
token in a ``jwt.`` entry, or ``/ws/chat``), chat with ``user_message`` frames
whose text is inside ``payload``, and read flat keys at the top of each event
frame. The validator below is written from the legacy contract (issue 15), not
from the gateway's code.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Callable, Iterable, Sequence

import pytest

from tests.e2e.conftest import System
from tests.e2e.wsclient import TERMINAL, Frame, WsClient

QUESTION = "what is 2 + 3?"
CORE = ("agent_started", "agent_thinking", "tool_executing", "tool_completed", "agent_completed")
# What the previous platform's clients read at the top of each event frame, per type.
FLAT_KEYS: dict[str, tuple[str, ...]] = {
    "agent_started": ("user_id", "thread_id", "timestamp"),
    "agent_thinking": ("reasoning",),
    "tool_executing": ("tool_name", "parameters"),
    "tool_completed": ("tool_name", "results", "duration"),
    "agent_completed": ("status", "final_response"),
    "agent_error": ("status", "error_message"),
    "agent_death": ("status", "death_cause", "message", "recovery_action"),
}
# The keys a Runwire frame never has at the top level (they live in ``payload``).
PROJECTED = frozenset(key for keys in FLAT_KEYS.values() for key in keys) - {
    "user_id",
    "thread_id",
    "timestamp",
}
ENVELOPE = ("type", "event_id", "seq", "run_id", "thread_id", "user_id", "agent", "timestamp", "payload")


def legacy_problems(frames: Sequence[Frame]) -> list[str]:
    """Everything a client of the previous platform would reject in one run's frames."""
    problems: list[str] = []
    order = [f["type"] for f in frames if f.get("type") in CORE]
    firsts = [t for i, t in enumerate(order) if t not in order[:i]]
    if firsts != list(CORE):
        problems.append(f"core events {firsts}, expected {list(CORE)} in that order")
    for frame in frames:
        kind = frame.get("type")
        for key in FLAT_KEYS.get(kind, ()):
            if key not in frame:
                problems.append(f"{kind} lacks {key!r}")
        if kind in ("agent_thinking",) and not isinstance(frame.get("reasoning"), str):
            problems.append("reasoning is not text")
        if kind in ("tool_executing", "tool_completed") and not (
            isinstance(frame.get("tool_name"), str) and frame["tool_name"]
        ):
            problems.append(f"{kind} has no tool_name")
        if kind == "tool_executing" and not isinstance(frame.get("parameters"), dict):
            problems.append("parameters is not an object")
        if kind == "tool_completed":
            duration = frame.get("duration")
            if isinstance(duration, bool) or not isinstance(duration, int | float) or duration < 0:
                problems.append(f"duration {duration!r} is not a number of milliseconds")
        if kind == "agent_completed" and not (
            frame.get("status") == "completed" and isinstance(frame.get("final_response"), str)
        ):
            problems.append("agent_completed needs status completed and a final_response")
        if kind == "agent_death" and frame.get("recovery_action") != "refresh_required":
            problems.append("agent_death must say refresh_required")
    return problems


def envelope_problems(frames: Iterable[Frame]) -> list[str]:
    """Runwire's own envelope, which every event frame keeps (legacy or not)."""
    problems: list[str] = []
    for frame in frames:
        missing = [key for key in ENVELOPE if key not in frame]
        if missing or not isinstance(frame["payload"], dict):
            problems.append(f"{frame.get('type')} lacks {missing or 'a payload object'}")
    return problems


def b64url(token: str) -> str:
    return base64.urlsafe_b64encode(token.encode()).decode().rstrip("=")


def chat_url(system: System) -> str:
    return system.url + "/chat"


async def open_legacy(system: System, token: str, variant: str) -> WsClient:
    if variant == "base64url":
        return await WsClient.connect(system.url, subprotocols=["jwt-auth", f"jwt.{b64url(token)}"])
    if variant == "raw":
        return await WsClient.connect(system.url, subprotocols=["jwt-auth", f"jwt.{token}"])
    return await WsClient.connect(chat_url(system), headers={"Authorization": f"Bearer {token}"})


async def open_runwire(system: System, token: str) -> WsClient:
    client = await WsClient.connect(system.url, subprotocols=["runwire.v1", f"bearer.{token}"])
    assert client.connection.subprotocol == "runwire.v1"
    return client


async def ask(client: WsClient, text: str = QUESTION) -> str:
    """Send the previous platform's chat message; return the run it started."""
    await client.send({"type": "user_message", "payload": {"content": text}, "timestamp": 1_700_000_000})
    accepted = await client.wait_for(lambda f: f.get("type") == "run.accepted")
    run_id: str = accepted["run"]["run_id"]
    await client.wait_terminal(run_id)
    return run_id


@pytest.mark.parametrize("variant", ["base64url", "raw", "chat-path"])
async def test_a_legacy_client_chats_and_its_validator_accepts_the_five_core_events(
    system: System, user: Callable[[], str], variant: str
) -> None:
    owner = user()
    token = system.token(owner)
    legacy = await open_legacy(system, token, variant)
    runwire = await open_runwire(system, token)
    try:
        if variant != "chat-path":
            assert legacy.connection.subprotocol == "jwt-auth"
        run_id = await ask(legacy)
        frames = legacy.events(run_id)
        assert [f["type"] for f in frames if f["type"] in CORE] == list(CORE)
        assert legacy_problems(frames) == []
        assert envelope_problems(frames) == []
        done = frames[-1]
        assert done["type"] == "agent_completed" and "5" in done["final_response"]
        tool = next(f for f in frames if f["type"] == "tool_completed")
        assert tool["tool_name"] == "calculator" and tool["results"] == tool["payload"]["result"]
        assert tool["duration"] == tool["payload"]["duration_ms"]
        # The same events on a runwire.v1 connection of the same user: today's frames exactly.
        await runwire.wait_terminal(run_id)
        plain = runwire.events(run_id)
        assert [f["event_id"] for f in plain] == [f["event_id"] for f in frames]
        assert all(PROJECTED.isdisjoint(f) for f in plain), plain
        assert legacy_problems(plain) != []  # the validator is not satisfied by Runwire's frames
        for legacy_frame, frame in zip(frames, plain, strict=True):
            assert {key: legacy_frame[key] for key in frame} == frame
            assert list(legacy_frame)[: len(frame)] == list(frame)
    finally:
        await legacy.close()
        await runwire.close()


async def test_a_legacy_connection_gets_the_replies_its_clients_expect(
    system: System, user: Callable[[], str]
) -> None:
    owner = user()
    token = system.token(owner)
    legacy = await open_legacy(system, token, "base64url")
    runwire = await open_runwire(system, token)
    try:
        for empty in (
            {"type": "user_message", "payload": {"content": ""}},
            {"type": "chat", "payload": {"text": "   \n"}},
            {"type": "chat_message", "content": "\t"},
            {"type": "user_message", "payload": {}},
        ):
            reply = await legacy.call(empty)
            assert (reply["type"], reply["message"]) == ("error", "Please enter a message"), reply
        for kind in ("user_typing", "typing_started", "typing_stopped"):
            reply = await legacy.call({"type": kind, "payload": {"thread_id": "thread_0123456789abcdef"}})
            assert reply["type"] == "system_message", reply
        ack = await legacy.call({"type": "heartbeat", "timestamp": 1_700_000_000})
        assert (
            ack["type"] == "heartbeat_ack" and ack["status"] == "healthy" and ack["timestamp"].endswith("Z")
        )
        pong = await legacy.call({"type": "ping"})
        assert (pong["type"], pong["user_id"]) == ("pong", owner) and pong["timestamp"].endswith("Z")
        # None of it started a run, and the connection is still open and serving.
        runs = await legacy.call({"type": "runs.list"})
        assert runs["runs"] == []
        assert not legacy.closed.is_set()
        # A runwire.v1 connection of the same user: today's pong.
        plain = await runwire.call({"type": "ping"})
        assert plain["type"] == "pong" and "user_id" not in plain and "timestamp" not in plain
    finally:
        await legacy.close()
        await runwire.close()


async def test_twenty_legacy_and_twenty_runwire_users_at_once_get_exactly_their_own_events(
    system: System, user: Callable[[], str]
) -> None:
    owners = [user() for _ in range(40)]
    legacy_owners = set(owners[:20])

    async def one(owner: str) -> tuple[str, bool, str, list[Frame]]:
        token = system.token(owner)
        is_legacy = owner in legacy_owners
        client = await (open_legacy(system, token, "base64url") if is_legacy else open_runwire(system, token))
        try:
            if is_legacy:
                run_id = await ask(client)
            else:
                accepted = await client.start_run("assistant", {"message": QUESTION})
                run_id = accepted["run"]["run_id"]
                await client.wait_terminal(run_id)
            await asyncio.sleep(0.2)  # anything stray would arrive now
            return owner, is_legacy, run_id, client.events()
        finally:
            await client.close()

    results = await asyncio.gather(*(one(owner) for owner in owners))
    foreign = missing = duplicated = 0
    for owner, is_legacy, run_id, events in results:
        foreign += sum(1 for f in events if f["user_id"] != owner or f["run_id"] != run_id)
        seqs = [  # a coalesced partial_result stands for merged_from..seq
            seq
            for f in events
            if f["user_id"] == owner and f["run_id"] == run_id
            for seq in range(f.get("merged_from", f["seq"]), f["seq"] + 1)
        ]
        duplicated += len(seqs) - len(set(seqs))
        missing += len(set(range(1, max(seqs) + 1)) - set(seqs))
        assert events[-1]["type"] in TERMINAL
        if is_legacy:
            assert legacy_problems(events) == [], (owner, events)
        else:
            assert all(PROJECTED.isdisjoint(f) for f in events), (owner, events)
        assert envelope_problems(events) == []
    assert (foreign, missing, duplicated) == (0, 0, 0)
    assert len({run_id for _, _, run_id, _ in results}) == 40
