"""Events: delivery to the owner only, the envelope, resume, gap and resubscription."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from typing import Any

import grpc
import pytest
from websockets.exceptions import ConnectionClosed

from bridge_service.app import running_service as running_bridge
from bridge_service.settings import BridgeSettings
from gateway.outbox import EventFrame
from gateway.server import GatewayServer
from gateway.stats import GatewayStats
from runwire.bridge.v1 import bridge_pb2, bridge_pb2_grpc
from runwire.common.v1 import event_pb2
from runwire_common.attestation import ContextAttestor
from runwire_common.ids import new_id
from tests.conftest import ContextFactory
from tests.gateway import fakes
from tests.gateway.conftest import GatewayFactory, TokenFactory, open_ws, recv_json, recv_until, request

ALICE = "user_alice_0123456789"
BOB = "user_bob_0123456789"
Publish = Callable[..., Awaitable[list[str]]]


@pytest.fixture
async def publish(bridge_target: str, make_context: ContextFactory) -> AsyncIterator[Publish]:
    """``await publish(user, payloads...)`` → the event ids the bridge assigned."""
    async with grpc.aio.insecure_channel(bridge_target) as channel:
        stub = bridge_pb2_grpc.BridgeServiceStub(channel)
        run_id = new_id("run")

        async def send(user: str, *payloads: str, kind: str = "partial_result") -> list[str]:
            events: list[event_pb2.RunEvent] = []
            for payload in payloads:
                ev = event_pb2.RunEvent(
                    seq=0,  # the bridge numbers the run's events across calls
                    type=kind,
                    run_id=run_id,
                    thread_id="thread_0123456789abcdef",
                    user_id=user,
                    agent="scripted",
                    payload_json=payload,
                )
                ev.timestamp.GetCurrentTime()
                events.append(ev)
            response = await stub.Publish(
                bridge_pb2.PublishRequest(user_context=make_context(user), events=events), timeout=5
            )
            return list(response.event_ids)

        yield send


async def test_an_event_reaches_its_owner_as_a_frame_with_the_payload_spliced_verbatim(
    gateway: GatewayServer, make_token: TokenFactory, publish: Publish
) -> None:
    payload = '{"content": "h\\u00e9llo", "index": 0, "nested": {"a": [1, 2.5, null]}}'
    async with open_ws(gateway, make_token(ALICE)) as ws:
        await recv_json(ws)
        await request(ws, {"type": "ping"})  # the subscription is up once the socket answers
        await asyncio.sleep(0.1)
        [event_id] = await publish(ALICE, payload)
        raw = await asyncio.wait_for(ws.recv(), 5)
        assert isinstance(raw, str)
        assert raw.endswith(f',"payload":{payload}}}')
        frame = json.loads(raw)
        assert frame["type"] == "partial_result"
        assert frame["event_id"] == event_id
        assert frame["seq"] == 1
        assert frame["user_id"] == ALICE
        assert frame["agent"] == "scripted"
        assert frame["run_id"].startswith("run_")
        assert frame["thread_id"] == "thread_0123456789abcdef"
        assert frame["timestamp"].endswith("Z")
        assert frame["payload"] == json.loads(payload)


async def test_events_go_to_every_connection_of_the_owner_and_to_no_other_user(
    gateway: GatewayServer, make_token: TokenFactory, publish: Publish
) -> None:
    async with AsyncExitStack() as stack:
        tabs = [await stack.enter_async_context(open_ws(gateway, make_token(ALICE))) for _ in range(2)]
        bob = await stack.enter_async_context(open_ws(gateway, make_token(BOB)))
        for ws in [*tabs, bob]:
            await recv_json(ws)
        await asyncio.sleep(0.2)
        ids = await publish(ALICE, '{"n": 1}', '{"n": 2}', '{"n": 3}')
        for ws in tabs:
            got = [(await recv_json(ws))["event_id"] for _ in ids]
            assert got == ids
        pong = await request(bob, {"type": "ping", "id": "b"})
        assert pong["type"] == "pong"  # nothing of Alice's came first
    assert gateway.events_blocked_owner_mismatch == 0


async def test_connecting_with_after_replays_the_missed_events_then_says_resumed(
    gateway: GatewayServer, make_token: TokenFactory, publish: Publish
) -> None:
    ids = await publish(ALICE, '{"n": 1}', '{"n": 2}', '{"n": 3}')
    async with open_ws(gateway, make_token(ALICE), path=f"/ws?after={ids[0]}") as ws:
        assert (await recv_json(ws))["type"] == "connected"
        assert [(await recv_json(ws))["event_id"] for _ in range(2)] == ids[1:]
        assert await recv_json(ws) == {"type": "resumed", "id": None, "replayed": 2}


async def test_a_resume_frame_replays_after_the_cursor_then_answers_resumed_and_goes_live(
    gateway: GatewayServer, make_token: TokenFactory, publish: Publish
) -> None:
    async with open_ws(gateway, make_token(ALICE)) as ws:
        await recv_json(ws)
        await asyncio.sleep(0.1)
        ids = await publish(ALICE, '{"n": 1}', '{"n": 2}', '{"n": 3}')
        assert [(await recv_json(ws))["event_id"] for _ in ids] == ids
        await ws.send(json.dumps({"type": "resume", "id": "r1", "after": ids[0]}))
        assert [(await recv_json(ws))["event_id"] for _ in range(2)] == ids[1:]
        assert await recv_json(ws) == {"type": "resumed", "id": "r1", "replayed": 2}
        [live] = await publish(ALICE, '{"n": 4}')
        assert (await recv_json(ws))["event_id"] == live


async def test_a_resume_with_a_cursor_the_bridge_refuses_is_an_error_and_the_stream_goes_on(
    gateway: GatewayServer, make_token: TokenFactory, publish: Publish
) -> None:
    async with open_ws(gateway, make_token(ALICE)) as ws:
        await recv_json(ws)
        await asyncio.sleep(0.1)
        [first] = await publish(ALICE, '{"n": 1}')
        assert (await recv_json(ws))["event_id"] == first
        await ws.send(json.dumps({"type": "resume", "id": "bad", "after": "not-an-event-id"}))
        reply = await recv_json(ws)
        assert (reply["type"], reply["id"], reply["code"]) == ("error", "bad", "invalid_argument")
        assert "after" in reply["message"]
        [second] = await publish(ALICE, '{"n": 2}')
        assert (await recv_json(ws))["event_id"] == second  # nothing lost, nothing repeated
        pong = await request(ws, {"type": "ping", "id": "still"})
        assert (pong["type"], pong["id"]) == ("pong", "still")


async def test_connecting_with_an_after_the_bridge_refuses_is_an_error_then_live_events(
    gateway: GatewayServer, make_token: TokenFactory, publish: Publish
) -> None:
    async with open_ws(gateway, make_token(ALICE), path="/ws?after=zzz") as ws:
        await recv_json(ws)
        reply = await recv_json(ws)
        assert (reply["type"], reply["id"], reply["code"]) == ("error", None, "invalid_argument")
        await asyncio.sleep(0.1)
        [live] = await publish(ALICE, '{"n": 1}')
        assert (await recv_json(ws))["event_id"] == live


async def test_resuming_from_a_trimmed_cursor_sends_a_gap_with_the_id_then_the_retained_events(
    attestation_key_spec: str,
    start_gateway: GatewayFactory,
    make_token: TokenFactory,
    make_context: ContextFactory,
) -> None:
    settings = BridgeSettings(attestation_keys=attestation_key_spec, log_capacity=2)
    async with running_bridge(settings) as bridge:
        target = f"127.0.0.1:{bridge.port}"
        server = await start_gateway(bridge_target=target)
        async with grpc.aio.insecure_channel(target) as channel:
            stub = bridge_pb2_grpc.BridgeServiceStub(channel)
            events = [fakes.event(ALICE, "", seq=n) for n in range(1, 5)]
            response = await stub.Publish(
                bridge_pb2.PublishRequest(user_context=make_context(ALICE), events=events), timeout=5
            )
        ids = list(response.event_ids)
        async with open_ws(server, make_token(ALICE)) as ws:
            await recv_json(ws)
            await ws.send(json.dumps({"type": "resume", "id": 5, "after": ids[0]}))
            gap = await recv_json(ws)
            assert gap == {"type": "gap", "requested_after": ids[0], "oldest_event_id": ids[2], "id": 5}
            assert [(await recv_json(ws))["event_id"] for _ in range(2)] == ids[2:]
            assert await recv_json(ws) == {"type": "resumed", "id": 5, "replayed": 2}


async def test_a_subscriber_that_fell_behind_is_resubscribed_from_the_last_event_written(
    start_gateway: GatewayFactory, make_token: TokenFactory
) -> None:
    bridge = fakes.ScriptedBridge(
        [
            (
                [fakes.replay_complete(), fakes.item(fakes.event(ALICE, "100-1"))],
                grpc.StatusCode.RESOURCE_EXHAUSTED,
            ),
            ([fakes.replay_complete(), fakes.item(fakes.event(ALICE, "100-2", seq=2))], None),
        ]
    )
    async with fakes.serving(bridge) as target:
        server = await start_gateway(bridge_target=target)
        async with open_ws(server, make_token(ALICE)) as ws:
            await recv_json(ws)
            assert (await recv_json(ws))["event_id"] == "100-1"
            assert (await recv_json(ws))["event_id"] == "100-2"
            assert bridge.afters == ["", "100-1"]
            assert (await request(ws, {"type": "ping"}))["type"] == "pong"  # no error frame in between
        assert server.stats.resubscribes == 1


async def test_a_bridge_that_stays_unavailable_gets_an_error_frame_and_a_1011_close(
    start_gateway: GatewayFactory, make_token: TokenFactory
) -> None:
    bridge = fakes.ScriptedBridge([([], grpc.StatusCode.UNAVAILABLE)])
    async with fakes.serving(bridge) as target:
        server = await start_gateway(
            bridge_target=target,
            resubscribe_attempts=3,
            resubscribe_backoff_s=0.01,
            resubscribe_max_backoff_s=0.02,
        )
        async with open_ws(server, make_token(ALICE)) as ws:
            await recv_json(ws)
            frames: list[dict[str, Any]] = []
            with pytest.raises(ConnectionClosed):
                while True:
                    frames.append(await recv_json(ws))
            assert ws.close_code == 1011
            assert [f["code"] for f in frames] == ["unavailable", "unavailable"]
            assert frames[0]["message"] == "event stream interrupted; reconnecting"
        assert len(bridge.afters) >= 4  # the channel also retries UNAVAILABLE itself


async def test_a_foreign_event_is_dropped_counted_and_never_sent(
    caplog: pytest.LogCaptureFixture, attestor: ContextAttestor
) -> None:
    socket = fakes.RecordingSocket()
    stats = GatewayStats()
    async with fakes.detached_sink(socket, stats, attestor, user_id=ALICE) as sink:
        with caplog.at_level(logging.WARNING):
            sink.from_feed([EventFrame(fakes.event(BOB, "1-1"))], "")
        await fakes.written(sink)
        assert socket.frames == []
        assert stats.events_blocked_owner_mismatch == 1
        assert "another user" in caplog.text
        sink.from_feed([EventFrame(fakes.event(ALICE, "1-2"))], "1-1")
        await fakes.written(sink)
        assert [json.loads(s)["event_id"] for s in socket.frames] == ["1-2"]
        assert sink.written == "1-2"
        assert stats.events_blocked_owner_mismatch == 1


async def test_a_foreign_event_from_the_bridge_never_reaches_the_socket(
    start_gateway: GatewayFactory, make_token: TokenFactory
) -> None:
    bridge = fakes.ScriptedBridge(
        [
            (
                [
                    fakes.replay_complete(),
                    fakes.item(fakes.event(BOB, "7-1")),
                    fakes.item(fakes.event(ALICE, "7-2")),
                ],
                None,
            )
        ]
    )
    async with fakes.serving(bridge) as target:
        server = await start_gateway(bridge_target=target)
        async with open_ws(server, make_token(ALICE)) as ws:
            await recv_json(ws)
            frame = await recv_until(ws, "agent_thinking")
            assert (frame["event_id"], frame["user_id"]) == ("7-2", ALICE)
        assert server.events_blocked_owner_mismatch == 1


async def test_a_live_only_subscription_that_breaks_resumes_from_the_bridges_cursor(
    start_gateway: GatewayFactory, make_token: TokenFactory
) -> None:
    bridge = fakes.ScriptedBridge(
        [
            ([fakes.replay_complete(resume_after="42-0")], grpc.StatusCode.RESOURCE_EXHAUSTED),
            ([fakes.replay_complete(1, resume_after="42-1"), fakes.item(fakes.event(ALICE, "42-1"))], None),
        ]
    )
    async with fakes.serving(bridge) as target:
        server = await start_gateway(bridge_target=target)
        async with open_ws(server, make_token(ALICE)) as ws:
            await recv_json(ws)
            assert (await recv_json(ws))["event_id"] == "42-1"
            assert bridge.afters == ["", "42-0"]


async def test_client_frames_wait_until_the_event_stream_is_confirmed(
    start_gateway: GatewayFactory, make_token: TokenFactory
) -> None:
    bridge = fakes.ScriptedBridge([([fakes.replay_complete(resume_after="1-0")], None)], delay_s=0.3)
    async with fakes.serving(bridge) as target:
        server = await start_gateway(bridge_target=target)
        async with open_ws(server, make_token(ALICE)) as ws:
            assert (await recv_json(ws))["type"] == "connected"
            pong = await request(ws, {"type": "ping"})
            answered_at = asyncio.get_running_loop().time()
            assert pong["type"] == "pong"
            assert bridge.first_item_at and answered_at >= bridge.first_item_at[0]
