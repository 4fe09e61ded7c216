"""The event fabric at the scale users reach, on the production backends (Redis + PostgreSQL).

Every service runs as its own process, as ``runwire up`` starts them. The
tests count what the issue promises: a thousand connected users cost the
bridge a handful of Redis connections, not one each; and a bridge replica
killed mid-stream moves its users to the other without losing or repeating
an event.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable, Sequence
from typing import Any

import pytest
import redis.asyncio as aioredis

from tests.e2e.conftest import Launch, System
from tests.e2e.wsclient import TERMINAL, Frame, WsClient

pytestmark = pytest.mark.e2e

# A bridge process may hold this many Redis connections, whatever its subscriber count.
MAX_BRIDGE_REDIS_CONNECTIONS = 10


def _script(marker: str, *, chunks: int, pause_ms: int = 0) -> dict[str, Any]:
    steps: list[dict[str, Any]] = [{"think": marker}, {"tool": "echo", "args": {"text": marker}}]
    for i in range(chunks):
        steps.append({"partial": f"{marker}-{i}"})
        if pause_ms:
            steps.append({"sleep_ms": pause_ms})
    return {"steps": steps, "result": marker}


def assert_every_seq_once(events: Sequence[Frame]) -> None:
    """Seq 1..n, each exactly once (a coalesced ``partial_result`` stands for ``merged_from``..``seq``)."""
    covered: list[int] = []
    for event in events:
        first = event.get("merged_from", event["seq"])
        covered.extend(range(first, event["seq"] + 1))
    assert covered == list(range(1, len(covered) + 1)), covered
    assert len({e["event_id"] for e in events}) == len(events)
    terminals = [e for e in events if e["type"] in TERMINAL]
    assert len(terminals) == 1 and terminals[0] is events[-1], [e["type"] for e in events]


def assert_only_own(client: WsClient, me: str) -> None:
    foreign = [e for e in client.events() if e["user_id"] != me or f"m-{me}" not in str(e["payload"])]
    assert foreign == []


async def _open_many(system: System, users: Sequence[str], urls: Sequence[str]) -> list[WsClient]:
    clients: list[WsClient] = []
    for start in range(0, len(users), 50):  # a few dozen handshakes at a time, as real users arrive
        chunk = users[start : start + 50]
        clients += await asyncio.gather(
            *(WsClient.open(urls[(start + i) % len(urls)], system.token(me)) for i, me in enumerate(chunk))
        )
    return clients


async def _bridge_redis_connections(redis_url: str, system: System) -> int:
    """Redis connections named after the bridge processes of ``system`` (CLIENT LIST)."""
    pids = {str(p.popen.pid) for p in system.cluster.processes["bridge"] if p.popen is not None}
    client = aioredis.Redis.from_url(redis_url)
    try:
        clients: list[dict[str, Any]] = await client.client_list()
    finally:
        await client.aclose()
    return sum(
        1
        for entry in clients
        if str(entry.get("name", "")).startswith("runwire-bridge.")
        and str(entry.get("name", "")).rsplit(".", 1)[-1] in pids
    )


async def _close_all(clients: Sequence[WsClient]) -> None:
    await asyncio.gather(*(client.close() for client in clients), return_exceptions=True)


async def test_a_thousand_users_on_redis_cost_the_bridge_a_few_connections_and_fifty_runs_stay_clean(
    launch: Launch, fresh_database: str, redis_url: str, user: Callable[[], str]
) -> None:
    system = launch(database_url=fresh_database, redis_url=redis_url)
    users = [user() for _ in range(1000)]
    clients = await _open_many(system, users, [system.url])
    try:
        assert await _bridge_redis_connections(redis_url, system) <= MAX_BRIDGE_REDIS_CONNECTIONS
        runners = list(zip(users[::20], clients[::20], strict=True))
        assert len(runners) == 50
        replies = await asyncio.gather(
            *(client.start_run("scripted", _script(f"m-{me}", chunks=10)) for me, client in runners)
        )
        assert all(reply["type"] == "run.accepted" for reply in replies), replies
        run_ids = [reply["run"]["run_id"] for reply in replies]
        await asyncio.gather(
            *(
                client.wait_terminal(run_id, timeout=60)
                for (_, client), run_id in zip(runners, run_ids, strict=True)
            )
        )
        for (me, client), run_id in zip(runners, run_ids, strict=True):
            events = client.events(run_id)
            assert_every_seq_once(events)
            assert events[-1]["type"] == "agent_completed"
            assert len(events) == 1 + 1 + 2 + 10 + 1
            assert_only_own(client, me)
        idle = [client for client in clients if client not in {c for _, c in runners}]
        assert sum(len(client.events()) for client in idle) == 0
        assert await _bridge_redis_connections(redis_url, system) <= MAX_BRIDGE_REDIS_CONNECTIONS
    finally:
        await _close_all(clients)


async def test_killing_one_of_two_bridges_under_150_users_moves_them_without_loss_or_repeats(
    launch: Launch, fresh_database: str, redis_url: str, user: Callable[[], str]
) -> None:
    system = launch(replicas=2, database_url=fresh_database, redis_url=redis_url)
    urls = system.cluster.gateway_urls()
    assert len(urls) == 2 and len(system.cluster.processes["bridge"]) == 2
    users = [user() for _ in range(150)]
    clients = await _open_many(system, users, urls)
    try:
        replies = await asyncio.gather(
            *(
                client.start_run("scripted", _script(f"m-{me}", chunks=20, pause_ms=100))
                for me, client in zip(users, clients, strict=True)
            )
        )
        assert all(reply["type"] == "run.accepted" for reply in replies), replies
        run_ids = [reply["run"]["run_id"] for reply in replies]
        await asyncio.gather(
            *(
                client.wait_for(lambda f, r=run_id: f.get("run_id") == r and f.get("seq", 0) >= 4, timeout=60)
                for client, run_id in zip(clients, run_ids, strict=True)
            )
        )
        system.cluster.processes["bridge"][0].signal(signal.SIGKILL)
        finals = await asyncio.gather(
            *(
                client.wait_terminal(run_id, timeout=90)
                for client, run_id in zip(clients, run_ids, strict=True)
            )
        )
        assert [final["type"] for final in finals] == ["agent_completed"] * len(users)
        for me, client, run_id in zip(users, clients, run_ids, strict=True):
            events = client.events(run_id)
            assert_every_seq_once(events)
            assert events[-1]["seq"] == 1 + 1 + 2 + 20 + 1
            assert_only_own(client, me)
    finally:
        await _close_all(clients)
