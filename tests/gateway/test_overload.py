"""Overload: run.start beyond the gateway's in-flight bound is refused at once, not queued."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import grpc

from runwire.common.v1 import run_pb2
from runwire.execution.v1 import execution_pb2, execution_pb2_grpc
from tests.gateway import fakes
from tests.gateway.conftest import GatewayFactory, TokenFactory, open_ws, recv_json
from tests.gateway.test_events import ALICE, BOB


class SlowExecution(execution_pb2_grpc.ExecutionServiceServicer):
    """Holds every StartRun until ``release`` is set."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.started = 0

    async def StartRun(  # type: ignore[override]
        self, request: execution_pb2.StartRunRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> execution_pb2.StartRunResponse:
        self.started += 1
        await self.release.wait()
        run = run_pb2.Run(
            run_id=f"run_{self.started:032d}", thread_id=request.user_context.thread_id, agent=request.agent
        )
        return execution_pb2.StartRunResponse(run=run)


def start(frame_id: str) -> str:
    return json.dumps({"type": "run.start", "id": frame_id, "agent": "scripted", "input": {}})


async def test_a_run_start_beyond_the_gateways_in_flight_bound_is_resource_exhausted_at_once(
    start_gateway: GatewayFactory, make_token: TokenFactory
) -> None:
    execution = SlowExecution()
    async with fakes.serving(execution, execution_pb2_grpc.add_ExecutionServiceServicer_to_server) as target:
        server = await start_gateway(execution_target=target, max_start_runs_in_flight=1)
        async with open_ws(server, make_token(ALICE)) as alice, open_ws(server, make_token(BOB)) as bob:
            await recv_json(alice)
            await recv_json(bob)
            await alice.send(start("a"))
            async with asyncio.timeout(5):
                while execution.started == 0:
                    await asyncio.sleep(0.01)
            await bob.send(start("b"))
            refused = await recv_json(bob, timeout=1)
            assert (refused["type"], refused["id"], refused["code"]) == ("error", "b", "resource_exhausted")
            assert "gateway overloaded" in refused["message"]
            execution.release.set()
            accepted = await recv_json(alice)
            assert (accepted["type"], accepted["id"]) == ("run.accepted", "a")
            await bob.send(start("b2"))  # the slot is free again
            assert (await recv_json(bob))["type"] == "run.accepted"
        assert server.stats.start_runs_refused_overload == 1
