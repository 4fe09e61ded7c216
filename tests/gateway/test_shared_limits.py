"""Per-user limits shared by gateway replicas through Redis.

Two real gateway processes (``python -m gateway``) share one Redis under a
key prefix of their own and one real bridge; a user's connections and frames
count against one limit whichever replica they reach. A replica killed with
SIGKILL leaves leases that expire; an unreachable Redis degrades to the
per-process limit instead of refusing everyone.
"""

from __future__ import annotations

import asyncio
import json
import signal
import socket
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.crc import key_slot
from websockets.exceptions import InvalidStatus

from gateway.user_limits import limit_keys
from runwire_cli.cluster import ServiceProcess
from runwire_common.ids import new_id
from tests.gateway.conftest import JWT_SECRET, UNUSED_TARGET, GatewayFactory, TokenFactory, open_ws, recv_json

LEASE_S = 2.0

Replicas = Callable[..., list[ServiceProcess]]


@pytest.fixture
async def prefix(redis_url: str) -> AsyncIterator[str]:
    """A key prefix of this test's own, deleted afterwards."""
    name = f"rwtest-{new_id('p')[-12:]}"
    yield name
    client = aioredis.from_url(redis_url)
    try:
        keys = [key async for key in client.scan_iter(match=f"{name}:*")]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


@pytest.fixture
def replicas(
    tmp_path: Path, attestation_key_spec: str, bridge_target: str, redis_url: str, prefix: str
) -> Iterator[Replicas]:
    """``replicas(n, **settings)`` → ``n`` gateway processes on one Redis prefix, stopped afterwards."""
    started: list[ServiceProcess] = []

    def launch(count: int = 2, **settings: Any) -> list[ServiceProcess]:
        procs = []
        for index in range(count):
            n = len(started)
            env = {
                "RUNWIRE_ATTESTATION_KEYS": attestation_key_spec,
                "RUNWIRE_GATEWAY_EXECUTION_TARGET": UNUSED_TARGET,
                "RUNWIRE_GATEWAY_REGISTRY_TARGET": UNUSED_TARGET,
                "RUNWIRE_GATEWAY_BRIDGE_TARGET": bridge_target,
                "RUNWIRE_GATEWAY_JWT_SECRET": JWT_SECRET,
                "RUNWIRE_GATEWAY_WS_PORT": "0",
                "RUNWIRE_GATEWAY_READY_FILE": str(tmp_path / f"gateway-{n}.json"),
                "RUNWIRE_GATEWAY_GRACE_PERIOD_S": "2",
                "RUNWIRE_GATEWAY_REDIS_URL": redis_url,
                "RUNWIRE_GATEWAY_REDIS_KEY_PREFIX": prefix,
                "RUNWIRE_GATEWAY_CONNECTION_LEASE_S": str(LEASE_S),
                "PATH": "/usr/bin:/bin",
            }
            env.update({f"RUNWIRE_GATEWAY_{key.upper()}": str(value) for key, value in settings.items()})
            proc = ServiceProcess(
                kind="gateway",
                index=index,
                env=env,
                log_path=tmp_path / f"gateway-{n}.log",
                ready_path=tmp_path / f"gateway-{n}.json",
            )
            proc.start()
            started.append(proc)
            procs.append(proc)
        for proc in procs:
            proc.wait_ready(30)
        return procs

    yield launch
    for proc in started:
        proc.stop(10)


def url(proc: ServiceProcess) -> str:
    return f"ws://127.0.0.1:{proc.port}/ws"


def connect(proc: ServiceProcess, token: str) -> Any:
    from websockets.asyncio.client import connect as ws_connect

    return ws_connect(url(proc), additional_headers={"Authorization": f"Bearer {token}"}, open_timeout=5)


async def refused_status(proc: ServiceProcess, token: str) -> int | None:
    try:
        async with connect(proc, token):
            return None
    except InvalidStatus as exc:
        return exc.response.status_code


async def ping(ws: Any, frame_id: int) -> dict[str, Any]:
    await ws.send(json.dumps({"type": "ping", "id": frame_id}))
    return await recv_json(ws)


async def test_two_gateways_on_one_redis_enforce_one_connection_limit_per_user(
    replicas: Replicas, make_token: TokenFactory
) -> None:
    a, b = await asyncio.to_thread(replicas, 2, max_connections_per_user=3)
    token = make_token(new_id("user"))
    async with connect(a, token) as a1, connect(a, token) as a2, connect(b, token) as b1:
        for ws in (a1, a2, b1):
            await recv_json(ws)
        assert await refused_status(b, token) == 429
        assert await refused_status(a, token) == 429
        assert await refused_status(b, make_token(new_id("user"))) is None  # another user: own limit
        await a2.close()
        async with asyncio.timeout(5):
            while (status := await refused_status(b, token)) is not None:
                assert status == 429
                await asyncio.sleep(0.05)


async def test_two_gateways_on_one_redis_enforce_one_message_rate_per_user(
    replicas: Replicas, make_token: TokenFactory
) -> None:
    a, b = await asyncio.to_thread(replicas, 2, user_rate_limit_messages=6, rate_limit_window_s=60)
    token = make_token(new_id("user"))
    async with connect(a, token) as on_a, connect(b, token) as on_b:
        await recv_json(on_a)
        await recv_json(on_b)
        replies = [await ping(on_a, n) for n in range(3)] + [await ping(on_b, n) for n in range(3, 6)]
        assert [r["type"] for r in replies] == ["pong"] * 6
        for ws in (on_a, on_b):
            refused = await ping(ws, 99)
            assert (refused["type"], refused["code"]) == ("error", "rate_limited")
        async with connect(b, make_token(new_id("user"))) as other:  # another user: own budget
            await recv_json(other)
            assert (await ping(other, 1))["type"] == "pong"


async def test_the_connections_of_a_killed_gateway_expire_instead_of_leaking(
    replicas: Replicas, make_token: TokenFactory
) -> None:
    a, b = await asyncio.to_thread(replicas, 2, max_connections_per_user=2)
    token = make_token(new_id("user"))
    async with connect(a, token) as a1, connect(a, token) as a2:
        await recv_json(a1)
        await recv_json(a2)
        assert await refused_status(b, token) == 429
        a.signal(signal.SIGKILL)  # no drain, no release: only the leases' expiry frees the slots
        await asyncio.to_thread(a.wait, 10)
        async with asyncio.timeout(LEASE_S * 4):
            while await refused_status(b, token) == 429:
                await asyncio.sleep(0.2)
    async with connect(b, token) as b1, connect(b, token) as b2:
        await recv_json(b1)
        await recv_json(b2)
        assert await refused_status(b, token) == 429  # the limit itself still holds


async def test_an_unreachable_redis_degrades_to_the_per_process_limit(
    start_gateway: GatewayFactory, make_token: TokenFactory
) -> None:
    with socket.socket() as probe:  # a port nothing listens on once the probe is closed
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    server = await start_gateway(
        redis_url=f"redis://127.0.0.1:{closed_port}/0", max_connections_per_user=2, rate_limit_messages=3
    )
    token = make_token(new_id("user"))
    async with open_ws(server, token) as one, open_ws(server, token) as two:
        await recv_json(one)
        await recv_json(two)
        with pytest.raises(InvalidStatus) as refused:
            async with open_ws(server, token):
                pass
        assert refused.value.response.status_code == 429
        replies = [await ping(one, n) for n in range(4)]
        assert [r["type"] for r in replies] == ["pong"] * 3 + ["error"]
    assert server.stats.limits_redis_failures > 0
    assert server.stats.limits_degraded == 1


@pytest.mark.parametrize("user", ["plain_user_0123456789", "brace{user}_0123456789", "{", "a%7Bb}{"])
def test_every_key_of_one_user_lies_on_one_cluster_slot_whatever_the_id(user: str) -> None:
    keys = limit_keys("runwire", user)
    assert len({key_slot(key.encode()) for key in keys}) == 1
    # Ids that differ only in what the escape produces keep distinct keys.
    assert set(limit_keys("runwire", user)).isdisjoint(limit_keys("runwire", user + "}"))


async def test_a_user_id_with_braces_is_limited_on_its_own_slot_in_redis(
    replicas: Replicas, make_token: TokenFactory, redis_url: str, prefix: str
) -> None:
    [a] = await asyncio.to_thread(replicas, 1, max_connections_per_user=1)
    user = "tenant{x}_user_0123456789"
    async with connect(a, make_token(user)) as ws:
        await recv_json(ws)
        assert await refused_status(a, make_token(user)) == 429
        assert await refused_status(a, make_token("tenant{y}_user_0123456789")) is None
        client = aioredis.from_url(redis_url)
        try:
            keys = [key.decode() async for key in client.scan_iter(match=f"{prefix}:*")]
        finally:
            await client.aclose()
        x_tag, y_tag = (f"{prefix}:{{tenant%7B{c}%7D_user_0123456789}}:" for c in "xy")
        assert any(key.startswith(x_tag) for key in keys)
        assert all(key.startswith((x_tag, y_tag)) for key in keys)
