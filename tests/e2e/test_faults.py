"""Faults injected for real: processes killed and terminated, sockets dropped.

Each test starts its own cluster of service processes, because it kills or
restarts some of them.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import redis.asyncio as redis

from runwire_common.ids import new_id
from tests.e2e.conftest import Launch, System
from tests.e2e.wsclient import TERMINAL, Frame, WsClient

pytestmark = pytest.mark.e2e

LONG_SLEEP = {"steps": [{"think": "working"}, {"sleep_ms": 60_000}], "result": "never"}


def _streaming_script(chunks: int, *, pause_ms: int = 100) -> dict[str, Any]:
    steps: list[dict[str, Any]] = []
    for i in range(chunks):
        steps += [{"partial": f"chunk-{i}"}, {"sleep_ms": pause_ms}]
    return {"steps": steps, "result": "all chunks"}


def assert_one_clean_run(events: list[Frame]) -> Frame:
    """Per-run guarantees: seq 1..n, no duplicates, exactly one terminal event, last."""
    seqs = [e["seq"] for e in events]
    assert seqs == list(range(1, len(events) + 1)), seqs
    assert len({e["event_id"] for e in events}) == len(events)
    terminals = [e for e in events if e["type"] in TERMINAL]
    assert len(terminals) == 1 and terminals[0] is events[-1], [e["type"] for e in events]
    return terminals[0]


async def test_a_killed_execution_service_is_reported_as_agent_death_to_its_owner_only(
    launch: Launch, user: Callable[[], str]
) -> None:
    system = launch()
    owner = await WsClient.open(system.url, system.token(user()))
    others = [await WsClient.open(system.url, system.token(user())) for _ in range(5)]
    try:
        run_id = (await owner.start_run("scripted", LONG_SLEEP))["run"]["run_id"]
        await owner.wait_for(lambda f: f.get("run_id") == run_id and f.get("type") == "agent_thinking")
        system.cluster.processes["execution"][0].signal(signal.SIGKILL)
        killed_at = time.monotonic()
        death = await owner.wait_for(lambda f: f.get("type") == "agent_death", timeout=20)
        assert time.monotonic() - killed_at <= 12.0
        assert death["run_id"] == run_id
        payload = death["payload"]
        assert payload["status"] == "dead" and payload["death_cause"] == "no_heartbeat"
        assert payload["message"] and payload["recovery_action"]
        assert_one_clean_run(owner.events(run_id))
        state = await owner.call({"type": "run.get", "run_id": run_id})
        assert state["run"]["state"] == "dead"
        for other in others:
            assert (await other.call({"type": "ping"}))["type"] == "pong"
            assert other.events() == []
    finally:
        for client in (owner, *others):
            await client.close()


async def test_an_execution_timeout_ends_the_run_in_state_timeout(
    launch: Launch, user: Callable[[], str]
) -> None:
    system = launch(service_env={"execution": {"RUNWIRE_EXECUTION_DEFAULT_TIMEOUT_S": "2"}})
    client = await WsClient.open(system.url, system.token(user()))
    try:
        run_id = (await client.start_run("scripted", {"steps": [{"sleep_ms": 10_000}], "result": "x"}))[
            "run"
        ]["run_id"]
        started = time.monotonic()
        final = await client.wait_terminal(run_id, timeout=15)
        assert time.monotonic() - started < 6
        assert final["type"] == "agent_error" and final["payload"]["status"] == "timeout"
        assert_one_clean_run(client.events(run_id))
        assert (await client.call({"type": "run.get", "run_id": run_id}))["run"]["state"] == "timeout"
    finally:
        await client.close()


async def test_multitask_strategies_on_a_busy_thread(launch: Launch, user: Callable[[], str]) -> None:
    system = launch()
    client = await WsClient.open(system.url, system.token(user()))
    try:
        first = (await client.start_run("scripted", LONG_SLEEP))["run"]
        thread = first["thread_id"]
        refused = await client.start_run(
            "scripted", LONG_SLEEP, thread_id=thread, multitask_strategy="reject"
        )
        assert refused["type"] == "error" and refused["code"] == "failed_precondition", refused

        interrupting = await client.start_run(
            "scripted",
            {"steps": [{"sleep_ms": 800}], "result": "second"},
            thread_id=thread,
            multitask_strategy="interrupt",
        )
        assert interrupting["type"] == "run.accepted", interrupting
        cancelled = await client.wait_terminal(first["run_id"])
        assert cancelled["type"] == "agent_cancelled"
        assert_one_clean_run(client.events(first["run_id"]))

        queued = await client.start_run(
            "scripted", {"steps": [], "result": "third"}, thread_id=thread, multitask_strategy="enqueue"
        )
        assert queued["type"] == "run.accepted", queued
        second_end = await client.wait_terminal(interrupting["run"]["run_id"])
        third_start = await client.wait_for(
            lambda f: f.get("run_id") == queued["run"]["run_id"] and f.get("type") == "agent_started"
        )
        assert second_end["type"] == "agent_completed"
        assert client.frames.index(second_end) < client.frames.index(third_start)
        assert (await client.wait_terminal(queued["run"]["run_id"]))["type"] == "agent_completed"
    finally:
        await client.close()


async def test_two_racing_starts_on_one_thread_admit_exactly_one(
    launch: Launch, user: Callable[[], str]
) -> None:
    system = launch()
    client = await WsClient.open(system.url, system.token(user()))
    try:
        thread = new_id("thread")
        frames = [
            {
                "type": "run.start",
                "id": f"race-{i}",
                "agent": "scripted",
                "input": LONG_SLEEP,
                "thread_id": thread,
            }
            for i in range(2)
        ]
        await asyncio.gather(*(client.send(frame) for frame in frames))
        replies = [await client.wait_for(lambda f, i=i: f.get("id") == f"race-{i}") for i in range(2)]
        kinds = sorted(r["type"] if r["type"] != "error" else r["code"] for r in replies)
        assert kinds == ["failed_precondition", "run.accepted"], replies
    finally:
        await client.close()


async def test_a_cursor_older_than_the_retained_log_gets_an_explicit_gap(
    launch: Launch, user: Callable[[], str]
) -> None:
    system = launch(service_env={"bridge": {"RUNWIRE_BRIDGE_LOG_CAPACITY": "5"}})
    me = user()
    client = await WsClient.open(system.url, system.token(me))
    run_id = (await client.start_run("scripted", _streaming_script(8, pause_ms=0)))["run"]["run_id"]
    await client.wait_terminal(run_id)
    first = client.events(run_id)[0]["event_id"]
    await client.close()
    again = await WsClient.open(system.url, system.token(me), after=first)
    try:
        gap = await again.wait_for(lambda f: f.get("type") == "gap")
        assert gap["requested_after"] == first and gap["oldest_event_id"]
        await again.wait_for(lambda f: f.get("type") == "resumed")
        retained = again.events(run_id)
        assert len(retained) == 5 and retained[0]["event_id"] == gap["oldest_event_id"]
        assert retained[-1]["type"] == "agent_completed"
        state = await again.call({"type": "run.get", "run_id": run_id})
        assert state["run"]["state"] == "completed"
    finally:
        await again.close()


@pytest.fixture
async def redis_prefix(redis_url: str) -> AsyncIterator[str]:
    prefix = f"rwtest-{new_id('p')}"
    yield prefix
    client = redis.from_url(redis_url)
    try:
        keys = [key async for key in client.scan_iter(match=f"{prefix}:*")]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


@pytest.mark.parametrize("kind", ["gateway", "execution", "registry", "bridge"])
async def test_terminating_a_service_mid_run_loses_no_event_once_clients_resume(
    launch: Launch, user: Callable[[], str], redis_url: str, redis_prefix: str, kind: str
) -> None:
    grace = 2.0
    system: System = launch(
        grace_period_s=grace,
        redis_url=redis_url,
        service_env={"bridge": {"RUNWIRE_BRIDGE_REDIS_KEY_PREFIX": redis_prefix}},
    )
    users = [user() for _ in range(3)]
    clients = {me: await WsClient.open(system.url, system.token(me)) for me in users}
    seen: dict[str, list[Frame]] = {me: [] for me in users}
    runs: dict[str, str] = {}
    try:
        for me, client in clients.items():
            runs[me] = (await client.start_run("scripted", _streaming_script(30)))["run"]["run_id"]
        for me, client in clients.items():
            await client.wait_for(lambda f, me=me: f.get("run_id") == runs[me] and f.get("seq", 0) >= 5)

        proc = system.cluster.processes[kind][0]
        began = time.monotonic()
        proc.signal(signal.SIGTERM)
        code = await asyncio.to_thread(proc.wait, grace + 10)
        assert code == 0, proc.log_tail()
        assert time.monotonic() - began <= grace + 3.0
        await asyncio.to_thread(system.cluster.restart, proc)

        for me in users:
            client = clients[me]
            if kind == "gateway":
                await asyncio.wait_for(client.closed.wait(), 10)
                assert client.connection.close_code == 1012
                seen[me] += client.events(runs[me])
                cursor = client.events()[-1]["event_id"]
                clients[me] = await WsClient.open(system.url, system.token(me), after=cursor)
        for me in users:
            await clients[me].wait_terminal(runs[me], timeout=60)
            seen[me] += clients[me].events(runs[me])
            terminal = assert_one_clean_run(seen[me])
            if kind == "execution":
                assert terminal["type"] == "agent_death"
                assert terminal["payload"]["death_cause"] == "executor_lost"
            else:
                assert terminal["type"] == "agent_completed", terminal
                assert sum(e["type"] == "partial_result" for e in seen[me]) == 30
    finally:
        for client in clients.values():
            await client.close()
