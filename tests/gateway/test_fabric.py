"""The event fabric end to end: one subscription per user, slow sockets, a bridge replica dying."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack
from typing import Any

import grpc
import pytest
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from bridge_service.app import running_service as running_bridge
from bridge_service.memory_bus import MemoryEventBus
from bridge_service.settings import BridgeSettings
from gateway.fabric import BridgeReplicas
from gateway.stats import GatewayStats
from runwire.bridge.v1 import bridge_pb2, bridge_pb2_grpc
from runwire.common.v1 import event_pb2
from runwire_common.ids import new_id
from tests.conftest import ContextFactory
from tests.gateway import fakes
from tests.gateway.conftest import GatewayFactory, TokenFactory, open_ws, recv_json, request
from tests.gateway.test_metrics import scrape
from tests.registry_service.test_metrics import free_port

ALICE = "user_alice_0123456789"
BOB = "user_bob_0123456789"
CAROL = "user_carol_0123456789"
TERMINAL = frozenset({"agent_completed", "agent_error", "agent_cancelled", "agent_death"})

Step = tuple[str, dict[str, Any]]


class Publisher:
    """Publishes runs of events for any user through one bridge (the bridge numbers the seqs)."""

    def __init__(self, target: str, make_context: ContextFactory) -> None:
        self._channel = grpc.aio.insecure_channel(target)
        self._stub = bridge_pb2_grpc.BridgeServiceStub(self._channel)
        self._make_context = make_context

    async def run(self, user: str, steps: Sequence[Step], *, run_id: str = "", chunk: int = 100) -> list[str]:
        """Publish ``steps`` as one run of ``user``; return the event ids."""
        run_id = run_id or new_id("run")
        ids: list[str] = []
        for start in range(0, len(steps), chunk):
            events = []
            for kind, payload in steps[start : start + chunk]:
                ev = event_pb2.RunEvent(
                    type=kind,
                    run_id=run_id,
                    thread_id="thread_0123456789abcdef",
                    user_id=user,
                    agent="scripted",
                    payload_json=json.dumps(payload),
                )
                ev.timestamp.GetCurrentTime()
                events.append(ev)
            response = await self._stub.Publish(
                bridge_pb2.PublishRequest(user_context=self._make_context(user), events=events), timeout=10
            )
            ids += response.event_ids
        return ids

    async def close(self) -> None:
        await self._channel.close()


def a_run(partials: int, *, size: int = 10, tools_every: int = 0) -> list[Step]:
    """``agent_started``, ``partials`` deltas of ``size`` characters (a tool pair every ``tools_every``), the end."""
    steps: list[Step] = [("agent_started", {"message": "started", "input": {}})]
    for i in range(partials):
        if tools_every and i % tools_every == 0:
            call = f"call_{i}"
            steps.append(("tool_executing", {"tool_name": "echo", "parameters": {}, "call_id": call}))
            steps.append(("tool_completed", {"tool_name": "echo", "call_id": call, "status": "success"}))
        steps.append(("partial_result", {"content": f"{i:06d}".ljust(size, "x"), "index": i}))
    steps.append(("agent_completed", {"status": "completed", "result": {}, "final_response": "ok"}))
    return steps


async def until_terminal(
    ws: ClientConnection, run_id: str = "", *, timeout: float = 30
) -> list[dict[str, Any]]:
    """Every event frame until a terminal event (of ``run_id`` when given)."""
    events: list[dict[str, Any]] = []
    async with asyncio.timeout(timeout):
        while True:
            frame = await recv_json(ws, timeout=timeout)
            if "seq" not in frame:
                continue
            events.append(frame)
            if frame["type"] in TERMINAL and (not run_id or frame["run_id"] == run_id):
                return events


def assert_every_seq_once(events: Sequence[dict[str, Any]], steps: Sequence[Step]) -> None:
    """Seq 1..n each exactly once (a merged ``partial_result`` covers ``merged_from``..``seq``),
    every non-partial event as itself, and the deltas' text complete and in order."""
    covered: list[int] = []
    for event in events:
        first = event.get("merged_from", event["seq"])
        assert first == event["seq"] or event["type"] == "partial_result", event
        covered.extend(range(first, event["seq"] + 1))
    assert covered == list(range(1, len(steps) + 1))
    assert [e["type"] for e in events if e["type"] != "partial_result"] == [
        kind for kind, _ in steps if kind != "partial_result"
    ]
    text = "".join(e["payload"]["content"] for e in events if e["type"] == "partial_result")
    assert text == "".join(p["content"] for kind, p in steps if kind == "partial_result")


@pytest.fixture
async def bus() -> MemoryEventBus:
    return MemoryEventBus(log_capacity=10_000, log_max_bytes=64 * 1024 * 1024, subscriber_queue=2_000)


@pytest.fixture
def bridge_metrics_port() -> int:
    return free_port()


@pytest.fixture
async def bus_bridge(
    attestation_key_spec: str, bus: MemoryEventBus, bridge_metrics_port: int
) -> AsyncIterator[str]:
    settings = BridgeSettings(
        attestation_keys=attestation_key_spec, subscriber_queue=2_000, metrics_port=bridge_metrics_port
    )
    async with running_bridge(settings, bus=bus) as server:
        yield f"127.0.0.1:{server.port}"


async def bridge_metric(port: int, name: str) -> float:
    """One sample of the bridge's Prometheus endpoint."""
    body = await asyncio.to_thread(scrape, port)
    [value] = [line.split()[-1] for line in body.splitlines() if line.split(" ")[0] == name]
    return float(value)


@pytest.fixture
async def publisher(bus_bridge: str, make_context: ContextFactory) -> AsyncIterator[Publisher]:
    pub = Publisher(bus_bridge, make_context)
    yield pub
    await pub.close()


async def wait_until(predicate: Any, *, timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.01)


async def test_two_tabs_of_one_user_share_one_subscription_and_a_stranger_gets_nothing(
    start_gateway: GatewayFactory,
    make_token: TokenFactory,
    bus_bridge: str,
    bus: MemoryEventBus,
    publisher: Publisher,
    bridge_metrics_port: int,
) -> None:
    server = await start_gateway(bridge_target=bus_bridge)
    async with AsyncExitStack() as stack:
        tabs = [await stack.enter_async_context(open_ws(server, make_token(ALICE))) for _ in range(2)]
        carol = await stack.enter_async_context(open_ws(server, make_token(CAROL)))
        for ws in [*tabs, carol]:
            assert (await recv_json(ws))["type"] == "connected"
            assert (await request(ws, {"type": "ping"}))["type"] == "pong"  # subscribed by now
        assert bus.subscriber_count(ALICE) == 1  # one subscription for both tabs
        assert bus.subscriber_count(CAROL) == 1
        assert server.stats.users_subscribed == 2
        assert server.stats.fabric_streams == 1
        steps = a_run(20, tools_every=5)
        ids = await publisher.run(ALICE, steps)
        for ws in tabs:
            events = await until_terminal(ws)
            assert [e["event_id"] for e in events] == ids
            assert_every_seq_once(events, steps)
        pong = await request(carol, {"type": "ping", "id": "c"})
        assert (pong["type"], pong["id"]) == ("pong", "c")  # nothing of Alice's came first
        await tabs[0].close()
        await asyncio.sleep(0.1)
        assert bus.subscriber_count(ALICE) == 1  # the other tab still holds it
        [later] = await publisher.run(ALICE, [("agent_thinking", {"reasoning": "still here"})])
        assert (await recv_json(tabs[1]))["event_id"] == later
        assert await bridge_metric(bridge_metrics_port, "runwire_bridge_fabric_subscriptions") == 2
        await tabs[1].close()
        await wait_until(lambda: bus.subscriber_count(ALICE) == 0)
        assert server.stats.users_subscribed == 1
        assert bus.subscriber_count(CAROL) == 1
        assert await bridge_metric(bridge_metrics_port, "runwire_bridge_fabric_subscriptions") == 1
        assert (
            await bridge_metric(bridge_metrics_port, "runwire_bridge_fabric_subscriptions_removed_total") == 1
        )
        assert await bridge_metric(bridge_metrics_port, "runwire_bridge_fabric_streams") == 1
    await wait_until(lambda: bus.subscriber_count(CAROL) == 0)
    assert server.stats.users_subscribed == 0
    assert server.events_blocked_owner_mismatch == 0


async def test_closing_the_last_tab_sends_one_remove_for_the_users_subscription(
    start_gateway: GatewayFactory, make_token: TokenFactory
) -> None:
    bridge = fakes.ScriptedBridge([([fakes.replay_complete(resume_after="1-0")], None)])
    async with fakes.serving(bridge) as target:
        server = await start_gateway(bridge_target=target, fabric_credit=64)
        async with AsyncExitStack() as stack:
            for _ in range(3):
                ws = await stack.enter_async_context(open_ws(server, make_token(ALICE)))
                await recv_json(ws)
                assert (await request(ws, {"type": "ping"}))["type"] == "pong"
            assert bridge.afters == [""]
            assert bridge.initial_credits == [64]
        await wait_until(lambda: bridge.removed == [1])


def slow_reader_socket(port: int) -> socket.socket:
    """A connected TCP socket with a tiny receive buffer, so an unread WebSocket backs up fast."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    sock.setblocking(False)
    return sock


async def test_a_socket_that_never_reads_does_not_delay_another_user_then_gets_every_seq(
    start_gateway: GatewayFactory, make_token: TokenFactory, bus_bridge: str, publisher: Publisher
) -> None:
    server = await start_gateway(
        bridge_target=bus_bridge, fabric_credit=32, outbox_coalesce_after=8, outbox_max_frames=200
    )
    slow_steps = a_run(600, size=8_000, tools_every=50)
    fast_steps = a_run(30, tools_every=10)
    token = make_token(ALICE)
    async with (
        open_ws(server, token, max_queue=1, sock=slow_reader_socket(server.port)) as slow,
        open_ws(server, make_token(BOB)) as fast,
    ):
        for ws in (slow, fast):
            await recv_json(ws)
            assert (await request(ws, {"type": "ping"}))["type"] == "pong"
        # Alice stops reading; her ~5 MB of events back up in her socket's queue.
        await publisher.run(ALICE, slow_steps)
        [alice_sink] = server.feeds.get(ALICE).sinks  # type: ignore[union-attr]
        await wait_until(lambda: alice_sink.depth > 0 or alice_sink.stalled)
        bob_ids = await publisher.run(BOB, fast_steps)
        bob_events = await until_terminal(fast, timeout=10)
        assert bob_events[-1]["event_id"] == bob_ids[-1]
        assert_every_seq_once(bob_events, fast_steps)  # a burst may coalesce past 8 queued frames
        assert alice_sink.depth > 0 or alice_sink.stalled  # still backlogged when Bob was done
        # Alice reads again: every seq is accounted for, nothing duplicated.
        alice_events = await until_terminal(slow, timeout=60)
        assert_every_seq_once(alice_events, slow_steps)
        assert len({e["event_id"] for e in alice_events}) == len(alice_events)
        assert any("merged_from" in e for e in alice_events)
    assert server.stats.partials_coalesced > 0
    assert server.stats.credits_granted > 32  # far more than one window went through
    assert server.events_blocked_owner_mismatch == 0


async def test_when_one_of_two_bridges_dies_its_users_move_to_the_other_and_lose_nothing(
    attestation_key_spec: str,
    start_gateway: GatewayFactory,
    make_token: TokenFactory,
    make_context: ContextFactory,
    redis_url: str,
) -> None:
    prefix = f"rwtest-{new_id('p')}"
    users = [f"user_fail_{i:02d}_0123456789" for i in range(8)]

    def settings() -> BridgeSettings:
        return BridgeSettings(
            attestation_keys=attestation_key_spec,
            backend="redis",
            redis_url=redis_url,
            redis_key_prefix=prefix,
            grace_period_s=1.0,
        )

    async with AsyncExitStack() as bridges:
        doomed = AsyncExitStack()
        first = await doomed.enter_async_context(running_bridge(settings()))
        second = await bridges.enter_async_context(running_bridge(settings()))
        targets = f"ipv4:127.0.0.1:{first.port},127.0.0.1:{second.port}"
        server = await start_gateway(bridge_target=targets)
        publisher = Publisher(f"127.0.0.1:{second.port}", make_context)
        try:
            async with AsyncExitStack() as stack:
                sockets = {
                    me: await stack.enter_async_context(open_ws(server, make_token(me))) for me in users
                }
                for ws in sockets.values():
                    await recv_json(ws)
                    assert (await request(ws, {"type": "ping"}))["type"] == "pong"
                assert server.stats.fabric_streams == 2  # the users are spread over both replicas
                run_ids = {me: new_id("run") for me in users}
                steps = a_run(40, tools_every=10)
                half = len(steps) // 2
                for me in users:
                    await publisher.run(me, steps[:half], run_id=run_ids[me])
                await doomed.aclose()  # one replica goes away mid-run
                for me in users:
                    await publisher.run(me, steps[half:], run_id=run_ids[me])
                for me, ws in sockets.items():
                    events = await until_terminal(ws, run_ids[me], timeout=20)
                    assert_every_seq_once(events, steps)
                    assert {e["user_id"] for e in events} == {me}
            assert server.stats.resubscribes > 0
            assert server.events_blocked_owner_mismatch == 0
        finally:
            await publisher.close()


async def test_a_tab_that_never_reads_is_resumed_from_its_cursor_and_does_not_hold_its_other_tab_back(
    start_gateway: GatewayFactory, make_token: TokenFactory, bus_bridge: str, publisher: Publisher
) -> None:
    server = await start_gateway(
        bridge_target=bus_bridge, fabric_credit=16, outbox_coalesce_after=4, outbox_max_frames=24
    )
    steps = a_run(300, size=30_000, tools_every=3)  # ~9 MB, more than socket buffers hold
    async with (
        open_ws(server, make_token(ALICE), max_queue=1, sock=slow_reader_socket(server.port)) as slow,
        open_ws(server, make_token(ALICE)) as fast,
    ):
        for ws in (slow, fast):
            await recv_json(ws)
            assert (await request(ws, {"type": "ping"}))["type"] == "pong"
        await publisher.run(ALICE, steps)
        assert_every_seq_once(await until_terminal(fast, timeout=20), steps)
        assert server.stats.backlog_resumes >= 1  # the slow tab overflowed and was cut loose
        assert_every_seq_once(await until_terminal(slow, timeout=60), steps)
    assert server.events_blocked_owner_mismatch == 0


async def test_credits_due_for_several_users_go_out_in_one_request() -> None:
    stats = GatewayStats()
    replicas = BridgeReplicas("127.0.0.1:9", stats=stats)
    try:
        [stream] = replicas.streams()
        handler: Any = object()
        stream._handlers.update({1: handler, 2: handler})  # two users' subscriptions, stream not started
        stream.grant(1, 5)
        stream.grant(2, 7)
        stream.grant(1, 3)
        stream.grant(3, 9)  # not (or no longer) a subscription of this stream: nothing to grant
        request = await anext(stream._requests())
        assert request.WhichOneof("op") is None
        assert {c.subscription_id: c.events for c in request.credits} == {1: 8, 2: 7}
        assert stats.credits_granted == 15
    finally:
        await replicas.close()


async def test_a_tab_resuming_after_a_cursor_replays_alone_then_shares_its_users_subscription(
    start_gateway: GatewayFactory,
    make_token: TokenFactory,
    bus_bridge: str,
    bus: MemoryEventBus,
    publisher: Publisher,
) -> None:
    server = await start_gateway(bridge_target=bus_bridge)
    async with open_ws(server, make_token(ALICE)) as live:
        await recv_json(live)
        assert (await request(live, {"type": "ping"}))["type"] == "pong"
        run_id = new_id("run")
        steps = a_run(6)
        ids = await publisher.run(ALICE, steps[:3], run_id=run_id)
        assert [(await recv_json(live))["event_id"] for _ in ids] == ids
        async with open_ws(server, make_token(ALICE), path=f"/ws?after={ids[0]}") as late:
            assert (await recv_json(late))["type"] == "connected"
            assert [(await recv_json(late))["event_id"] for _ in range(2)] == ids[1:]
            assert await recv_json(late) == {"type": "resumed", "id": None, "replayed": 2}
            # Caught up: the replay subscription goes, the user's one subscription stays.
            await wait_until(lambda: bus.subscriber_count(ALICE) == 1)
            more = await publisher.run(ALICE, steps[3:], run_id=run_id)
            for ws in (live, late):
                assert [(await recv_json(ws))["event_id"] for _ in more] == more
                pong = await request(ws, {"type": "ping", "id": "nothing-else"})
                assert (pong["type"], pong["id"]) == ("pong", "nothing-else")


async def test_a_subscription_refused_as_unauthenticated_closes_the_users_sockets_with_1008(
    start_gateway: GatewayFactory, make_token: TokenFactory
) -> None:
    bridge = fakes.ScriptedBridge([([], grpc.StatusCode.UNAUTHENTICATED)])
    async with fakes.serving(bridge) as target:
        server = await start_gateway(bridge_target=target)
        async with open_ws(server, make_token(ALICE)) as ws:
            await recv_json(ws)
            error = await recv_json(ws)
            assert (error["type"], error["code"]) == ("error", "unauthenticated")
            with pytest.raises(ConnectionClosed):
                await recv_json(ws)
            assert ws.close_code == 1008
        assert bridge.afters == [""]  # not retried


async def test_users_are_spread_over_the_replicas_and_never_sent_to_one_that_is_down() -> None:
    replicas = BridgeReplicas("ipv4:127.0.0.1:9,127.0.0.1:10", stats=GatewayStats(), cooldown_s=60)
    try:
        users = [f"user_spread_{i:03d}_0123456789" for i in range(50)]
        before = {me: replicas.choose(me).address for me in users}
        assert set(before.values()) == {"127.0.0.1:9", "127.0.0.1:10"}
        replicas.mark_down("127.0.0.1:9")
        after = {me: replicas.choose(me).address for me in users}
        assert set(after.values()) == {"127.0.0.1:10"}
        # Only the users of the replica that went away moved.
        assert all(after[me] == before[me] for me in users if before[me] == "127.0.0.1:10")
        replicas.mark_up("127.0.0.1:9")
        assert {me: replicas.choose(me).address for me in users} == before
    finally:
        await replicas.close()


async def test_a_dns_target_is_resolved_into_its_addresses() -> None:
    replicas = BridgeReplicas("dns:///localhost:5999", stats=GatewayStats())
    try:
        assert replicas.addresses == ()
        await replicas.resolve()
        assert "127.0.0.1:5999" in replicas.addresses
        assert replicas.choose("user_dns_0123456789").address in replicas.addresses
    finally:
        await replicas.close()


async def test_a_stream_that_broke_while_idle_serves_the_next_user_once_its_bridge_is_back(
    attestation_key_spec: str,
    start_gateway: GatewayFactory,
    make_token: TokenFactory,
    make_context: ContextFactory,
) -> None:
    """The broken call's request generator may outlive it; it must not take the next call's add."""
    settings = BridgeSettings(attestation_keys=attestation_key_spec, port=free_port(), grace_period_s=0.5)
    target = f"127.0.0.1:{settings.port}"
    async with running_bridge(settings):
        server = await start_gateway(bridge_target=target)
        async with open_ws(server, make_token(ALICE)) as ws:
            await recv_json(ws)
            assert (await request(ws, {"type": "ping"}))["type"] == "pong"  # the stream is open
    await wait_until(lambda: server.stats.fabric_streams == 0)  # it broke with no subscription on it
    async with running_bridge(settings), open_ws(server, make_token(BOB)) as ws:  # same address
        await recv_json(ws)
        assert (await request(ws, {"type": "ping"}))["type"] == "pong"
        publisher = Publisher(target, make_context)
        try:
            steps = a_run(5)
            ids = await publisher.run(BOB, steps)
            events = await until_terminal(ws, timeout=15)
            assert [e["event_id"] for e in events] == ids
        finally:
            await publisher.close()
