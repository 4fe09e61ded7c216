"""The bridge's Prometheus endpoint counts stored, ignored and delivered events."""

from __future__ import annotations

import asyncio
import urllib.request
from collections.abc import Callable

import grpc

from bridge_service.app import running_service
from bridge_service.settings import BridgeSettings
from runwire.bridge.v1 import bridge_pb2, bridge_pb2_grpc
from runwire.common.v1 import context_pb2
from tests.bridge_service.harness import event
from tests.registry_service.test_metrics import free_port


def scrape(port: int) -> str:
    return urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()


async def test_published_ignored_and_delivered_events_are_counted(
    attestation_key_spec: str, make_context: Callable[..., context_pb2.UserContext]
) -> None:
    port = free_port()
    settings = BridgeSettings(attestation_keys=attestation_key_spec, metrics_port=port)  # type: ignore[arg-type]
    async with running_service(settings) as server, grpc.aio.insecure_channel(server.address) as channel:
        stub = bridge_pb2_grpc.BridgeServiceStub(channel)
        ctx = make_context("user_metrics_0001")
        stream = stub.Subscribe(bridge_pb2.SubscribeRequest(user_context=ctx))
        assert (await stream.read()).WhichOneof("item") == "replay_complete"
        await stub.Publish(bridge_pb2.PublishRequest(user_context=ctx, events=[event(ctx, seq=1)]), timeout=5)
        await stub.Publish(bridge_pb2.PublishRequest(user_context=ctx, events=[event(ctx, seq=1)]), timeout=5)
        assert (await stream.read()).WhichOneof("item") == "event"
        body = await asyncio.to_thread(scrape, port)
        stream.cancel()
    assert 'runwire_bridge_events_published_total{outcome="stored"} 1.0' in body
    assert 'runwire_bridge_events_published_total{outcome="ignored"} 1.0' in body
    assert "runwire_bridge_events_delivered_total 1.0" in body
    assert "runwire_bridge_subscribers 1.0" in body
