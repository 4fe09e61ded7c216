"""A recording ``BridgeService`` on loopback: a real gRPC server that keeps what it is sent.

It verifies each call's attestation like the real bridge, can be told to
refuse calls (``failing``), and can be started on a chosen port so a test can
bring "the bridge" back where the registry expects it.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import grpc

from runwire.bridge.v1 import bridge_pb2, bridge_pb2_grpc
from runwire.common.v1 import context_pb2, event_pb2
from runwire_common.attestation import ContextAttestor
from runwire_common.errors import Unauthenticated

Context = grpc.aio.ServicerContext[Any, Any]


@dataclass(frozen=True)
class Published:
    context: context_pb2.UserContext
    event: event_pb2.RunEvent

    @property
    def payload(self) -> dict[str, Any]:
        value = json.loads(self.event.payload_json)
        assert isinstance(value, dict)
        return value


@dataclass
class RecordingBridge(bridge_pb2_grpc.BridgeServiceServicer):
    attestor: ContextAttestor
    published: list[Published] = field(default_factory=list)
    failing: bool = False
    address: str = ""

    async def Publish(
        self, request: bridge_pb2.PublishRequest, context: Context
    ) -> bridge_pb2.PublishResponse:
        try:
            self.attestor.verify(request.user_context)
        except Unauthenticated as error:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, error.message)
        if self.failing:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "recording bridge told to fail")
        for event in request.events:
            self.published.append(Published(context=request.user_context, event=event))
        count = len(self.published)
        return bridge_pb2.PublishResponse(
            event_ids=[f"{count}-{i}" for i in range(len(request.events))], seqs=[1] * len(request.events)
        )

    async def Subscribe(
        self, request: bridge_pb2.SubscribeRequest, context: Context
    ) -> AsyncIterator[bridge_pb2.SubscribeResponse]:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "the recording bridge only records Publish")
        yield bridge_pb2.SubscribeResponse()  # type: ignore[unreachable]  # pragma: no cover - abort raises

    def counts(self) -> Counter[str]:
        """How many events were published per run."""
        return Counter(item.event.run_id for item in self.published)


@asynccontextmanager
async def recording_bridge(attestor: ContextAttestor, *, port: int = 0) -> AsyncIterator[RecordingBridge]:
    bridge = RecordingBridge(attestor=attestor)
    server = grpc.aio.server()
    bridge_pb2_grpc.add_BridgeServiceServicer_to_server(bridge, server)
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    assert bound, f"could not bind 127.0.0.1:{port}"
    bridge.address = f"127.0.0.1:{bound}"
    await server.start()
    try:
        yield bridge
    finally:
        await server.stop(None)
