"""Schema migrations, run programmatically with Alembic.

The scripts live in ``registry_service/migrations`` and are found relative to
this file, so migrating works from any working directory and from an
installed wheel; no ``alembic.ini`` is involved. On PostgreSQL the migration
transaction first takes an advisory lock, so replicas that all migrate on
start-up apply each revision once, one after the other.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

SCRIPT_LOCATION = Path(__file__).resolve().parent / "migrations"
# An arbitrary constant naming "the registry schema migration" among advisory locks.
MIGRATION_LOCK_KEY = 0x52554E57_52454731  # "RUNWREG1"


def alembic_config(connection: Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(SCRIPT_LOCATION))
    config.set_main_option("path_separator", "os")
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def _upgrade(connection: Connection, revision: str) -> None:
    command.upgrade(alembic_config(connection), revision)


def _downgrade(connection: Connection, revision: str) -> None:
    command.downgrade(alembic_config(connection), revision)


def _current(connection: Connection) -> str | None:
    return MigrationContext.configure(connection).get_current_revision()


async def _lock_migrations(connection: AsyncConnection) -> None:
    if connection.dialect.name == "postgresql":
        await connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY})


async def upgrade_schema(engine: AsyncEngine, *, revision: str = "head") -> None:
    """Bring the schema up to ``revision`` in one transaction."""
    async with engine.begin() as connection:
        await _lock_migrations(connection)
        await connection.run_sync(_upgrade, revision)


async def downgrade_schema(engine: AsyncEngine, *, revision: str) -> None:
    """Take the schema down to ``revision`` (``"base"`` drops every table)."""
    async with engine.begin() as connection:
        await _lock_migrations(connection)
        await connection.run_sync(_downgrade, revision)


async def current_revision(engine: AsyncEngine) -> str | None:
    async with engine.connect() as connection:
        return await connection.run_sync(_current)
