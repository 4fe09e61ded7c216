"""A database that cannot be reached makes calls UNAVAILABLE (retryable), not INTERNAL."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from pydantic import SecretStr

from registry_service.app import running_service
from registry_service.settings import RegistrySettings
from runwire.registry.v1 import registry_pb2, registry_pb2_grpc
from runwire_common.ids import new_id
from tests.conftest import ContextFactory
from tests.registry_service.support import rpc_error


@pytest.fixture
def unreachable_database_url(backend: str, tmp_path: Path) -> str:
    if backend == "sqlite":
        # A directory where the database file should be: SQLite cannot open it.
        (tmp_path / "registry.db").mkdir()
        return f"sqlite+aiosqlite:///{tmp_path / 'registry.db'}"
    return "postgresql+asyncpg://postgres@127.0.0.1:1/nowhere"


async def test_calls_are_unavailable_while_the_database_is_unreachable(
    unreachable_database_url: str, attestation_key_spec: str, make_context: ContextFactory
) -> None:
    settings = RegistrySettings(
        attestation_keys=SecretStr(attestation_key_spec),
        database_url=unreachable_database_url,
        migrate_on_start=False,
        grace_period_s=1,
    )
    async with (
        running_service(settings) as server,
        grpc.aio.insecure_channel(server.address) as channel,
    ):
        stub = registry_pb2_grpc.RegistryServiceStub(channel)
        ctx = make_context(new_id("user"), thread_id=new_id("thread"), run_id=new_id("run"))

        got = await rpc_error(stub.GetRun(registry_pb2.GetRunRequest(user_context=ctx), timeout=10))
        created = await rpc_error(
            stub.CreateRun(registry_pb2.CreateRunRequest(user_context=ctx, agent="scripted"), timeout=10)
        )

    assert got.code() == created.code() == grpc.StatusCode.UNAVAILABLE
    assert "database is unavailable" in (got.details() or "")
