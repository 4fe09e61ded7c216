"""``python -m registry_service`` as a real process: serves, answers, drains on SIGTERM."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

import registry_service
from runwire.registry.v1 import registry_pb2, registry_pb2_grpc
from runwire_common.ids import new_id
from tests.conftest import ContextFactory
from tests.registry_service.support import rpc_error

STARTUP_TIMEOUT_S = 30.0


def _env(database_url: str, key_spec: str, **extra: str) -> dict[str, str]:
    source_root = Path(registry_service.__file__).resolve().parent.parent
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUNWIRE_")}
    env.update(
        RUNWIRE_ATTESTATION_KEYS=key_spec,
        RUNWIRE_REGISTRY_DATABASE_URL=database_url,
        PYTHONPATH=os.pathsep.join(filter(None, [str(source_root), os.environ.get("PYTHONPATH", "")])),
        **extra,
    )
    return env


def _read_port(ready_file: Path) -> int | None:
    if not ready_file.exists():
        return None
    return int(json.loads(ready_file.read_text())["port"])


async def _wait_for_port(ready_file: Path, process: asyncio.subprocess.Process) -> int:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.returncode is not None:
            raise AssertionError(f"registry exited early with {process.returncode}")
        port = await asyncio.to_thread(_read_port, ready_file)
        if port is not None:
            return port
        await asyncio.sleep(0.05)
    raise AssertionError("registry did not report ready in time")


async def test_the_service_process_migrated_by_the_job_serves_and_exits_cleanly_on_sigterm(
    database_url: str, attestation_key_spec: str, make_context: ContextFactory, tmp_path: Path
) -> None:
    migrate = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "registry_service.migrate",
        env=_env(database_url, attestation_key_spec),
        cwd=tmp_path,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    _, migrate_errors = await asyncio.wait_for(migrate.communicate(), timeout=60)
    assert migrate.returncode == 0, migrate_errors.decode()
    ready_file = tmp_path / "ready.json"
    env = _env(
        database_url,
        attestation_key_spec,
        RUNWIRE_REGISTRY_READY_FILE=str(ready_file),
        RUNWIRE_REGISTRY_MIGRATE_ON_START="false",
        RUNWIRE_REGISTRY_GRACE_PERIOD_S="2",
    )
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "registry_service",
        env=env,
        cwd=tmp_path,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        port = await _wait_for_port(ready_file, process)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            health = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service="runwire.registry.v1.RegistryService"), timeout=10
            )
            stub = registry_pb2_grpc.RegistryServiceStub(channel)
            user, thread = new_id("user"), new_id("thread")
            created = await stub.CreateRun(
                registry_pb2.CreateRunRequest(
                    user_context=make_context(user, thread_id=thread), agent="scripted"
                ),
                timeout=10,
            )
            missing = await rpc_error(
                stub.GetRun(
                    registry_pb2.GetRunRequest(user_context=make_context(user, run_id=new_id("run"))),
                    timeout=10,
                )
            )
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        assert created.run.thread_id == thread
        assert missing.code() == grpc.StatusCode.NOT_FOUND

        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), timeout=20) == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
