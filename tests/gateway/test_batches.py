"""Batched bridge delivery: an ``EventBatch`` is written exactly like single events."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import grpc
from websockets.asyncio.client import ClientConnection

from gateway.outbox import EventFrame
from gateway.stats import GatewayStats
from runwire_common.attestation import ContextAttestor
from tests.gateway import fakes
from tests.gateway.conftest import GatewayFactory, TokenFactory, open_ws, recv_json, request
from tests.gateway.test_events import ALICE, BOB


def ev(event_id: str, seq: int, user: str = ALICE) -> Any:
    return fakes.event(user, event_id, seq=seq, payload=f'{{"n": {seq}}}')


async def event_ids(ws: ClientConnection, n: int) -> list[str]:
    return [(await recv_json(ws))["event_id"] for _ in range(n)]


async def test_the_gateway_asks_the_bridge_for_batches_of_the_configured_size(
    start_gateway: GatewayFactory, make_token: TokenFactory
) -> None:
    bridge = fakes.ScriptedBridge([([fakes.replay_complete()], None)])
    async with fakes.serving(bridge) as target:
        default = await start_gateway(bridge_target=target)
        single = await start_gateway(bridge_target=target, subscribe_max_batch=0)
        for server in (default, single):
            async with open_ws(server, make_token(ALICE)) as ws:
                await recv_json(ws)
                assert (await request(ws, {"type": "ping"}))["type"] == "pong"
    assert bridge.max_batches == [256, 0]


async def test_batches_and_single_events_arrive_as_one_frame_per_event_in_order(
    start_gateway: GatewayFactory, make_token: TokenFactory
) -> None:
    bridge = fakes.ScriptedBridge(
        [
            (
                [
                    fakes.replay_complete(resume_after="10-0"),
                    fakes.batch(ev("10-1", 1), ev("10-2", 2), ev("10-3", 3)),
                    fakes.item(ev("10-4", 4)),
                    fakes.batch(ev("10-5", 5)),
                    fakes.batch(ev("10-6", 6), ev("10-7", 7)),
                ],
                None,
            )
        ]
    )
    async with fakes.serving(bridge) as target:
        server = await start_gateway(bridge_target=target)
        async with open_ws(server, make_token(ALICE)) as ws:
            await recv_json(ws)
            frames = [await recv_json(ws) for _ in range(7)]
            assert [f["event_id"] for f in frames] == [f"10-{n}" for n in range(1, 8)]
            assert [f["seq"] for f in frames] == list(range(1, 8))
            assert [f["payload"] for f in frames] == [{"n": n} for n in range(1, 8)]
            assert all(f["type"] == "agent_thinking" and f["user_id"] == ALICE for f in frames)
            assert (await request(ws, {"type": "ping", "id": 1}))["type"] == "pong"  # nothing extra
        assert server.stats.events_sent == 7
        assert server.stats.delivery_lag.count == 7


async def test_a_foreign_event_inside_a_batch_is_dropped_and_counted_and_the_rest_delivered(
    start_gateway: GatewayFactory, make_token: TokenFactory
) -> None:
    bridge = fakes.ScriptedBridge(
        [
            (
                [
                    fakes.replay_complete(),
                    fakes.batch(ev("20-1", 1), ev("20-2", 1, user=BOB), ev("20-3", 2)),
                    fakes.batch(ev("20-4", 2, user=BOB)),
                    # Delivered only after the batch before it was handled: the counts below
                    # are then final (a ping's pong would not wait for the event stream).
                    fakes.batch(ev("20-5", 3)),
                ],
                None,
            )
        ]
    )
    async with fakes.serving(bridge) as target:
        server = await start_gateway(bridge_target=target)
        async with open_ws(server, make_token(ALICE)) as ws:
            await recv_json(ws)
            assert await event_ids(ws, 3) == ["20-1", "20-3", "20-5"]
            assert server.events_blocked_owner_mismatch == 2
            # Counted once its write returned, which may be just after the client read it.
            async with asyncio.timeout(5):
                while server.stats.events_sent < 3:
                    await asyncio.sleep(0.01)
            assert server.stats.events_sent == 3


async def test_after_a_batch_the_stream_resumes_from_the_last_event_of_the_batch(
    start_gateway: GatewayFactory, make_token: TokenFactory
) -> None:
    bridge = fakes.ScriptedBridge(
        [
            (
                [fakes.replay_complete(), fakes.batch(ev("30-1", 1), ev("30-2", 2), ev("30-3", 3))],
                grpc.StatusCode.RESOURCE_EXHAUSTED,
            ),
            ([fakes.replay_complete(), fakes.batch(ev("30-4", 4), ev("30-5", 5))], None),
        ]
    )
    async with fakes.serving(bridge) as target:
        server = await start_gateway(bridge_target=target)
        async with open_ws(server, make_token(ALICE)) as ws:
            await recv_json(ws)
            assert await event_ids(ws, 5) == ["30-1", "30-2", "30-3", "30-4", "30-5"]
            assert bridge.afters == ["", "30-3"]
        assert server.stats.resubscribes == 1


async def test_a_resume_over_batches_sends_the_gap_then_every_event_then_resumed_with_the_count(
    start_gateway: GatewayFactory, make_token: TokenFactory
) -> None:
    bridge = fakes.ScriptedBridge(
        [
            ([fakes.replay_complete(resume_after="40-0")], None),
            (
                [
                    fakes.gap("40-0", "40-3"),
                    fakes.batch(ev("40-3", 3), ev("40-4", 4)),
                    fakes.item(ev("40-5", 5)),
                    fakes.replay_complete(3, resume_after="40-5"),
                    fakes.batch(ev("40-6", 6), ev("40-7", 7)),
                ],
                None,
            ),
        ]
    )
    async with fakes.serving(bridge) as target:
        server = await start_gateway(bridge_target=target)
        async with open_ws(server, make_token(ALICE)) as ws:
            await recv_json(ws)
            await ws.send(json.dumps({"type": "resume", "id": "r", "after": "40-0"}))
            assert await recv_json(ws) == {
                "type": "gap",
                "requested_after": "40-0",
                "oldest_event_id": "40-3",
                "id": "r",
            }
            assert await event_ids(ws, 3) == ["40-3", "40-4", "40-5"]
            assert await recv_json(ws) == {"type": "resumed", "id": "r", "replayed": 3}
            assert await event_ids(ws, 2) == ["40-6", "40-7"]
            assert bridge.afters == ["", "40-0"]


async def test_a_socket_writes_a_batch_with_one_multi_frame_send_and_moves_its_cursor(
    attestor: ContextAttestor,
) -> None:
    socket = fakes.RecordingSocket()
    stats = GatewayStats()
    async with fakes.detached_sink(socket, stats, attestor, user_id=ALICE) as sink:
        sink.from_feed(
            [EventFrame(ev("50-1", 1)), EventFrame(ev("50-2", 1, user=BOB)), EventFrame(ev("50-3", 2))], ""
        )
        await fakes.written(sink)
        sink.from_feed([EventFrame(ev("50-4", 3))], "50-3")
        await fakes.written(sink)
        assert [[json.loads(t)["event_id"] for t in w] for w in socket.writes] == [["50-1", "50-3"], ["50-4"]]
        assert sink.written == "50-4"
        assert (stats.events_sent, stats.events_blocked_owner_mismatch) == (3, 1)
        assert stats.delivery_lag.count == 3
