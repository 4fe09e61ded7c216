"""A real registry on loopback, once per database backend.

Every registry test runs twice: on a SQLite file in the test's temporary
directory and on PostgreSQL. The PostgreSQL runs share one database created
for the session (so they never touch the shared ``test`` database's tables)
and each test starts from an empty ``public`` schema that the service
migrates on start-up, exactly as in production.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import asyncpg  # type: ignore[import-untyped]
import pytest
from pydantic import SecretStr
from sqlalchemy.engine import make_url

from registry_service.settings import RegistrySettings
from runwire.common.v1 import context_pb2
from tests.registry_service.support import Registry, open_registry

T = TypeVar("T")
BACKENDS = ("sqlite", pytest.param("postgres", marks=pytest.mark.postgres))


def run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` to completion on a private loop in a worker thread.

    Sync fixtures may be set up while a test's loop is running, where
    ``asyncio.run`` is not allowed.
    """
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coro).result()


def asyncpg_dsn(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


async def _admin(url: str, *statements: str) -> None:
    connection = await asyncpg.connect(asyncpg_dsn(url))
    try:
        for statement in statements:
            await connection.execute(statement)
    finally:
        await connection.close()


@pytest.fixture(scope="session")
def postgres_registry_url(postgres_url: str) -> Iterator[str]:
    """A database of its own for this session's registry tests."""
    name = f"runwire_registry_{uuid.uuid4().hex[:12]}"
    run_sync(_admin(postgres_url, f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(postgres_url).set(database=name).render_as_string(hide_password=False)
    finally:
        run_sync(_admin(postgres_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def reset_postgres(url: str) -> None:
    run_sync(_admin(url, "DROP SCHEMA IF EXISTS public CASCADE", "CREATE SCHEMA public"))


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def database_url(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    """An empty database of ``backend``."""
    if backend == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'registry.db'}"
    url = str(request.getfixturevalue("postgres_registry_url"))
    reset_postgres(url)
    return url


@pytest.fixture
def registry_settings(database_url: str, attestation_key_spec: str) -> RegistrySettings:
    return RegistrySettings(
        attestation_keys=SecretStr(attestation_key_spec),
        database_url=database_url,
        host="127.0.0.1",
        port=0,
        grace_period_s=2,
    )


@pytest.fixture
async def registry(
    registry_settings: RegistrySettings, make_context: Callable[..., context_pb2.UserContext]
) -> AsyncIterator[Registry]:
    async with open_registry(registry_settings, make_context) as opened:
        yield opened
