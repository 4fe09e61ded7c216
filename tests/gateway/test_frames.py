"""Client frames: validation, error codes, limits; a bad frame never closes the connection."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from gateway.protocol import MAX_NESTING, FrameError, PingFrame, parse_frame
from gateway.server import GatewayServer
from gateway.unparsed import leading_id
from tests.gateway.conftest import GatewayFactory, TokenFactory, open_ws, recv_json, request

RUN_ID = "run_0123456789abcdef0123456789abcdef"

MALFORMED: list[tuple[str, str | bytes, str]] = [
    ("invalid JSON", "{not json", "invalid_message"),
    (
        "a NaN literal",
        '{"type": "run.start", "id": "1", "agent": "a", "input": {"x": NaN}}',
        "invalid_message",
    ),
    ("a JSON array", '[{"type": "ping"}]', "invalid_message"),
    ("a JSON number", "42", "invalid_message"),
    ("a JSON string", '"ping"', "invalid_message"),
    ("an object without type", '{"id": "1"}', "invalid_message"),
    ("a non-string type", '{"type": 7, "id": "1"}', "invalid_message"),
    ("a binary frame", b'{"type": "ping"}', "invalid_message"),
    ("an unknown type", '{"type": "run.explode", "id": "1"}', "unknown_type"),
    ("run.start without agent", '{"type": "run.start", "id": "1", "input": {}}', "invalid_argument"),
    (
        "run.start with list input",
        '{"type": "run.start", "id": "1", "agent": "a", "input": [1]}',
        "invalid_argument",
    ),
    (
        "run.start with string input",
        '{"type": "run.start", "id": "1", "agent": "a", "input": "hi"}',
        "invalid_argument",
    ),
    ("run.start without id", '{"type": "run.start", "agent": "scripted", "input": {}}', "invalid_argument"),
    (
        "run.start with a bad multitask_strategy",
        '{"type": "run.start", "id": "1", "agent": "a", "input": {}, "multitask_strategy": "yolo"}',
        "invalid_argument",
    ),
    (
        "run.start with a placeholder thread_id",
        '{"type": "run.start", "id": "1", "agent": "a", "input": {}, "thread_id": "undefined"}',
        "invalid_argument",
    ),
    ("run.get without run_id", '{"type": "run.get", "id": "1"}', "invalid_argument"),
    ("run.get with a numeric run_id", '{"type": "run.get", "id": "1", "run_id": 5}', "invalid_argument"),
    (
        "run.cancel with placeholder run_id null",
        '{"type": "run.cancel", "id": "1", "run_id": "null"}',
        "invalid_argument",
    ),
    (
        "run.cancel with a blank run_id",
        '{"type": "run.cancel", "id": "1", "run_id": "  "}',
        "invalid_argument",
    ),
    ("runs.list with limit 'x'", '{"type": "runs.list", "id": "1", "limit": "x"}', "invalid_argument"),
    ("runs.list with limit 0", '{"type": "runs.list", "id": "1", "limit": 0}', "invalid_argument"),
    ("runs.list with limit -1", '{"type": "runs.list", "id": "1", "limit": -1}', "invalid_argument"),
    ("runs.list with limit 1000", '{"type": "runs.list", "id": "1", "limit": 1000}', "invalid_argument"),
    ("runs.list with limit true", '{"type": "runs.list", "id": "1", "limit": true}', "invalid_argument"),
    (
        "runs.list with an unknown state",
        '{"type": "runs.list", "id": "1", "state": "sleeping"}',
        "invalid_argument",
    ),
    ("resume without after", '{"type": "resume", "id": "1"}', "invalid_argument"),
    ("resume with an empty after", '{"type": "resume", "id": "1", "after": ""}', "invalid_argument"),
    ("an object id", '{"type": "ping", "id": {"a": 1}}', "invalid_argument"),
    ("a boolean id", '{"type": "ping", "id": true}', "invalid_argument"),
    ("start_agent without payload", '{"type": "start_agent"}', "invalid_argument"),
    # Valid JSON syntax whose value the gateway could neither echo nor forward.
    ("a lone surrogate in the id", '{"type": "ping", "id": "\\ud800"}', "invalid_message"),
    ("a lone surrogate in the type", '{"type": "x\\udfff", "id": "\\udc00"}', "invalid_message"),
    ("an upper-case lone surrogate escape", '{"type": "ping", "id": "\\uDBFF"}', "invalid_message"),
    (
        "a lone surrogate in the input",
        '{"type": "run.start", "id": "1", "agent": "scripted", "input": {"x": "\\ud800"}}',
        "invalid_message",
    ),
    (
        "a lone surrogate in run_id",
        '{"type": "run.get", "id": 1, "run_id": "run_\\ud800abc"}',
        "invalid_message",
    ),
    ("a number that overflows a double", '{"type": "ping", "id": 1e400}', "invalid_message"),
    ("an integer above the digit limit", '{"type": "ping", "n": ' + "9" * 5000 + "}", "invalid_message"),
    (
        "user_message without content",
        '{"type": "user_message", "thread_id": "thread_abcdefabcdefabcdef"}',
        "invalid_argument",
    ),
]


@pytest.fixture
async def alice(gateway: GatewayServer, make_token: TokenFactory) -> AsyncIterator[ClientConnection]:
    async with open_ws(gateway, make_token("user_alice_0123456789")) as ws:
        assert (await recv_json(ws))["type"] == "connected"
        yield ws


async def assert_still_answers_ping(ws: ClientConnection) -> None:
    pong = await request(ws, {"type": "ping", "id": "after"})
    assert (pong["type"], pong["id"]) == ("pong", "after")


@pytest.mark.parametrize(
    ("frame", "code"), [(f, c) for _, f, c in MALFORMED], ids=[n for n, _, _ in MALFORMED]
)
async def test_a_malformed_frame_gets_its_error_code_and_the_connection_stays_open(
    alice: ClientConnection, frame: str | bytes, code: str
) -> None:
    await alice.send(frame)
    reply = await recv_json(alice)
    assert reply["type"] == "error"
    assert reply["code"] == code, reply
    assert isinstance(reply["message"], str) and reply["message"]
    await assert_still_answers_ping(alice)


async def test_a_paired_surrogate_escape_is_ordinary_text(alice: ClientConnection) -> None:
    pong = await request(alice, '{"type": "ping", "id": "\\ud83d\\ude00"}')
    assert (pong["type"], pong["id"]) == ("pong", "\U0001f600")


async def test_an_error_reply_echoes_the_client_id_when_it_is_valid(alice: ClientConnection) -> None:
    reply = await request(alice, {"type": "run.get", "id": "req-7"})
    assert (reply["id"], reply["code"]) == ("req-7", "invalid_argument")
    reply = await request(alice, {"type": "nope", "id": 99})
    assert (reply["id"], reply["code"]) == (99, "unknown_type")


async def test_a_frame_over_the_size_limit_is_refused_and_the_connection_stays_open(
    start_gateway: GatewayFactory, make_token: TokenFactory
) -> None:
    server = await start_gateway(max_frame_bytes=1024)
    async with open_ws(server, make_token()) as ws:
        await recv_json(ws)
        frame = json.dumps({"type": "ping", "id": "big", "pad": "x" * 2000})
        reply = await request(ws, frame)
        assert (reply["type"], reply["code"]) == ("error", "invalid_message")
        assert "1024" in reply["message"]
        await assert_still_answers_ping(ws)


async def test_a_frame_over_the_hard_cap_closes_the_connection_with_1009(
    start_gateway: GatewayFactory, make_token: TokenFactory
) -> None:
    server = await start_gateway(max_frame_bytes=1024, hard_frame_factor=4)
    async with open_ws(server, make_token()) as ws:
        await recv_json(ws)
        await ws.send("x" * 5000)
        with pytest.raises(ConnectionClosed):
            while True:
                await recv_json(ws)
        assert ws.close_code == 1009


async def test_ping_answers_pong_with_the_id_and_server_time(alice: ClientConnection) -> None:
    pong = await request(alice, {"type": "ping", "id": 12})
    assert (pong["type"], pong["id"]) == ("pong", 12)
    assert pong["server_time"].endswith("Z")
    pong = await request(alice, {"type": "ping"})
    assert pong["id"] is None


async def test_heartbeat_is_answered_with_heartbeat_ack(alice: ClientConnection) -> None:
    ack = await request(alice, {"type": "heartbeat"})
    assert ack["type"] == "heartbeat_ack"


async def test_too_many_frames_are_rate_limited_and_the_connection_recovers_after_the_window(
    start_gateway: GatewayFactory, make_token: TokenFactory
) -> None:
    server = await start_gateway(rate_limit_messages=5, rate_limit_window_s=0.5)
    async with open_ws(server, make_token()) as ws:
        await recv_json(ws)
        replies: list[dict[str, Any]] = []
        for n in range(8):
            replies.append(await request(ws, {"type": "ping", "id": n}))
        assert [r["type"] for r in replies] == ["pong"] * 5 + ["error"] * 3
        assert {r["code"] for r in replies[5:]} == {"rate_limited"}
        # Refused before being parsed; the id, leading the frame, is still read back.
        assert [r["id"] for r in replies[5:]] == [5, 6, 7]
        await asyncio.sleep(0.6)
        await assert_still_answers_ping(ws)


@pytest.fixture
async def black_hole() -> AsyncIterator[str]:
    """A listener that accepts TCP connections and never answers: gRPC calls hang until their deadline."""
    writers: list[asyncio.StreamWriter] = []

    async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        await reader.read()

    hole = await asyncio.start_server(swallow, "127.0.0.1", 0)
    try:
        yield f"127.0.0.1:{hole.sockets[0].getsockname()[1]}"
    finally:
        hole.close()
        for writer in writers:
            writer.close()
            await writer.wait_closed()
        await hole.wait_closed()


async def test_a_slow_call_does_not_delay_ping(
    start_gateway: GatewayFactory, make_token: TokenFactory, black_hole: str
) -> None:
    server = await start_gateway(execution_target=black_hole, call_timeout_s=1.0)
    async with open_ws(server, make_token()) as ws:
        await recv_json(ws)
        await ws.send(json.dumps({"type": "run.start", "id": "slow", "agent": "scripted", "input": {}}))
        await ws.send(json.dumps({"type": "ping", "id": "quick"}))
        first = await recv_json(ws)
        second = await recv_json(ws)
        assert (first["type"], first["id"]) == ("pong", "quick")
        assert (second["type"], second["id"], second["code"]) == ("error", "slow", "unavailable")


async def test_requests_beyond_the_in_flight_bound_are_refused_with_resource_exhausted(
    start_gateway: GatewayFactory, make_token: TokenFactory, black_hole: str
) -> None:
    server = await start_gateway(registry_target=black_hole, call_timeout_s=1.0, max_in_flight=2)
    async with open_ws(server, make_token()) as ws:
        await recv_json(ws)
        for n in range(3):
            await ws.send(json.dumps({"type": "run.get", "id": n, "run_id": RUN_ID}))
        first = await recv_json(ws)
        assert (first["id"], first["code"]) == (2, "resource_exhausted")
        rest = sorted([(f["id"], f["code"]) for f in [await recv_json(ws), await recv_json(ws)]])
        assert rest == [(0, "unavailable"), (1, "unavailable")]


@pytest.mark.parametrize("depth", [2, 255, 256, 257, 5000])
def test_frames_nested_deeper_than_the_limit_are_refused_whatever_the_stack(depth: int) -> None:
    text = '{"type": "ping", "x": ' + "[" * (depth - 1) + "]" * (depth - 1) + "}"
    decoy = '{"type": "ping", "s": "' + "[" * 600 + '"}'  # brackets inside a string do not nest
    assert isinstance(parse_frame(decoy, max_frame_bytes=65536, default_agent="assistant"), PingFrame)
    if depth <= MAX_NESTING:
        assert isinstance(parse_frame(text, max_frame_bytes=65536, default_agent="assistant"), PingFrame)
    else:
        with pytest.raises(FrameError) as refused:
            parse_frame(text, max_frame_bytes=65536, default_agent="assistant")
        assert refused.value.code == "invalid_message" and "nested" in refused.value.message


@pytest.mark.parametrize(
    ("frame", "expected"),
    [
        ('{"type":"ping","id":7}', 7),
        ('  { "type" : "run.start" , "id" : "c-1" , "input": {"id": "nested"}}', "c-1"),
        ('{"id":"first","type":"ping"}', "first"),
        ('{"id":-5}', -5),
        # Behind a nested value, escaped, not an integer, not an object, too long: not looked for.
        ('{"type":"run.start","input":{"id":"nested"},"id":"late"}', None),
        ('{"agent":"scripted","id":"after-another-member"}', None),
        ('{"id":"a\\"b"}', None),
        ('{"id":1.5}', None),
        ('{"id":01}', None),
        ('[{"id":1}]', None),
        ('{"id":"' + "x" * 129 + '"}', None),
        (b'{"id":1}', None),
    ],
)
def test_the_id_of_a_frame_refused_unparsed_is_read_only_where_it_leads(
    frame: str | bytes, expected: object
) -> None:
    assert leading_id(frame) == expected
