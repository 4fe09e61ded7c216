"""Hostile frames at the gateway: arbitrary JSON, arbitrary text, arbitrary binary.

One real gateway in front of the real registry, bridge and execution services;
one WebSocket connection per test carries every generated case. After each
frame a sentinel ``ping`` follows, so each case checks that the frame got
exactly one reply and that the connection still serves requests.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import re
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.asyncio.client import ClientConnection

from tests.hostile.harness import ERROR_CODES, EVENT_TYPES, REPLY_TIMEOUT_S, Stack
from tests.hostile.strategies import ANY_CHAR, JSON_VALUES, client_frames, encode_json

pytestmark = [
    pytest.mark.asyncio(loop_scope="module"),
    pytest.mark.timeout(900),
    # Failing examples can be megabytes long; let Hypothesis print them instead of erroring.
    pytest.mark.filterwarnings("ignore::hypothesis.errors.HypothesisWarning"),
]

MAX_FRAME_BYTES = 65536
MAX_NESTING = 256  # arrays/objects inside each other that the gateway parses (docs/protocol.md §7)
HARD_FRAME_BYTES = 16 * MAX_FRAME_BYTES  # above it the gateway closes with 1009, by design
MAX_CLIENT_ID_CHARS = 128
# The reply each request type gets when it is served (brief §6); ``error`` otherwise.
REPLY_TYPES = {
    "run.start": "run.accepted",
    "start_agent": "run.accepted",
    "user_message": "run.accepted",
    "chat": "run.accepted",
    "chat_message": "run.accepted",
    "user_typing": "system_message",
    "typing_started": "system_message",
    "typing_stopped": "system_message",
    "run.cancel": "run.cancelling",
    "run.get": "run",
    "runs.list": "runs",
    "resume": "resumed",
    "ping": "pong",
    "heartbeat": "heartbeat_ack",
}
# Hostile input is the client's fault: it never gets an error that blames the server.
SERVER_FAULT_CODES = frozenset({"internal", "unavailable"})
SURROGATE = re.compile(r"[\ud800-\udfff]")

HOSTILE = settings(
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    deadline=None,
)
_sentinels = itertools.count()


@pytest_asyncio.fixture(loop_scope="module")
async def ws(stack: Stack) -> AsyncIterator[ClientConnection]:
    """One connection for all the cases of a test; a test that gets it closed fails."""
    connection = await stack.connect()
    yield connection
    await connection.close()


async def exchange(ws: ClientConnection, message: str | bytes) -> list[dict[str, Any]]:
    """Send ``message`` and a sentinel ping; return the frames that answered ``message``.

    Event frames (of runs a generated frame started) are skipped; ``gap`` frames
    are kept, they belong to a ``resume`` reply.
    """
    sentinel = f"sentinel-{next(_sentinels)}"
    await ws.send(message)
    await ws.send(json.dumps({"type": "ping", "id": sentinel}))
    replies: list[dict[str, Any]] = []
    pong_seen = False
    async with asyncio.timeout(REPLY_TIMEOUT_S):
        while not (pong_seen and replies and replies[-1]["type"] != "gap"):
            frame = json.loads(await ws.recv())
            assert isinstance(frame, dict) and isinstance(frame.get("type"), str), frame
            if frame["type"] in EVENT_TYPES and "event_id" in frame:
                continue
            if frame == {**frame, "type": "pong", "id": sentinel}:
                pong_seen = True
                continue
            replies.append(frame)
    return replies


def clean(value: Any) -> bool:
    """Whether a parsed frame is plain Unicode with finite numbers (what the gateway can echo)."""
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, str) and SURROGATE.search(item):
            return False
        if isinstance(item, float) and not math.isfinite(item):
            return False
        if isinstance(item, dict):
            pending.extend(item)
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)
    return True


def valid_client_id(frame: dict[str, Any]) -> bool:
    value = frame.get("id")
    if value is None:
        return True
    if isinstance(value, str):
        return len(value) <= MAX_CLIENT_ID_CHARS
    return isinstance(value, int | float) and not isinstance(value, bool)


def assert_clear_error(reply: dict[str, Any]) -> None:
    assert reply["code"] in ERROR_CODES, reply
    assert reply["code"] not in SERVER_FAULT_CODES, reply
    assert isinstance(reply["message"], str) and reply["message"].strip(), reply
    assert "Traceback" not in reply["message"], reply


def check_replies(sent: Any, message: str | bytes, replies: list[dict[str, Any]]) -> None:
    """The protocol's promise for one client message, whatever it was."""
    *before, reply = replies
    kind = sent.get("type") if isinstance(sent, dict) else None
    kind = kind if isinstance(kind, str) else None
    # Exactly one reply; only a resume may be preceded by a gap frame.
    assert all(f["type"] == "gap" for f in before) and (not before or kind == "resume"), replies
    assert len(before) <= 1, replies
    assert reply["type"] in ("error", REPLY_TYPES.get(kind, "error")), (sent, reply)
    if reply["type"] == "error":
        assert_clear_error(reply)
    size = len(message) if isinstance(message, bytes) else len(message.encode())
    if isinstance(message, bytes) or size > MAX_FRAME_BYTES:
        assert reply["code"] == "invalid_message", reply
        return
    if not isinstance(sent, dict) or kind is None:
        assert reply["code"] == "invalid_message", reply
        return
    if not clean(sent):
        assert reply["code"] == "invalid_message", reply
        return
    if kind not in REPLY_TYPES:
        assert reply["code"] == "unknown_type", reply
    elif not valid_client_id(sent):
        assert reply["code"] == "invalid_argument", reply
    elif kind in ("ping", "heartbeat", "user_typing", "typing_started", "typing_stopped"):
        assert reply["type"] == REPLY_TYPES[kind], reply
    if reply.get("id") is not None or (valid_client_id(sent) and kind in REPLY_TYPES):
        assert reply.get("id") == sent.get("id"), (sent, reply)


@HOSTILE
@given(frame=client_frames(), ascii_only=st.booleans())
async def test_every_frame_shaped_object_gets_exactly_one_clear_reply_and_the_connection_stays_open(
    ws: ClientConnection, frame: dict[str, Any], ascii_only: bool
) -> None:
    message = encode_json(frame, ascii_only=ascii_only)
    check_replies(frame, message, await exchange(ws, message))


@HOSTILE
@given(value=JSON_VALUES, ascii_only=st.booleans())
async def test_every_json_value_gets_exactly_one_clear_reply_and_the_connection_stays_open(
    ws: ClientConnection, value: Any, ascii_only: bool
) -> None:
    message = encode_json(value, ascii_only=ascii_only)
    check_replies(value, message, await exchange(ws, message))


HUGE_INTEGER = st.integers(4301, 6000).map(
    lambda digits: '{"type": "ping", "id": 1, "n": ' + "9" * digits + "}"
)
OVERSIZED = st.integers(MAX_FRAME_BYTES + 1, HARD_FRAME_BYTES - 64).map(
    lambda size: '{"type": "ping", "pad": "' + "x" * size + '"}'
)
NESTED = st.integers(1, 5000).map(lambda depth: '{"type": "ping", "x": ' + "[" * depth + "]" * depth + "}")


@HOSTILE
@given(
    text=st.one_of(
        st.text(), st.text(ANY_CHAR.filter(lambda c: not SURROGATE.match(c))), HUGE_INTEGER, OVERSIZED, NESTED
    )
)
async def test_every_text_frame_gets_exactly_one_clear_reply_and_the_connection_stays_open(
    ws: ClientConnection, text: str
) -> None:
    try:
        sent: Any = json.loads(text)
    except (ValueError, RecursionError):
        sent = None  # not JSON: must be invalid_message
    replies = await exchange(ws, text)
    if text.startswith('{"type": "ping", "x": ') and text.count("[") + 1 > MAX_NESTING:
        sent = None  # deeper than the gateway parses, whatever this process's parser managed
        assert "nested" in replies[-1]["message"], replies
    if text.startswith('{"type": "ping", "id": 1, "n": '):
        assert replies[-1]["code"] == "invalid_message" and "digits" in replies[-1]["message"], replies
    if len(text.encode()) > MAX_FRAME_BYTES:
        assert str(MAX_FRAME_BYTES) in replies[-1]["message"], replies
    check_replies(sent, text, replies)


LARGE_BINARY = st.builds(
    lambda head, size: head + bytes(size),
    st.binary(max_size=16),
    st.integers(MAX_FRAME_BYTES - 8, HARD_FRAME_BYTES - 64),
)


@HOSTILE
@given(data=st.one_of(st.binary(), LARGE_BINARY))
async def test_every_binary_frame_gets_exactly_one_invalid_message_reply_and_the_connection_stays_open(
    ws: ClientConnection, data: bytes
) -> None:
    check_replies(None, data, await exchange(ws, data))


async def test_the_gateway_and_the_services_are_still_healthy_after_the_hostile_frames(stack: Stack) -> None:
    connection = await stack.connect()
    try:
        await connection.send(json.dumps({"type": "ping", "id": "last"}))
        reply = json.loads(await asyncio.wait_for(connection.recv(), REPLY_TIMEOUT_S))
        assert reply["type"] == "pong" and reply["id"] == "last"
    finally:
        await connection.close()
    assert await stack.gateway_health() == 200
    assert all((await stack.services_serving()).values())
    assert stack.gateway.events_blocked_owner_mismatch == 0
