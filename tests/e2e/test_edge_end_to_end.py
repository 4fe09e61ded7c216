"""The WebSocket edge, through the real gateway process: auth and bad frames."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import jwt
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from tests.e2e.conftest import System
from tests.e2e.wsclient import WsClient

pytestmark = pytest.mark.e2e


def _unsigned(claims: dict[str, Any]) -> str:
    return jwt.encode(claims, key=None, algorithm="none")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "make_headers",
    [
        pytest.param(lambda s, u: {}, id="no token"),
        pytest.param(lambda s, u: {"Authorization": f"Bearer {s.token(u, ttl_s=-30)}"}, id="expired"),
        pytest.param(
            lambda s, u: {
                "Authorization": "Bearer "
                + jwt.encode(
                    {"sub": u, "exp": int(time.time()) + 60},
                    "not-the-secret-but-long-enough-0123456789",
                    algorithm="HS256",
                )
            },
            id="wrong signature",
        ),
        pytest.param(
            lambda s, u: {"Authorization": "Bearer " + _unsigned({"sub": u, "exp": int(time.time()) + 60})},
            id="alg none",
        ),
        pytest.param(lambda s, u: {"Authorization": "Bearer not-a-jwt"}, id="garbage"),
    ],
)
async def test_handshakes_without_a_valid_token_are_refused_with_401(
    system: System, user: Callable[[], str], make_headers: Callable[[System, str], dict[str, str]]
) -> None:
    with pytest.raises(InvalidStatus) as refused:
        async with connect(system.url, additional_headers=make_headers(system, user()), open_timeout=10):
            pass
    assert refused.value.response.status_code == 401


async def test_a_browser_can_authenticate_with_the_bearer_subprotocol(
    system: System, user: Callable[[], str]
) -> None:
    token = system.token(user())
    async with connect(system.url, subprotocols=["runwire.v1", f"bearer.{token}"], open_timeout=10) as ws:  # type: ignore[list-item]
        assert ws.subprotocol == "runwire.v1"
        assert json.loads(await ws.recv())["type"] == "connected"


BAD_FRAMES: list[tuple[str, Any, str]] = [
    ("invalid json", "{not json", "invalid_message"),
    ("json array", "[1, 2]", "invalid_message"),
    ("json number", "42", "invalid_message"),
    ("missing type", {"id": "x"}, "invalid_message"),
    ("type not a string", {"type": 7}, "invalid_message"),
    ("unknown type", {"type": "run.explode"}, "unknown_type"),
    ("run.start without agent", {"type": "run.start", "input": {}}, "invalid_argument"),
    (
        "run.start input not an object",
        {"type": "run.start", "agent": "scripted", "input": "hi"},
        "invalid_argument",
    ),
    ("run.start unknown agent", {"type": "run.start", "agent": "nobody_here", "input": {}}, "not_found"),
    (
        "run.start bad script",
        {"type": "run.start", "agent": "scripted", "input": {"steps": "no"}},
        "invalid_argument",
    ),
    (
        "run.start bad strategy",
        {"type": "run.start", "agent": "scripted", "input": {}, "multitask_strategy": "yolo"},
        "invalid_argument",
    ),
    ("run.get without run_id", {"type": "run.get"}, "invalid_argument"),
    ("run.get run_id number", {"type": "run.get", "run_id": 5}, "invalid_argument"),
    (
        "run.get unknown run",
        {"type": "run.get", "run_id": "run_00000000000000000000000000000000"},
        "not_found",
    ),
    ("run.cancel placeholder run", {"type": "run.cancel", "run_id": "null"}, "invalid_argument"),
    ("runs.list limit text", {"type": "runs.list", "limit": "x"}, "invalid_argument"),
    ("runs.list limit zero", {"type": "runs.list", "limit": 0}, "invalid_argument"),
    ("runs.list limit huge", {"type": "runs.list", "limit": 100000}, "invalid_argument"),
    ("resume without after", {"type": "resume"}, "invalid_argument"),
    ("oversized frame", {"type": "ping", "pad": "x" * 70_000}, "invalid_message"),
    ("binary frame", b"\x00\x01binary", "invalid_message"),
]


@pytest.mark.parametrize(
    ("frame", "code"), [(f, c) for _, f, c in BAD_FRAMES], ids=[n for n, _, _ in BAD_FRAMES]
)
async def test_a_bad_frame_gets_the_right_error_code_and_the_connection_stays_open(
    system: System, user: Callable[[], str], frame: Any, code: str
) -> None:
    client = await WsClient.open(system.url, system.token(user()))
    try:
        if isinstance(frame, dict):
            frame = json.dumps({"id": "bad-1", **frame}) if "id" not in frame else json.dumps(frame)
        await client.send(frame)
        error = await client.wait_for(lambda f: f.get("type") == "error")
        assert error["code"] == code, error
        assert error["message"]
        pong = await client.call({"type": "ping"})
        assert pong["type"] == "pong"
    finally:
        await client.close()


async def test_compatibility_aliases_start_runs_of_the_default_agent(
    system: System, user: Callable[[], str]
) -> None:
    client = await WsClient.open(system.url, system.token(user()))
    try:
        for frame in (
            {"type": "start_agent", "payload": {"user_request": "count the words in this sentence"}},
            {"type": "chat", "content": "what is 2 + 2?"},
            {"type": "user_message", "text": "what time is it?"},
        ):
            reply = await client.call(frame)
            assert reply["type"] == "run.accepted" and reply["run"]["agent"] == "assistant", reply
            final = await client.wait_terminal(reply["run"]["run_id"])
            assert final["type"] == "agent_completed"
        ack = await client.call({"type": "heartbeat"})
        assert ack["type"] == "heartbeat_ack"
    finally:
        await client.close()


async def test_runs_list_shows_only_the_callers_runs(system: System, user: Callable[[], str]) -> None:
    alice, bob = user(), user()
    a = await WsClient.open(system.url, system.token(alice))
    b = await WsClient.open(system.url, system.token(bob))
    try:
        run = (await a.start_run("scripted", {"steps": [], "result": "x"}))["run"]
        await a.wait_terminal(run["run_id"])
        mine = await a.call({"type": "runs.list"})
        assert [r["run_id"] for r in mine["runs"]] == [run["run_id"]]
        theirs = await b.call({"type": "runs.list"})
        assert theirs["runs"] == []
        peek = await b.call({"type": "run.get", "run_id": run["run_id"]})
        assert peek["type"] == "error" and peek["code"] == "not_found"
        cancel = await b.call({"type": "run.cancel", "run_id": run["run_id"]})
        assert cancel["type"] == "error" and cancel["code"] == "not_found"
    finally:
        await a.close()
        await b.close()
