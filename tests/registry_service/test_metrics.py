"""The registry's Prometheus endpoint counts what it does."""

from __future__ import annotations

import asyncio
import socket
import urllib.request
from collections.abc import Callable

import grpc
from pydantic import SecretStr

from registry_service.settings import RegistrySettings
from runwire.common.v1 import context_pb2, run_pb2
from runwire.registry.v1 import registry_pb2
from runwire_common.ids import new_id
from tests.registry_service.support import open_registry


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def scrape(port: int) -> str:
    return urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()


async def test_created_refused_and_transitioned_runs_are_counted(
    tmp_path: object, attestation_key_spec: str, make_context: Callable[..., context_pb2.UserContext]
) -> None:
    port = free_port()
    settings = RegistrySettings(
        attestation_keys=SecretStr(attestation_key_spec),
        database_url=f"sqlite+aiosqlite:///{tmp_path}/metrics.db",
        metrics_port=port,
        max_live_runs_per_user=1,
    )
    async with open_registry(settings, make_context) as registry:
        user = new_id("user")
        created = await registry.stub.CreateRun(
            registry_pb2.CreateRunRequest(
                user_context=make_context(user, thread_id=new_id("thread")), agent="scripted", input_json="{}"
            ),
            timeout=5,
        )
        try:
            await registry.stub.CreateRun(
                registry_pb2.CreateRunRequest(
                    user_context=make_context(user, thread_id=new_id("thread")),
                    agent="scripted",
                    input_json="{}",
                ),
                timeout=5,
            )
        except grpc.aio.AioRpcError as refused:
            assert refused.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        await registry.stub.TransitionRun(
            registry_pb2.TransitionRunRequest(
                user_context=make_context(user, run_id=created.run.run_id),
                to_state=run_pb2.RUN_STATE_CANCELLED,
            ),
            timeout=5,
        )
        body = await asyncio.to_thread(scrape, port)
    assert 'runwire_registry_runs_created_total{strategy="' in body
    assert 'runwire_registry_runs_refused_total{code="resource_exhausted"} 1.0' in body
    assert 'runwire_registry_transitions_total{to_state="cancelled"} 1.0' in body
