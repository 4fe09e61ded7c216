"""Abuse at the edge: flooding, clients that never read, run.start bursts.

Real gateways on loopback with a real bridge; the abusive clients are real
WebSocket clients that send or stop reading for real.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

import gateway.connection
from bridge_service.app import running_service as running_bridge
from bridge_service.settings import BridgeSettings
from gateway.server import GatewayServer
from runwire.common.v1 import run_pb2
from runwire.execution.v1 import execution_pb2, execution_pb2_grpc
from runwire_common.ids import new_id
from tests.gateway import fakes
from tests.gateway.conftest import GatewayFactory, TokenFactory, open_ws, recv_json, request
from tests.gateway.test_events import ALICE, BOB, Publish, publish  # noqa: F401 - a fixture

# Just under the 64 KiB frame limit: the largest frame a flooder may send without a 1009.
FLOOD_FRAME = json.dumps({"type": "ping", "pad": "x" * (64 * 1024 - 64)})


@pytest.fixture
async def bridge_target(attestation_key_spec: str) -> AsyncIterator[str]:
    """The bridge of these tests keeps 64 MiB per user: a client that stops reading never meets a gap."""
    settings = BridgeSettings(attestation_keys=attestation_key_spec, log_max_bytes=64 * 1024 * 1024)
    async with running_bridge(settings) as server:
        yield f"127.0.0.1:{server.port}"


class InstantExecution(execution_pb2_grpc.ExecutionServiceServicer):
    """Accepts every StartRun at once."""

    def __init__(self) -> None:
        self.started = 0

    async def StartRun(  # type: ignore[override]
        self, request: execution_pb2.StartRunRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> execution_pb2.StartRunResponse:
        self.started += 1
        run = run_pb2.Run(
            run_id=f"run_{self.started:032d}", thread_id="thread_0123456789abcdef", agent=request.agent
        )
        return execution_pb2.StartRunResponse(run=run)


def start_frame(frame_id: str) -> str:
    return json.dumps({"type": "run.start", "id": frame_id, "agent": "scripted", "input": {}})


async def wait_until_closed(server: GatewayServer, user: str, *, timeout: float) -> None:
    async with asyncio.timeout(timeout):
        while server.connections_of(user):
            await asyncio.sleep(0.05)


async def test_frames_over_the_rate_limit_are_refused_before_they_are_parsed(
    start_gateway: GatewayFactory, make_token: TokenFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    parsed: list[object] = []
    real_parse = gateway.connection.parse_frame

    def counting_parse(message: str | bytes, **kwargs: Any) -> Any:
        parsed.append(message)
        return real_parse(message, **kwargs)

    monkeypatch.setattr(gateway.connection, "parse_frame", counting_parse)
    server = await start_gateway(rate_limit_messages=3, rate_limit_window_s=60)
    async with open_ws(server, make_token()) as ws:
        await recv_json(ws)
        replies = [await request(ws, {"type": "ping", "id": n}) for n in range(6)]
    assert [r["type"] for r in replies] == ["pong"] * 3 + ["error"] * 3
    # Not parsed: the id comes back only because it leads the frame (gateway.unparsed.leading_id).
    assert [(r["code"], r["id"]) for r in replies[3:]] == [
        ("rate_limited", 3),
        ("rate_limited", 4),
        ("rate_limited", 5),
    ]
    assert len(parsed) == 3
    # An id behind a nested value is not looked for: the refusal's id is null then.
    buried = {"type": "run.start", "input": {"id": "nested"}, "agent": "scripted", "id": "late"}
    async with open_ws(server, make_token()) as ws:
        await recv_json(ws)
        for n in range(3):
            await request(ws, {"type": "ping", "id": n})
        refused = await request(ws, buried)
    assert (refused["code"], refused["id"]) == ("rate_limited", None)
    assert len(parsed) == 6
    assert server.stats.frames_rate_limited == 4


async def test_a_client_flooding_64_kib_frames_is_closed_with_1008_while_others_are_served(
    start_gateway: GatewayFactory, make_token: TokenFactory
) -> None:
    server = await start_gateway(rate_limit_messages=5, rate_limit_window_s=60, rate_limit_close_after=10)
    flooder_user = new_id("user")
    async with open_ws(server, make_token(flooder_user)) as flooder, open_ws(server, make_token()) as other:
        await recv_json(flooder)
        await recv_json(other)
        sent = 0
        with pytest.raises(ConnectionClosed) as closed:
            async with asyncio.timeout(10):
                for sent in range(1, 1000):
                    await flooder.send(FLOOD_FRAME)
                    if sent % 20 == 0:
                        await asyncio.sleep(0)
                # Everything went out: the close must still come.
                while True:
                    await flooder.recv()
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008
        assert sent < 1000
        # The other user is served all along and after.
        assert (await request(other, {"type": "ping", "id": "still"}))["type"] == "pong"
    assert server.stats.connections_closed_flooding == 1


async def test_a_run_start_beyond_the_users_run_creation_rate_is_rate_limited_on_any_connection(
    start_gateway: GatewayFactory, make_token: TokenFactory
) -> None:
    execution = InstantExecution()
    async with fakes.serving(execution, execution_pb2_grpc.add_ExecutionServiceServicer_to_server) as target:
        server = await start_gateway(
            execution_target=target, run_start_rate_limit=2, run_start_rate_window_s=60
        )
        token = make_token(ALICE)
        async with open_ws(server, token) as first, open_ws(server, token) as second:
            async with open_ws(server, make_token(BOB)) as bob:
                for ws in (first, second, bob):
                    await recv_json(ws)
                assert (await request(first, start_frame("a")))["type"] == "run.accepted"
                assert (await request(second, start_frame("b")))["type"] == "run.accepted"
                refused = await request(first, start_frame("c"))
                assert (refused["type"], refused["id"], refused["code"]) == ("error", "c", "rate_limited")
                assert "run.start" in refused["message"]
                # Another user has a budget of their own; other frames still pass.
                assert (await request(bob, start_frame("d")))["type"] == "run.accepted"
                assert (await request(second, {"type": "ping", "id": 1}))["type"] == "pong"
    assert execution.started == 3


def _small_receive_buffer_socket(port: int) -> socket.socket:
    """A client socket whose kernel takes little: a client that stops reading stalls the server soon."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    sock.setblocking(False)
    return sock


async def _read_events(ws: ClientConnection, into: list[dict[str, Any]], *, until: int | None = None) -> None:
    """Collect event frames until the connection closes (or ``until`` seqs are there)."""
    try:
        while until is None or len(into) < until:
            frame = json.loads(await asyncio.wait_for(ws.recv(), 10))
            if "seq" in frame:
                into.append(frame)
    except ConnectionClosed:
        pass


async def test_a_client_that_never_reads_is_closed_and_resumes_from_its_cursor(
    start_gateway: GatewayFactory,
    make_token: TokenFactory,
    publish: Publish,  # noqa: F811
) -> None:
    server = await start_gateway(send_timeout_s=1.0, ping_interval_s=120, ping_timeout_s=120)
    user = new_id("user")
    headers = {"Authorization": f"Bearer {make_token(user)}"}
    url = f"ws://127.0.0.1:{server.port}/ws"
    big = json.dumps({"reasoning": "r" * 60_000})
    received: list[dict[str, Any]] = []
    ws = await connect(
        url, additional_headers=headers, sock=_small_receive_buffer_socket(server.port), max_queue=1
    )
    try:
        await recv_json(ws)
        await request(ws, {"type": "ping"})
        [first] = await publish(user, json.dumps({"reasoning": "hello"}), kind="agent_thinking")
        await _read_events(ws, received, until=1)
        assert received[0]["event_id"] == first
        # From here on the client reads nothing while ~12 MB of events are published.
        for _ in range(20):
            await publish(user, *[big] * 10, kind="agent_thinking")
        await wait_until_closed(server, user, timeout=15)
        await _read_events(ws, received)  # whatever had reached the client before it was cut off
    finally:
        await ws.close()
    assert server.stats.slow_consumers_closed == 1
    cursor = received[-1]["event_id"]
    async with connect(f"{url}?after={cursor}", additional_headers=headers) as again:
        await recv_json(again)
        await _read_events(again, received, until=201)
    assert [frame["seq"] for frame in received] == list(range(1, 202))
