"""A database that cannot be reached makes calls UNAVAILABLE (retryable), not INTERNAL; connections the
server closes (a failover, ``pg_terminate_backend``) are replaced, and a read they cut short is read again."""

from __future__ import annotations

import asyncio
from pathlib import Path

import asyncpg  # type: ignore[import-untyped]
import grpc
import pytest
from pydantic import SecretStr
from sqlalchemy.engine import Connection

from registry_service.app import running_service
from registry_service.database import open_database
from registry_service.settings import DatabaseSettings, RegistrySettings
from runwire.registry.v1 import registry_pb2, registry_pb2_grpc
from runwire_common.errors import Unavailable
from runwire_common.ids import new_id
from tests.conftest import ContextFactory
from tests.registry_service.conftest import asyncpg_dsn
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


async def _terminate_backends(url: str) -> int:
    """``pg_terminate_backend`` for every other connection to ``url``'s database."""
    admin = await asyncpg.connect(asyncpg_dsn(url))
    try:
        rows = await admin.fetch(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
    finally:
        await admin.close()
    return sum(1 for row in rows if row[0])


def _sleep_then_one(connection: Connection) -> int:
    return int(connection.exec_driver_sql("SELECT 1 FROM pg_sleep(0.5)").scalar_one())


async def test_pooled_connections_the_server_closed_are_replaced_not_failed(
    postgres_registry_url: str,
) -> None:
    async with open_database(DatabaseSettings(database_url=SecretStr(postgres_registry_url))) as database:
        # Several pooled connections, all idle once these return.
        assert await asyncio.gather(*(database.read(_sleep_then_one) for _ in range(5))) == [1] * 5
        assert await _terminate_backends(postgres_registry_url) >= 5
        await asyncio.sleep(0.2)  # the driver reads each connection's end meanwhile

        one = await asyncio.gather(
            *(database.read(_sleep_then_one) for _ in range(5)),
            *(database.write_statement(_sleep_then_one) for _ in range(5)),
        )
        assert one == [1] * 10


async def test_a_connection_closed_under_a_call_reads_again_and_fails_a_write_as_unavailable(
    postgres_registry_url: str,
) -> None:
    async with open_database(DatabaseSettings(database_url=SecretStr(postgres_registry_url))) as database:
        reading = asyncio.ensure_future(database.read(_sleep_then_one))
        writing = asyncio.ensure_future(database.write(_sleep_then_one))
        await asyncio.sleep(0.2)
        assert await _terminate_backends(postgres_registry_url) >= 2

        assert await reading == 1  # read again on a fresh connection
        with pytest.raises(Unavailable):  # a write may have happened: the caller decides
            await writing
        assert await database.write(_sleep_then_one) == 1
