"""One client request is one trace across the gateway, execution, registry and bridge."""

from __future__ import annotations

import json
from contextlib import AsyncExitStack
from pathlib import Path

from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from pydantic import SecretStr
from websockets.asyncio.client import connect

from bridge_service.app import running_service as running_bridge
from bridge_service.settings import BridgeSettings
from execution_service.app import running_service as running_execution
from execution_service.settings import ExecutionSettings
from gateway.app import running_gateway
from gateway.settings import GatewaySettings
from registry_service.app import running_service as running_registry
from registry_service.settings import RegistrySettings
from runwire_cli.tokens import mint_token
from runwire_common.ids import new_id
from runwire_common.telemetry import Telemetry

JWT_SECRET = "tracing-test-secret-0123456789-abcdefghijklmnop"
TERMINAL = ("agent_completed", "agent_error", "agent_cancelled", "agent_death")


async def test_a_run_started_over_websocket_is_one_trace_through_all_four_services(
    tmp_path: Path, attestation_key_spec: str
) -> None:
    exporter = InMemorySpanExporter()

    def traced(name: str) -> Telemetry:
        return Telemetry.with_exporter(name, exporter)

    keys = SecretStr(attestation_key_spec)
    async with AsyncExitStack() as stack:
        bridge = await stack.enter_async_context(
            running_bridge(BridgeSettings(attestation_keys=keys), telemetry=traced("runwire-bridge"))
        )
        registry = await stack.enter_async_context(
            running_registry(
                RegistrySettings(
                    attestation_keys=keys,
                    database_url=f"sqlite+aiosqlite:///{tmp_path / 'registry.db'}",
                    bridge_target=bridge.address,
                ),
                telemetry=traced("runwire-registry"),
            )
        )
        execution = await stack.enter_async_context(
            running_execution(
                ExecutionSettings(
                    attestation_keys=keys, registry_target=registry.address, bridge_target=bridge.address
                ),
                telemetry=traced("runwire-execution"),
            )
        )
        gateway = await stack.enter_async_context(
            running_gateway(
                GatewaySettings(
                    attestation_keys=keys,
                    jwt_secret=SecretStr(JWT_SECRET),
                    ws_port=0,
                    execution_target=execution.address,
                    registry_target=registry.address,
                    bridge_target=bridge.address,
                ),
                telemetry=traced("runwire-gateway"),
            )
        )
        me = new_id("user")
        token = mint_token(JWT_SECRET, me)
        async with connect(
            f"ws://127.0.0.1:{gateway.port}/ws", additional_headers={"Authorization": f"Bearer {token}"}
        ) as ws:
            assert json.loads(await ws.recv())["type"] == "connected"
            await ws.send(
                json.dumps(
                    {
                        "type": "run.start",
                        "id": "t1",
                        "agent": "scripted",
                        "input": {"steps": [{"think": "x"}], "result": "ok"},
                    }
                )
            )
            run_id = ""
            while True:
                frame = json.loads(await ws.recv())
                if frame.get("type") == "run.accepted":
                    run_id = frame["run"]["run_id"]
                if frame.get("type") in TERMINAL and frame.get("run_id") == run_id:
                    break

    spans = exporter.get_finished_spans()
    root = next(s for s in spans if s.name == "ws StartRun")
    trace = [s for s in spans if s.context.trace_id == root.context.trace_id]
    services = {s.resource.attributes["service.name"] for s in trace}
    assert services == {"runwire-gateway", "runwire-execution", "runwire-registry", "runwire-bridge"}, (
        services
    )
    assert root.attributes is not None and root.attributes["user_id"] == me
    server_spans = [s for s in trace if s.kind.name == "SERVER"]
    assert {s.name for s in server_spans} >= {
        "runwire.execution.v1.ExecutionService/StartRun",
        "runwire.registry.v1.RegistryService/CreateRun",
        "runwire.bridge.v1.BridgeService/PublishStream",
    }
    for span in server_spans:
        assert span.attributes is not None and span.attributes["user_id"] == me
    assert any(s.attributes and s.attributes.get("run_id") == run_id for s in server_spans)
