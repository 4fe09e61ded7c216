"""The Python client (``runwire_client``): reconnects that resume, each event exactly once.

Two kinds of tests:

* against a scripted stand-in for the gateway (a real WebSocket server in this
  process), where the clock and the jitter are fake, so the backoff delays, the
  close-code handling and the duplicate filtering are checked exactly and fast;
* against the services as real processes (the end-to-end fixtures): runs,
  replies and errors; the gateway killed mid-run and started again; a gap; a
  token that expires (1008).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.server import ServerConnection, serve
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from runwire_client import TERMINAL_EVENTS, Backoff, Event, RunwireClient, RunwireError, State
from runwire_client.events import EventRouter
from tests.e2e.conftest import Launch, System, launch, system, user

# The end-to-end cluster fixtures, shared with tests/e2e.
__all__ = ["launch", "system", "user"]

e2e = pytest.mark.e2e


# -- backoff ---------------------------------------------------------------------


def test_backoff_doubles_its_cap_up_to_the_maximum_and_draws_uniformly_below_it() -> None:
    draws = iter([0.5, 0.5, 0.5, 0.5, 0.5, 0.999, 0.0])
    backoff = Backoff(initial_s=0.25, maximum_s=1.5, rand=lambda: next(draws))
    delays = [backoff.next_delay() for _ in range(7)]
    assert delays == [0.125, 0.25, 0.5, 0.75, 0.75, pytest.approx(1.4985), 0.0]
    backoff.reset()
    assert backoff.cap(backoff.attempt) == 0.25
    assert Backoff(initial_s=0.25, maximum_s=10.0).cap(5000) == 10.0


def test_backoff_refuses_a_maximum_below_the_initial_delay() -> None:
    with pytest.raises(ValueError):
        Backoff(initial_s=2.0, maximum_s=1.0)


# -- the event router ------------------------------------------------------------


def _event(seq: int, *, run_id: str = "run_a", kind: str = "partial_result", **extra: Any) -> Event:
    return {
        "type": kind,
        "event_id": f"{1000 + seq}-0" if run_id == "run_a" else f"{2000 + seq}-0",
        "seq": seq,
        "run_id": run_id,
        "payload": {"content": f"c{seq}", "index": seq},
        **extra,
    }


async def _drain(stream: AsyncIterator[Event], count: int) -> list[Event]:
    return [await anext(stream) for _ in range(count)]


async def test_the_router_drops_repeated_events_and_keeps_a_coalesced_frame_whole() -> None:
    router = EventRouter()
    assert router.accept(_event(1, kind="agent_started"))
    merged = _event(4, merged_from=2)
    assert router.accept(merged)
    # A replay of what the coalesced frame stood for, and of itself, is dropped.
    assert not router.accept(_event(3))
    assert not router.accept(merged)
    assert router.accept(_event(5, kind="agent_completed"))
    assert router.last_event_id == "1005-0"
    stream = router.subscribe()  # nobody listened so far: the backlog comes first
    got = await _drain(aiter(stream), 3)
    assert [(e["seq"], e.get("merged_from")) for e in got] == [(1, None), (4, 2), (5, None)]


async def test_a_run_subscription_replays_what_arrived_before_it_and_ends_after_the_terminal_event() -> None:
    router = EventRouter()
    router.accept(_event(1, kind="agent_started"))
    router.accept(_event(1, run_id="run_b", kind="agent_started"))
    stream = router.subscribe_run("run_a")
    router.accept(_event(2, kind="agent_completed"))
    router.accept(_event(2, run_id="run_b"))
    assert [e["seq"] async for e in stream] == [1, 2]
    late = router.subscribe_run("run_a")  # after the run ended: its kept events, then the end
    assert [e["type"] async for e in late] == ["agent_started", "agent_completed"]


# -- against a scripted stand-in for the gateway -----------------------------------

Script = Callable[[ServerConnection], Awaitable[None]]


@dataclass
class FakeGateway:
    """Serves each handshake with the next step: an HTTP status to refuse with, or a script.

    Every connection it accepts is greeted with ``connected`` first, like the gateway.
    """

    steps: list[int | Script]
    handshakes: list[Headers | str] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)
    received: list[dict[str, Any]] = field(default_factory=list)
    url: str = ""

    def process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        self.paths.append(request.path)
        self.handshakes.append(request.headers)
        step = self.steps[0]
        if isinstance(step, int):
            self.steps.pop(0)
            return connection.respond(step, "refused\n")
        return None

    async def handler(self, connection: ServerConnection) -> None:
        script = self.steps.pop(0)
        assert not isinstance(script, int)
        hello = {"type": "connected", "connection_id": f"conn_{len(self.paths)}", "user_id": "alice"}
        await connection.send(json.dumps({**hello, "server_time": "2026-01-01T00:00:00.000000Z"}))
        await script(connection)

    async def next_request(self, connection: ServerConnection) -> dict[str, Any]:
        frame: dict[str, Any] = json.loads(await connection.recv())
        self.received.append(frame)
        return frame


@pytest.fixture
async def fake_gateway() -> AsyncIterator[Callable[..., Awaitable[FakeGateway]]]:
    servers = []

    async def start(*steps: int | Script) -> FakeGateway:
        gateway = FakeGateway(list(steps))
        server = await serve(gateway.handler, "127.0.0.1", 0, process_request=gateway.process_request)
        servers.append(server)
        gateway.url = f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}/ws"
        return gateway

    yield start
    for server in servers:
        server.close()
        await server.wait_closed()


class FakeClock:
    """Stands in for ``asyncio.sleep``: records each delay and returns at once."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def sleep(self, delay: float) -> None:
        self.delays.append(delay)
        await asyncio.sleep(0)


def _sending(*frames: Event, close_code: int | None = None) -> Script:
    async def script(connection: ServerConnection) -> None:
        for frame in frames:
            await connection.send(json.dumps(frame))
        if close_code is not None:
            await connection.close(close_code, "scripted close")
        else:
            await connection.wait_closed()

    return script


async def test_a_restart_is_retried_with_full_jitter_backoff_and_resumes_from_the_cursor(
    fake_gateway: Callable[..., Awaitable[FakeGateway]],
) -> None:
    one, two, three = _event(1, kind="agent_started"), _event(2), _event(3, kind="agent_completed")
    gateway = await fake_gateway(
        _sending(one, close_code=1012),
        503,
        429,
        503,
        _sending(one, two, three),  # the replay repeats event 1: dropped
    )
    clock = FakeClock()
    client = RunwireClient(gateway.url, token="jwt", rand=lambda: 0.5, sleep=clock.sleep)
    states: list[State] = []
    client.on_state(states.append)
    async with client:
        got = [event async for event in client.run_events("run_a")]
        assert [e["seq"] for e in got] == [1, 2, 3]
        assert client.last_event_id == "1003-0" and client.reconnects == 1
    assert clock.delays == [0.125, 0.25, 0.5, 1.0]  # half of 0.25·2ⁿ: the fake jitter draws 0.5
    assert gateway.paths == ["/ws"] + ["/ws?after=1001-0"] * 4
    assert {h["Authorization"] for h in gateway.handshakes if isinstance(h, Headers)} == {"Bearer jwt"}
    assert states == ["connecting", "open", "reconnecting", "open", "closed"]


async def test_a_policy_close_is_not_retried_without_a_token_callback(
    fake_gateway: Callable[..., Awaitable[FakeGateway]],
) -> None:
    gateway = await fake_gateway(_sending(_event(1, kind="agent_started"), close_code=1008))
    clock = FakeClock()
    client = RunwireClient(gateway.url, token="jwt", sleep=clock.sleep)
    states: list[State] = []
    client.on_state(states.append)
    await client.connect()
    with pytest.raises(RunwireError) as failed:
        async for _ in client.events():
            pass
    assert failed.value.code == "unauthenticated"
    assert client.state == "closed" and client.error is failed.value
    assert states == ["connecting", "open", "closed"] and clock.delays == []
    assert len(gateway.paths) == 1
    with pytest.raises(RunwireError, match="unauthenticated"):
        await client.ping()
    await client.close()


async def test_a_policy_close_fetches_one_fresh_token_and_reconnects_at_once(
    fake_gateway: Callable[..., Awaitable[FakeGateway]],
) -> None:
    async def pong(connection: ServerConnection) -> None:
        ping = await gateway.next_request(connection)
        await connection.send(json.dumps({"type": "pong", "id": ping["id"], "server_time": "now"}))
        await connection.wait_closed()

    gateway = await fake_gateway(_sending(close_code=1008), 401, pong)
    tokens = iter(["fresh-1", "fresh-2"])

    async def get_token() -> str:
        return next(tokens)

    clock = FakeClock()
    async with RunwireClient(gateway.url, token="old", get_token=get_token, sleep=clock.sleep) as client:
        # The first fresh token is refused too: that ends it, no second fetch, no backoff.
        with pytest.raises(RunwireError, match="unauthenticated: HTTP 401"):
            await client.ping()
        assert client.state == "closed"
    auth = [h["Authorization"] for h in gateway.handshakes if isinstance(h, Headers)]
    assert auth == ["Bearer old", "Bearer fresh-1"] and clock.delays == []

    gateway = await fake_gateway(_sending(close_code=1008), pong)
    tokens = iter(["fresh-3"])
    async with RunwireClient(gateway.url, token="old", get_token=get_token, sleep=clock.sleep) as client:
        assert await client.ping() == "now"
        assert client.state == "open" and client.reconnects == 1
    auth = [h["Authorization"] for h in gateway.handshakes if isinstance(h, Headers)]
    assert auth == ["Bearer old", "Bearer fresh-3"] and clock.delays == []


async def test_a_request_in_flight_when_the_connection_drops_fails_and_is_not_resent(
    fake_gateway: Callable[..., Awaitable[FakeGateway]],
) -> None:
    async def drop_after_request(connection: ServerConnection) -> None:
        await gateway.next_request(connection)
        await connection.close(1012, "restart")

    async def answer_requests(connection: ServerConnection) -> None:
        while True:
            frame = await gateway.next_request(connection)
            await connection.send(json.dumps({"type": "run", "id": frame["id"], "run": {"run_id": "run_a"}}))

    gateway = await fake_gateway(drop_after_request, answer_requests)
    clock = FakeClock()
    async with RunwireClient(gateway.url, token="jwt", sleep=clock.sleep) as client:
        with pytest.raises(RunwireError) as lost:
            await client.get_run("run_a")
        assert lost.value.code == "unavailable"
        assert (await client.get_run("run_a"))["run_id"] == "run_a"  # waits for the reconnect
    assert [f["type"] for f in gateway.received] == ["run.get", "run.get"]
    assert gateway.received[0]["id"] != gateway.received[1]["id"]


async def test_the_first_connection_failing_raises_at_once(
    fake_gateway: Callable[..., Awaitable[FakeGateway]],
) -> None:
    gateway = await fake_gateway(401)
    client = RunwireClient(gateway.url, token="bad")
    with pytest.raises(RunwireError) as refused:
        await client.connect()
    assert refused.value.code == "unauthenticated" and "HTTP 401" in refused.value.message
    assert client.state == "closed"
    with pytest.raises(RunwireError, match="unavailable"):
        async with RunwireClient("ws://127.0.0.1:9/ws", token="jwt"):
            pass


# -- against the services as processes ---------------------------------------------


def _streaming(chunks: int, *, pause_ms: int) -> dict[str, Any]:
    steps: list[dict[str, Any]] = [{"think": "streaming"}]
    for i in range(chunks):
        steps += [{"partial": f"chunk-{i}"}, {"sleep_ms": pause_ms}]
    return {"steps": steps, "result": "all chunks"}


def _assert_exactly_once(events: list[Event]) -> None:
    """Each seq once, in order (a coalesced frame covering merged_from..seq), one terminal, last."""
    covered = [s for e in events for s in range(int(e.get("merged_from") or e["seq"]), e["seq"] + 1)]
    assert covered == list(range(1, len(covered) + 1)), covered
    assert [e["type"] in TERMINAL_EVENTS for e in events].count(True) == 1
    assert events[-1]["type"] in TERMINAL_EVENTS


@e2e
async def test_a_run_with_a_question_is_followed_answered_and_listed(
    system: System, user: Callable[[], str]
) -> None:
    me = user()
    async with RunwireClient(system.url, token=system.token(me)) as client:
        assert client.user_id == me and client.connection_id and client.state == "open"
        await client.ping()
        script = {"steps": [{"ask": "Your name?"}, {"partial": "hi "}], "result": "ok"}
        run = await client.start_run("scripted", script)
        got: list[Event] = []
        async for event in client.run_events(run["run_id"]):
            got.append(event)
            if event["type"] == "input_required":
                request_id = event["payload"]["request_id"]
                with pytest.raises(RunwireError) as refused:
                    await client.respond(run["run_id"], request_id, {"wrong": 1})
                assert refused.value.code == "invalid_argument"
                answered = await client.respond(run["run_id"], request_id, {"text": "Ada"})
                assert answered["run_id"] == run["run_id"]
        _assert_exactly_once(got)
        assert got[-1]["type"] == "agent_completed"
        assert (await client.get_run(run["run_id"]))["state"] == "completed"

        runs, next_page = await client.list_runs(thread_id=run["thread_id"], limit=5)
        assert [r["run_id"] for r in runs] == [run["run_id"]] and next_page is None
        threads, _ = await client.list_threads(limit=5)
        assert run["thread_id"] in [t["thread_id"] for t in threads]
        thread, messages = await client.get_thread(run["thread_id"])
        assert thread["thread_id"] == run["thread_id"] and isinstance(messages, list)
        await client.delete_thread(run["thread_id"])
        with pytest.raises(RunwireError) as gone:
            await client.get_thread(run["thread_id"])
        assert gone.value.code == "not_found"
        # The same events reached the all-events view once each, in order.
        everything = [event async for event in _take(client.events(), len(got))]
        assert everything == got


async def _take(stream: AsyncIterator[Event], count: int) -> AsyncIterator[Event]:
    for _ in range(count):
        yield await asyncio.wait_for(anext(stream), 10)


@e2e
async def test_errors_are_raised_with_the_gateways_code(system: System, user: Callable[[], str]) -> None:
    async with RunwireClient(system.url, token=system.token(user())) as client:
        cases: list[tuple[Awaitable[Any], str]] = [
            (client.start_run("no_such_agent", {}), "not_found"),
            (client.get_run("run_0000000000000000"), "not_found"),
            (client.list_runs(limit=0), "invalid_argument"),
            (client.cancel_run(""), "invalid_argument"),
        ]
        for call, code in cases:
            with pytest.raises(RunwireError) as failed:
                await call
            assert failed.value.code == code, failed.value
        await client.ping()  # the connection stays usable


@e2e
async def test_the_gateway_killed_mid_run_and_started_again_loses_and_repeats_nothing(
    launch: Launch, user: Callable[[], str]
) -> None:
    system = launch()
    me = user()
    states: list[State] = []
    async with RunwireClient(system.url, token=system.token(me), reconnect_initial_s=0.1) as client:
        client.on_state(states.append)
        run = await client.start_run("scripted", _streaming(30, pause_ms=60))
        got: list[Event] = []

        async def follow() -> None:
            async for event in client.run_events(run["run_id"]):
                got.append(event)

        following = asyncio.create_task(follow())
        while len(got) < 5:
            await asyncio.sleep(0.02)
        gateway = system.cluster.processes["gateway"][0]
        gateway.signal(signal.SIGKILL)
        await asyncio.to_thread(gateway.wait, 10)
        await asyncio.to_thread(system.cluster.restart, gateway)
        await asyncio.wait_for(following, 30)
        assert states[:2] == ["reconnecting", "open"] and client.reconnects >= 1
        assert client.replayed > 0  # what the run emitted while the gateway was down
    _assert_exactly_once(got)
    assert got[-1]["type"] == "agent_completed"
    assert "".join(e["payload"]["content"] for e in got if e["type"] == "partial_result") == "".join(
        f"chunk-{i}" for i in range(30)
    )


@e2e
async def test_events_trimmed_while_disconnected_are_surfaced_as_a_gap(
    launch: Launch, user: Callable[[], str]
) -> None:
    system = launch(service_env={"bridge": {"RUNWIRE_BRIDGE_LOG_CAPACITY": "5"}})
    me = user()
    gaps: list[dict[str, Any]] = []
    async with RunwireClient(system.url, token=system.token(me), reconnect_initial_s=0.1) as client:
        client.on_gap(gaps.append)
        # One run ends soon after the gateway goes; the other streams on long enough that
        # the bridge, keeping only the user's last 5 events, trims the first one's end.
        short = await client.start_run("scripted", {"steps": [{"think": "a"}, {"sleep_ms": 200}]})
        long = await client.start_run("scripted", _streaming(20, pause_ms=30))
        short_events, long_events = client.run_events(short["run_id"]), client.run_events(long["run_id"])
        got = [await anext(short_events) for _ in range(2)] + [await anext(long_events) for _ in range(2)]
        cursor = client.last_event_id
        gateway = system.cluster.processes["gateway"][0]
        gateway.signal(signal.SIGKILL)
        await asyncio.to_thread(gateway.wait, 10)
        await asyncio.sleep(1.5)  # both runs end meanwhile
        await asyncio.to_thread(system.cluster.restart, gateway)
        rest = [event async for event in long_events]
        with pytest.raises(RunwireError) as lost:
            async for event in short_events:
                rest.append(event)
        assert lost.value.code == "gap" and "completed" in lost.value.message
        assert (await client.get_run(short["run_id"]))["state"] == "completed"
    assert len(gaps) == 1 and gaps[0]["requested_after"] == cursor and gaps[0]["oldest_event_id"]
    assert {e["run_id"] for e in rest} == {long["run_id"]}
    seqs = [e["seq"] for e in got[2:] + rest]
    assert seqs == sorted(set(seqs)) and seqs[-1] - seqs[0] >= len(seqs)  # a hole, no repeat
    assert rest[-1]["type"] == "agent_completed"


@e2e
async def test_an_expired_token_closes_the_client_without_a_retry(
    system: System, user: Callable[[], str]
) -> None:
    me = user()
    states: list[State] = []
    client = RunwireClient(system.url, token=system.token(me, ttl_s=2), reconnect_initial_s=0.05)
    client.on_state(states.append)
    began = time.monotonic()
    async with client:
        with pytest.raises(RunwireError) as expired:
            async for _ in client.events():
                pass
        assert time.monotonic() - began < 5
    assert expired.value.code == "unauthenticated" and "expired" in expired.value.message
    assert states == ["connecting", "open", "closed"] and client.reconnects == 0


@e2e
async def test_an_expired_token_is_replaced_once_by_the_token_callback(
    system: System, user: Callable[[], str]
) -> None:
    me = user()
    fetched: list[str] = []

    async def get_token() -> str:
        fetched.append(system.token(me, ttl_s=600))
        return fetched[-1]

    async with RunwireClient(system.url, token=system.token(me, ttl_s=2), get_token=get_token) as client:
        first = client.connection_id
        deadline = time.monotonic() + 6
        while client.connection_id == first and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        assert client.connection_id != first and client.state == "open" and len(fetched) == 1
        run = await client.start_run("scripted", {"steps": [], "result": "ok"})
        assert [e["type"] async for e in client.run_events(run["run_id"])][-1] == "agent_completed"


@e2e
def test_the_python_snippet_of_the_client_guide_runs(
    system: System, user: Callable[[], str], tmp_path: Path
) -> None:
    guide = (Path(__file__).resolve().parents[2] / "docs" / "clients.md").read_text()
    snippet = re.search(r"## Python.*?```python\n(.*?)```", guide, re.S)
    assert snippet is not None
    script = tmp_path / "snippet.py"
    script.write_text(snippet.group(1))
    env = {**os.environ, "RUNWIRE_URL": system.url, "RUNWIRE_TOKEN": system.token(user())}
    done = subprocess.run(
        [sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=30, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "input_required" in done.stdout and "connection: closed" in done.stdout
    assert "agent_completed" in done.stdout and "last_event_id='" in done.stdout
