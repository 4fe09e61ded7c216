"""Delivery-aware readiness: a bridge whose Redis subscription stalls stops being ready, and recovers.

A real ``python -m bridge_service`` process on a ``redis-server`` of the
test's own, reached through a proxy that can stall the Pub/Sub connections
while commands keep working (the failure of Centrifugo's issue #1189: health
green while deliveries were silently lost).
"""

from __future__ import annotations

import asyncio
import os
import re
import socket
import urllib.request
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
import redis.asyncio as aioredis
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bridge_service.canary import CANARY_USER_PREFIX, canary_users, is_canary_user
from bridge_service.servicer import SERVICE_NAME
from runwire.bridge.v1 import bridge_pb2, bridge_pb2_grpc
from runwire_common.context import id_problem
from tests.bridge_service.harness import ContextFactory, event, read_events, read_until_replay_complete
from tests.bridge_service.own_redis import own_redis_server
from tests.bridge_service.process import spawn_bridge
from tests.bridge_service.stall_proxy import StallProxy

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
FLIP_TIMEOUT_S = 20.0


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class BridgeProcess:
    process: asyncio.subprocess.Process
    address: str
    metrics_port: int
    redis_url: str  # the server itself, not the proxy

    async def health(self, service: str) -> int:
        async with grpc.aio.insecure_channel(self.address) as channel:
            reply = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=2
            )
        return int(reply.status)

    async def wait_for(self, status: int, service: str = SERVICE_NAME) -> None:
        async with asyncio.timeout(FLIP_TIMEOUT_S):
            while await self.health(service) != status:
                assert self.process.returncode is None, "the bridge exited"
                await asyncio.sleep(0.1)

    async def metric(self, name: str) -> float:
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        text = await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=5).read().decode())
        match = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
        assert match is not None, f"{name} is not exported"
        return float(match.group(1))


@pytest.fixture
async def stall_proxy(tmp_path: Path) -> AsyncIterator[tuple[StallProxy, str]]:
    with own_redis_server(tmp_path) as redis_url:
        port = int(redis_url.rsplit(":", 1)[1].split("/")[0])
        proxy = StallProxy(port)
        await proxy.start()
        try:
            yield proxy, redis_url
        finally:
            await proxy.close()


@pytest.fixture
async def bridge_process(
    tmp_path: Path, attestation_key_spec: str, stall_proxy: tuple[StallProxy, str]
) -> AsyncIterator[BridgeProcess]:
    proxy, redis_url = stall_proxy
    ready = tmp_path / "ready.json"
    metrics_port = _free_port()
    env = {
        **os.environ,
        "RUNWIRE_ATTESTATION_KEYS": attestation_key_spec,
        "RUNWIRE_BRIDGE_PORT": "0",
        "RUNWIRE_BRIDGE_READY_FILE": str(ready),
        "RUNWIRE_BRIDGE_METRICS_PORT": str(metrics_port),
        "RUNWIRE_BRIDGE_BACKEND": "redis",
        "RUNWIRE_BRIDGE_REDIS_URL": proxy.url,
        "RUNWIRE_BRIDGE_REDIS_KEY_PREFIX": "rwcanary",
        "RUNWIRE_BRIDGE_CANARY_INTERVAL_S": "0.2",
        "RUNWIRE_BRIDGE_CANARY_TIMEOUT_S": "1",
    }
    process, port = await spawn_bridge(env, ready)
    try:
        yield BridgeProcess(process, f"127.0.0.1:{port}", metrics_port, redis_url)
    finally:
        if process.returncode is None:
            process.terminate()
            try:
                async with asyncio.timeout(20):
                    await process.wait()
            except TimeoutError:
                process.kill()
                await process.wait()


async def test_a_stalled_subscription_turns_readiness_not_serving_and_it_recovers(
    bridge_process: BridgeProcess, stall_proxy: tuple[StallProxy, str]
) -> None:
    proxy, _ = stall_proxy
    bridge = bridge_process
    async with asyncio.timeout(FLIP_TIMEOUT_S):
        while await bridge.metric("runwire_bridge_canary_latency_seconds") <= 0:
            await asyncio.sleep(0.1)  # the first canaries went round
    assert proxy.pubsub_connections >= 1
    assert await bridge.health(SERVICE_NAME) == SERVING
    assert await bridge.metric("runwire_bridge_canary_failures_total") == 0

    proxy.stall()
    await bridge.wait_for(NOT_SERVING)
    assert await bridge.health("") == SERVING  # the process is alive: liveness must not restart it
    assert await bridge.metric("runwire_bridge_canary_failures_total") >= 1
    assert await bridge.metric("runwire_bridge_canary_ready") == 0

    proxy.release()
    await bridge.wait_for(SERVING)
    assert await bridge.metric("runwire_bridge_canary_ready") == 1


async def test_canaries_reach_no_user_and_keep_next_to_nothing_in_redis(
    bridge_process: BridgeProcess, make_context: ContextFactory
) -> None:
    bridge = bridge_process
    ctx = make_context()
    async with grpc.aio.insecure_channel(bridge.address) as channel:
        stub = bridge_pb2_grpc.BridgeServiceStub(channel)
        call = stub.Subscribe(bridge_pb2.SubscribeRequest(user_context=ctx))
        await read_until_replay_complete(call)
        before = await bridge.metric("runwire_bridge_canary_latency_seconds")
        rounds = 0
        async with asyncio.timeout(FLIP_TIMEOUT_S):
            while rounds < 5:  # several rounds of canaries while the user listens
                latency = await bridge.metric("runwire_bridge_canary_latency_seconds")
                rounds += latency != before
                before = latency
                await asyncio.sleep(0.2)
        published = await stub.Publish(
            bridge_pb2.PublishRequest(user_context=ctx, events=[event(ctx)]), timeout=5
        )
        # The first thing the user gets after the canaries is their own event.
        [received] = await read_events(call, 1)
        assert received.event_id == published.event_ids[0]
        call.cancel()
    client = aioredis.Redis.from_url(bridge.redis_url)
    try:
        keys = sorted([key.decode() async for key in client.scan_iter(match="rwcanary:*")])
        canary_keys = [key for key in keys if CANARY_USER_PREFIX in key]
        assert canary_keys
        assert sorted(set(keys) - set(canary_keys)) == sorted(
            f"rwcanary:{{{ctx.user_id}}}:{name}" for name in ("events", "meta", "runs", "run_order")
        )
        for key in canary_keys:
            ttl = await client.pttl(key)
            assert 0 < ttl <= 600_000  # gone soon after the replica is
            if key.endswith(":events"):
                assert await client.xlen(key) == 1  # only the newest canary is kept
            if key.endswith(":runs"):
                assert await client.hlen(key) == 1
    finally:
        await client.aclose()


def test_canary_users_are_ids_no_token_or_context_can_carry() -> None:
    users = canary_users("a1b2c3", 8, lambda user: f"runwire:{{{user}}}:live".encode())
    assert len(set(users)) == 8
    for user in users:
        assert is_canary_user(user)
        assert id_problem(user) is not None  # refused by the gateway (JWT sub) and every servicer


async def test_a_context_for_a_canary_user_is_refused_by_the_bridge(
    bridge_process: BridgeProcess, make_context: ContextFactory
) -> None:
    [user] = canary_users("a1b2c3", 1, lambda user: user.encode())
    ctx = make_context(user)
    async with grpc.aio.insecure_channel(bridge_process.address) as channel:
        stub = bridge_pb2_grpc.BridgeServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.Publish(bridge_pb2.PublishRequest(user_context=ctx, events=[event(ctx)]), timeout=5)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        call = stub.Subscribe(bridge_pb2.SubscribeRequest(user_context=ctx))
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call.read()
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
