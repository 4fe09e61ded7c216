"""Alembic environment for the registry schema.

Migrations always run on a connection handed over by
:mod:`registry_service.migrator` (``config.attributes["connection"]``), inside
the caller's transaction, so the service at start-up and the
``python -m registry_service.migrate`` Job share one code path and one engine
configuration (including SQLite's locking set-up).
"""

from __future__ import annotations

from alembic import context
from sqlalchemy.engine import Connection

from registry_service.models import Base


def run_migrations(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def main() -> None:
    if context.is_offline_mode():
        raise RuntimeError("offline (--sql) migrations are not supported for the registry")
    connection = context.config.attributes.get("connection")
    if not isinstance(connection, Connection):
        raise RuntimeError("run registry migrations with `python -m registry_service.migrate`")
    run_migrations(connection)


main()
