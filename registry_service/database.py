"""The process's one ``AsyncEngine`` and the per-call sessions made from it.

Writes that read before they write (admission counts live runs, then
inserts) must not interleave. PostgreSQL gets that from a row lock (see
:mod:`registry_service.admission`). SQLite has one lock for the whole file,
and by default ``sqlite3`` starts transactions lazily, so two writers can
both read, then collide on the upgrade to a write lock with an immediate
"database is locked". Here SQLAlchemy emits the ``BEGIN`` itself: sessions
from :meth:`Database.writing` begin ``IMMEDIATE`` (take the write lock first,
waiting up to the busy timeout), sessions from :meth:`Database.reading`
begin ``DEFERRED``. WAL journaling lets readers go on while a writer holds
the lock.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import event, exc
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.pool import ConnectionPoolEntry

from registry_service.settings import DatabaseSettings
from runwire_common.errors import Unavailable

log = logging.getLogger("runwire.registry.database")

# Execution option marking an engine whose transactions take SQLite's write lock up front.
SQLITE_WRITE_OPTION = "runwire_sqlite_write"


def _sqlite_connect(dbapi_connection: Any, connection_record: ConnectionPoolEntry) -> None:
    # Stop sqlite3 from emitting BEGIN on its own; _sqlite_begin does it.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
    finally:
        cursor.close()


def _sqlite_begin(conn: Connection) -> None:
    immediate = bool(conn.get_execution_options().get(SQLITE_WRITE_OPTION))
    conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN DEFERRED")


def create_engine(settings: DatabaseSettings) -> AsyncEngine:
    """An engine for ``settings.database_url``, configured for its backend."""
    url = make_url(settings.database_url)
    if url.get_backend_name() != "sqlite":
        return create_async_engine(url, pool_pre_ping=True)
    if url.database:
        Path(url.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    engine = create_async_engine(url, connect_args={"timeout": settings.sqlite_busy_timeout_s})
    event.listen(engine.sync_engine, "connect", _sqlite_connect)
    event.listen(engine.sync_engine, "begin", _sqlite_begin)
    return engine


@contextmanager
def _outages_unavailable() -> Iterator[None]:
    """Report a database that cannot be reached (or stays locked) as ``UNAVAILABLE``: retryable."""
    try:
        yield
    except (exc.OperationalError, exc.InterfaceError, exc.TimeoutError, OSError) as error:
        log.exception("database unavailable")
        raise Unavailable("the run registry's database is unavailable; retry later") from error


class Database:
    """Hands out one ``AsyncSession`` per call, in a transaction, for reading or for writing."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self._readers = async_sessionmaker(engine, expire_on_commit=False)
        self._writers = async_sessionmaker(self.write_engine(), expire_on_commit=False)

    @asynccontextmanager
    async def reading(self) -> AsyncIterator[AsyncSession]:
        with _outages_unavailable():
            async with self._readers() as session, session.begin():
                yield session

    @asynccontextmanager
    async def writing(self) -> AsyncIterator[AsyncSession]:
        """A session whose transaction commits on success and rolls back on error."""
        with _outages_unavailable():
            async with self._writers() as session, session.begin():
                yield session

    def write_engine(self) -> AsyncEngine:
        """The engine whose connections begin as writers (used by migrations)."""
        return self.engine.execution_options(**{SQLITE_WRITE_OPTION: True})


@asynccontextmanager
async def open_database(settings: DatabaseSettings) -> AsyncIterator[Database]:
    """Create the engine, yield a :class:`Database` over it, dispose of the engine."""
    engine = create_engine(settings)
    try:
        yield Database(engine)
    finally:
        await engine.dispose()
