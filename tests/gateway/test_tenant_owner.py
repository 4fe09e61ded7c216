"""The gateway's last owner check compares (tenant_id, user_id): one sub in another tenant is another user."""

from __future__ import annotations

import json

from gateway.outbox import EventFrame
from gateway.stats import GatewayStats
from runwire_common.attestation import ContextAttestor
from tests.gateway import fakes

ALICE = "user_alice_0123456789"
ACME, GLOBEX = "tenant_acme", "tenant_globex"


def _event(event_id: str, tenant_id: str) -> EventFrame:
    event = fakes.event(ALICE, event_id)
    event.tenant_id = tenant_id
    return EventFrame(event)


async def test_an_event_of_the_same_sub_in_another_tenant_is_dropped_and_counted(
    attestor: ContextAttestor,
) -> None:
    socket = fakes.RecordingSocket()
    stats = GatewayStats()
    async with fakes.detached_sink(socket, stats, attestor, user_id=ALICE, tenant_id=ACME) as sink:
        sink.from_feed([_event("1-1", GLOBEX), _event("1-2", ""), _event("1-3", ACME)], "")
        await fakes.written(sink)

    assert [json.loads(frame)["event_id"] for frame in socket.frames] == ["1-3"]
    assert stats.events_blocked_owner_mismatch == 2
