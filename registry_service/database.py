"""The process's database engines and the per-call transactions made from them.

Writes that read before they write (admission counts live runs, then
inserts) must not interleave. PostgreSQL gets that from a row lock (see
:mod:`registry_service.admission`). SQLite has one lock for the whole file,
and by default ``sqlite3`` starts transactions lazily, so two writers can
both read, then collide on the upgrade to a write lock with an immediate
"database is locked". Here SQLAlchemy emits the ``BEGIN`` itself: write
transactions begin ``IMMEDIATE`` (take the write lock first, waiting up to
the busy timeout), read transactions begin ``DEFERRED``. WAL journaling lets
readers go on while a writer holds the lock.

The RPC hot paths are plain functions of one synchronous SQLAlchemy Core
``Connection`` (:meth:`Database.write` / :meth:`Database.read` run one such
function as one transaction):

* on PostgreSQL through ``AsyncConnection.run_sync`` (asyncpg, no thread);
* on SQLite on a dedicated thread with the stdlib driver: one hand-off per
  transaction instead of four per statement through ``aiosqlite``, and all
  of this process's write transactions on one thread, so they queue in
  order instead of sleeping in SQLite's busy handler. The write transactions
  that queue up while one runs are committed together, each in a savepoint
  of its own (:class:`_SqliteWriter`).

A call whose only change is one conditional statement (a transition of
an unqueued run, a heartbeat) goes through :meth:`Database.write_statement`:
on PostgreSQL in autocommit mode, which saves the ``BEGIN`` and ``COMMIT``
round trips — the statement is atomic on its own; on SQLite as
:meth:`Database.write`.

:meth:`Database.writing` / :meth:`Database.reading` (ORM sessions on the
asyncio engine) serve the death sweeper and the migrations.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager, contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

import asyncpg.exceptions as asyncpg_errors  # type: ignore[import-untyped]
from pydantic import SecretStr
from sqlalchemy import Engine, event, exc
from sqlalchemy import create_engine as create_sync_engine
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.pool import ConnectionPoolEntry

from registry_service.settings import DatabaseSettings
from runwire_common.errors import Unavailable

log = logging.getLogger("runwire.registry.database")

T = TypeVar("T")

# Execution option marking an engine whose transactions take SQLite's write lock up front.
SQLITE_WRITE_OPTION = "runwire_sqlite_write"
# PostgreSQL pool: enough connections for a busy replica without crowding the server. No
# pre-ping round trip per checkout: a pooled connection the server closed (a restart, a failover,
# pg_terminate_backend) is already known closed to the driver and is replaced at checkout
# (_replace_closed); one that dies during a call is reported as UNAVAILABLE (retryable) by
# _outages_unavailable and its disconnect invalidates the pool, so the retry gets a fresh one.
# All 20 are kept once opened (opened on demand, as before): "overflow" connections were closed
# on return whenever more than 10 calls overlapped, and each replacement paid for a connect,
# an SSL probe and re-preparing every statement.
POSTGRES_POOL_SIZE = 20
POSTGRES_MAX_OVERFLOW = 0
# SQLite threads that serve read transactions (writes have one thread of their own).
SQLITE_READ_THREADS = 2
# Most write transactions the SQLite writer commits as one.
SQLITE_WRITE_BATCH = 64
SQLITE_PRAGMAS = (
    "PRAGMA journal_mode=WAL",
    "PRAGMA synchronous=NORMAL",  # WAL: durable at checkpoints, never corrupt
    "PRAGMA temp_store=MEMORY",
    "PRAGMA cache_size=-16384",  # 16 MiB of page cache per connection
)


def _sqlite_connect(dbapi_connection: Any, connection_record: ConnectionPoolEntry) -> None:
    # Stop sqlite3 from emitting BEGIN on its own; _sqlite_begin does it.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        for pragma in SQLITE_PRAGMAS:
            cursor.execute(pragma)
    finally:
        cursor.close()


def _sqlite_begin(conn: Connection) -> None:
    immediate = bool(conn.get_execution_options().get(SQLITE_WRITE_OPTION))
    conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN DEFERRED")


def _replace_closed(dbapi_connection: Any, connection_record: ConnectionPoolEntry, proxy: Any) -> None:
    """Checkout: a pooled connection the server has closed meanwhile is replaced, not handed out.

    The driver learns of the close as it happens (the socket's end, read by the
    event loop), so this costs no round trip, unlike a pre-ping. The pool
    answers :class:`~sqlalchemy.exc.DisconnectionError` by discarding the
    connection and checking out another.
    """
    if dbapi_connection.driver_connection.is_closed():
        raise exc.DisconnectionError("the server closed this pooled connection")


def create_engine(settings: DatabaseSettings) -> AsyncEngine:
    """An engine for ``settings.database_url``, configured for its backend."""
    url = make_url(settings.database_url.get_secret_value())
    if url.get_backend_name() != "sqlite":
        engine = create_async_engine(url, pool_size=POSTGRES_POOL_SIZE, max_overflow=POSTGRES_MAX_OVERFLOW)
        event.listen(engine.sync_engine, "checkout", _replace_closed)
        return engine
    if url.database:
        Path(url.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    engine = create_async_engine(url, connect_args={"timeout": settings.sqlite_busy_timeout_s})
    event.listen(engine.sync_engine, "connect", _sqlite_connect)
    event.listen(engine.sync_engine, "begin", _sqlite_begin)
    return engine


def create_sqlite_thread_engine(settings: DatabaseSettings) -> Engine:
    """The synchronous (stdlib ``sqlite3``) engine of the same file, for :class:`_SqliteThreads`."""
    url = make_url(settings.database_url.get_secret_value()).set(drivername="sqlite+pysqlite")
    engine = create_sync_engine(
        url,
        connect_args={"timeout": settings.sqlite_busy_timeout_s, "check_same_thread": False},
        pool_size=1 + SQLITE_READ_THREADS,
        max_overflow=0,
    )
    event.listen(engine, "connect", _sqlite_connect)
    event.listen(engine, "begin", _sqlite_begin)
    return engine


@contextmanager
def _outages_unavailable() -> Iterator[None]:
    """Report a database that cannot be reached (or stays locked) as ``UNAVAILABLE``: retryable.

    A lost connection (the server closed it under the call) is :class:`ConnectionLost`.
    """
    try:
        yield
    except exc.DBAPIError as error:
        # A connection closed under the call (asyncpg reports "closed in the middle of operation"
        # as a plain DBAPIError), or one whose close the driver had only half read.
        if error.connection_invalidated or _lost_connection(error):
            log.warning("database connection lost", exc_info=True)
            raise ConnectionLost("the run registry's database connection was lost; retry") from error
        if not isinstance(error, exc.OperationalError | exc.InterfaceError):
            raise
        log.exception("database unavailable")
        raise Unavailable("the run registry's database is unavailable; retry later") from error
    except (exc.TimeoutError, OSError) as error:
        log.exception("database unavailable")
        raise Unavailable("the run registry's database is unavailable; retry later") from error


class ConnectionLost(Unavailable):
    """The call's connection was closed under it (the server itself may be fine)."""


def _lost_connection(error: exc.DBAPIError) -> bool:
    """Whether the driver's error says the connection is gone (asyncpg: closed, or shutting down)."""
    cause = error.orig.__cause__ if error.orig is not None else None
    return isinstance(cause, asyncpg_errors.ConnectionDoesNotExistError | asyncpg_errors.InternalClientError)


@dataclass
class _WriteJob(Generic[T]):
    """One write transaction's function, the caller's future, and (once run) its outcome."""

    work: Callable[[Connection], T]
    future: asyncio.Future[T]
    result: Any = None
    error: BaseException | None = None


def _deliver(batch: list[_WriteJob[Any]]) -> None:
    """Hand the outcomes of ``batch`` to their callers: one wake-up per event loop."""
    by_loop: dict[asyncio.AbstractEventLoop, list[_WriteJob[Any]]] = {}
    for job in batch:
        by_loop.setdefault(job.future.get_loop(), []).append(job)
    for loop, jobs in by_loop.items():
        with suppress(RuntimeError):  # the loop is closed: nobody waits any more
            loop.call_soon_threadsafe(_settle, jobs)


def _settle(jobs: list[_WriteJob[Any]]) -> None:
    for job in jobs:
        if job.future.done():  # the caller was cancelled
            continue
        if job.error is not None:
            job.future.set_exception(job.error)
        else:
            job.future.set_result(job.result)


class _SqliteWriter:
    """SQLite write transactions on one thread, the ones waiting together committed as one.

    Every write transaction of the process queues here. The thread takes
    whatever has queued up (at most :data:`SQLITE_WRITE_BATCH`) and runs it in
    one ``BEGIN IMMEDIATE`` … ``COMMIT``. Results are handed back only after
    the commit. A function that raises rolls back only its own changes and
    gets its own exception: the batch is first run without savepoints, and
    only when a function raises is it rolled back and run again with each
    function inside a savepoint of its own (see :meth:`_commit_together`); a
    commit that fails there fails every function of the batch. One commit and
    one wake-up of the event loop per batch instead of per call is what this
    buys under load; a lone write runs without a savepoint.
    """

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._jobs: queue.SimpleQueue[_WriteJob[Any] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._serve, name="registry-sqlite-write", daemon=True)
        self._thread.start()

    async def run(self, work: Callable[[Connection], T]) -> T:
        loop = asyncio.get_running_loop()
        job: _WriteJob[T] = _WriteJob(work, loop.create_future())
        self._jobs.put(job)
        return await job.future

    def close(self) -> None:
        self._jobs.put(None)
        self._thread.join()

    def _serve(self) -> None:
        while (job := self._jobs.get()) is not None:
            batch = [job]
            while len(batch) < SQLITE_WRITE_BATCH:
                try:
                    queued = self._jobs.get_nowait()
                except queue.Empty:
                    break
                if queued is None:
                    self._jobs.put(None)  # closing: after this batch
                    break
                batch.append(queued)
            self._commit(batch)
            _deliver(batch)

    def _commit(self, batch: list[_WriteJob[Any]]) -> None:
        if len(batch) > 1 and self._commit_together(batch):
            return
        try:
            with self._engine.begin() as connection:
                if len(batch) == 1:
                    batch[0].result = batch[0].work(connection)
                    return
                for job in batch:
                    savepoint = connection.begin_nested()
                    try:
                        job.result = job.work(connection)
                    except Exception as exc:  # noqa: BLE001 - this call's own failure
                        savepoint.rollback()
                        job.error = exc
                    else:
                        savepoint.commit()
        except BaseException as exc:  # noqa: BLE001 - begin or commit failed: nothing was stored
            for job in batch:
                job.error = exc

    def _commit_together(self, batch: list[_WriteJob[Any]]) -> bool:
        """Run ``batch`` in one transaction without savepoints; whether every function succeeded.

        Savepoints cost two statements per function and are needed only when
        one fails, which is rare (a refusal, a conflict). When one raises, the
        whole transaction is rolled back, nothing is kept and ``False`` sends
        the batch to :meth:`_commit`'s savepoints, which run every function
        again from the same starting point, so each still gets its own outcome.
        """
        results: list[Any] = []
        try:
            with self._engine.begin() as connection:
                for job in batch:
                    results.append(job.work(connection))
        except BaseException:  # noqa: BLE001 - a function's or the commit's failure: again, with savepoints
            return False
        for job, result in zip(batch, results, strict=True):
            job.result = result
        return True


class _SqliteThreads:
    """Runs SQLite transactions on threads: one for every write (:class:`_SqliteWriter`), a few for reads."""

    def __init__(self, engine: Engine) -> None:
        self._reader = engine
        self._writer = _SqliteWriter(engine.execution_options(**{SQLITE_WRITE_OPTION: True}))
        self._read_threads = ThreadPoolExecutor(
            SQLITE_READ_THREADS, thread_name_prefix="registry-sqlite-read"
        )

    @staticmethod
    def _transaction(engine: Engine, work: Callable[[Connection], T]) -> T:
        with engine.begin() as connection:
            return work(connection)

    async def run(self, work: Callable[[Connection], T], *, write: bool) -> T:
        if write:
            return await self._writer.run(work)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._read_threads, self._transaction, self._reader, work)

    def close(self) -> None:
        self._writer.close()
        self._read_threads.shutdown(wait=True)
        self._reader.dispose()


class Database:
    """One transaction per call: a function of a Core ``Connection``, or an ORM ``AsyncSession``."""

    def __init__(self, engine: AsyncEngine, *, settings: DatabaseSettings | None = None) -> None:
        self.engine = engine
        self._readers = async_sessionmaker(engine, expire_on_commit=False)
        self._writers = async_sessionmaker(self.write_engine(), expire_on_commit=False)
        self._threads: _SqliteThreads | None = None
        self._autocommit: AsyncEngine | None = None
        if engine.dialect.name != "sqlite":
            self._autocommit = engine.execution_options(isolation_level="AUTOCOMMIT")
        else:
            self._threads = _SqliteThreads(
                create_sqlite_thread_engine(
                    settings or DatabaseSettings(database_url=SecretStr(str(engine.url)))
                )
            )

    async def write(self, work: Callable[[Connection], T]) -> T:
        """Run ``work`` in one write transaction (committed if it returns, rolled back if it raises)."""
        with _outages_unavailable():
            if self._threads is not None:
                return await self._threads.run(work, write=True)
            async with self.engine.begin() as connection:
                return await connection.run_sync(work)

    async def write_statement(self, work: Callable[[Connection], T]) -> T:
        """Run ``work``, whose only change is one statement, without a transaction where that is cheaper.

        ``work`` must not rely on a transaction: it makes at most one change,
        with one conditional statement that is atomic by itself, and anything
        it reads after that only explains the outcome. PostgreSQL runs it in
        autocommit mode (no ``BEGIN``/``COMMIT`` round trips); SQLite as
        :meth:`write`.
        """
        if self._autocommit is None:
            return await self.write(work)
        with _outages_unavailable():
            async with self._autocommit.connect() as connection:
                return await connection.run_sync(work)

    async def read(self, work: Callable[[Connection], T]) -> T:
        """Run ``work`` in one read transaction; once more on a fresh connection if its connection was lost.

        Reading again is harmless, so a connection closed under the call (a
        failover, ``pg_terminate_backend``) does not fail the caller's request.
        """
        try:
            return await self._read(work)
        except ConnectionLost:
            return await self._read(work)

    async def _read(self, work: Callable[[Connection], T]) -> T:
        with _outages_unavailable():
            if self._threads is not None:
                return await self._threads.run(work, write=False)
            async with self.engine.begin() as connection:
                return await connection.run_sync(work)

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

    def close(self) -> None:
        """Stop the SQLite threads (after the last call) and close their connections."""
        if self._threads is not None:
            self._threads.close()


@asynccontextmanager
async def open_database(settings: DatabaseSettings) -> AsyncIterator[Database]:
    """Create the engine, yield a :class:`Database` over it, dispose of the engine."""
    engine = create_engine(settings)
    database = Database(engine, settings=settings)
    try:
        yield database
    finally:
        database.close()
        await engine.dispose()
