"""The gateway's Prometheus endpoint: connections, deliveries, lag, blocked events."""

from __future__ import annotations

import asyncio
import urllib.request

from tests.gateway import fakes
from tests.gateway.conftest import GatewayFactory, TokenFactory, open_ws, recv_json
from tests.gateway.test_events import ALICE, BOB
from tests.registry_service.test_metrics import free_port


def scrape(port: int) -> str:
    return urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()


async def test_the_metrics_endpoint_counts_deliveries_lag_and_blocked_foreign_events(
    start_gateway: GatewayFactory, make_token: TokenFactory
) -> None:
    bridge = fakes.ScriptedBridge(
        [
            (
                [
                    fakes.replay_complete(resume_after="5-0"),
                    fakes.item(fakes.event(BOB, "5-1")),
                    fakes.item(fakes.event(ALICE, "5-2")),
                ],
                None,
            )
        ]
    )
    port = free_port()
    async with fakes.serving(bridge) as target:
        server = await start_gateway(bridge_target=target, metrics_port=port)
        async with open_ws(server, make_token(ALICE)) as ws:
            await recv_json(ws)
            assert (await recv_json(ws))["event_id"] == "5-2"
            body = await asyncio.to_thread(scrape, port)
    assert "runwire_gateway_connections 1.0" in body
    assert "runwire_gateway_events_delivered_total 1.0" in body
    assert "runwire_gateway_events_blocked_owner_mismatch_total 1.0" in body
    assert "runwire_gateway_delivery_lag_seconds_count 1.0" in body
    assert "runwire_gateway_users_subscribed 1.0" in body
    assert "runwire_gateway_fabric_streams 1.0" in body
    for counter in ("fabric_credits_granted", "partials_coalesced", "backlog_resumes"):
        assert f"runwire_gateway_{counter}_total 0.0" in body
