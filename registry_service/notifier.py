"""Telling the owner of a dead run: one ``agent_death`` event through the bridge.

The registry never emitted the run's other events, so it publishes with
``seq = 0`` and the bridge assigns the run's next seq; the bridge also drops
anything published after a run's terminal event, so a notice sent twice (a
rare race between replicas, see :mod:`registry_service.death`) still reaches
the owner once. The event is published under a context minted for the
owner alone (``user_id``, ``tenant_id``, the run's thread and id): the
bridge routes it to that user's subscribers and nobody else's.

The payload is :func:`runwire_common.deaths.death_payload`'s, as the
execution service sends it. An end notice (see :mod:`registry_service.death`)
carries its terminal event as the run's caller built it, type and payload
JSON, and is published as it is, never parsed here: the owner receives the
very event the caller would have published, with the bridge's next seq.
"""

from __future__ import annotations

import json
from typing import Protocol

from registry_service.death import DeathNotice
from runwire.bridge.v1 import bridge_pb2, bridge_pb2_grpc
from runwire.common.v1 import context_pb2, event_pb2
from runwire_common.attestation import ContextAttestor
from runwire_common.deaths import death_payload
from runwire_common.ids import new_id
from runwire_common.names import AGENT_DEATH
from runwire_common.timeutil import to_timestamp

BRIDGE_SERVICE_NAME = bridge_pb2.DESCRIPTOR.services_by_name["BridgeService"].full_name

NO_HEARTBEAT_CAUSE = "no_heartbeat"
NO_HEARTBEAT_USER_MESSAGE = (
    "The worker running your run stopped responding, so the run was stopped. "
    "Its partial work, if any, was not saved."
)

# How long the minted context lives: one Publish call, with generous slack for clock skew.
CONTEXT_TTL_S = 120.0


class DeathNotifier(Protocol):
    """Sends one notice; returns normally once the bridge has it, raises otherwise."""

    async def notify(self, notice: DeathNotice) -> None: ...


def death_event(notice: DeathNotice) -> event_pb2.RunEvent:
    """The event a notice delivers: its stored terminal event, or ``agent_death`` (``no_heartbeat``)."""
    if notice.end_event_type is not None and notice.end_payload_json is not None:
        event_type, payload_json = notice.end_event_type, notice.end_payload_json
    else:
        payload = death_payload(cause=NO_HEARTBEAT_CAUSE, message=NO_HEARTBEAT_USER_MESSAGE)
        event_type = AGENT_DEATH
        payload_json = json.dumps(payload, separators=(",", ":"), ensure_ascii=False)
    event = event_pb2.RunEvent(
        seq=0,
        type=event_type,
        run_id=notice.run_id,
        thread_id=notice.thread_id,
        user_id=notice.user_id,
        tenant_id=notice.tenant_id,
        agent=notice.agent,
        payload_json=payload_json,
    )
    stamp = to_timestamp(notice.died_at)
    if stamp is not None:
        event.timestamp.CopyFrom(stamp)
    return event


class BridgeDeathNotifier:
    """Publishes notices to the bridge over a channel the composition root owns."""

    def __init__(
        self,
        stub: bridge_pb2_grpc.BridgeServiceAsyncStub,
        *,
        attestor: ContextAttestor,
        call_timeout_s: float,
    ) -> None:
        self._stub = stub
        self._attestor = attestor
        self._timeout = call_timeout_s

    def owner_context(self, notice: DeathNotice) -> context_pb2.UserContext:
        ctx = context_pb2.UserContext(
            user_id=notice.user_id,
            tenant_id=notice.tenant_id,
            thread_id=notice.thread_id,
            run_id=notice.run_id,
            request_id=new_id("req"),
        )
        return self._attestor.mint(ctx, ttl_s=CONTEXT_TTL_S)

    async def notify(self, notice: DeathNotice) -> None:
        request = bridge_pb2.PublishRequest(
            user_context=self.owner_context(notice), events=[death_event(notice)]
        )
        # An ignored event (empty event_id) means the run already has its
        # terminal event: the owner has been told, which is all we need.
        await self._stub.Publish(request, timeout=self._timeout)
