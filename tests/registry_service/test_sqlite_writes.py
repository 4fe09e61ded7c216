"""The registry's SQLite writes: the ones waiting together are committed as one transaction.

Real SQLite files; the functions written are plain SQL, so what is checked is
the batching itself: each write's own outcome, atomicity per write inside a
batch, and a failed commit failing every write of its batch.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from pydantic import SecretStr
from sqlalchemy import Engine, event, exc, text
from sqlalchemy.engine import Connection

from registry_service.database import Database, open_database
from registry_service.settings import DatabaseSettings
from runwire_common.errors import Unavailable

pytestmark = pytest.mark.asyncio

WRITES = 200


@pytest.fixture
async def database(tmp_path: Path) -> AsyncIterator[Database]:
    settings = DatabaseSettings(database_url=SecretStr(f"sqlite+aiosqlite:///{tmp_path / 'w.db'}"))
    async with open_database(settings) as opened:
        await opened.write(lambda c: c.exec_driver_sql("CREATE TABLE items (k TEXT PRIMARY KEY, v INTEGER)"))
        yield opened


@contextmanager
def counting_commits() -> Iterator[list[int]]:
    commits: list[int] = []

    def count(connection: Connection) -> None:
        commits.append(1)

    event.listen(Engine, "commit", count)
    try:
        yield commits
    finally:
        event.remove(Engine, "commit", count)


def insert(key: str, value: int) -> Callable[[Connection], int]:
    def work(connection: Connection) -> int:
        connection.execute(text("INSERT INTO items (k, v) VALUES (:k, :v)"), {"k": key, "v": value})
        return value

    return work


def insert_then_fail(key: str) -> Callable[[Connection], int]:
    def work(connection: Connection) -> int:
        connection.execute(text("INSERT INTO items (k, v) VALUES (:k, 0)"), {"k": key})
        raise Unavailable("refused after writing")  # its insert must not survive

    return work


async def stored(database: Database) -> dict[str, int]:
    rows = await database.read(lambda c: c.execute(text("SELECT k, v FROM items")).all())
    return {k: v for k, v in rows}


async def test_concurrent_writes_share_commits_and_each_gets_its_own_outcome(database: Database) -> None:
    works: list[Callable[[Connection], int]] = []
    for i in range(WRITES):
        if i % 10 == 3:
            works.append(insert_then_fail(f"gone{i}"))
        elif i % 10 == 7:
            works.append(insert("k0", i))  # a duplicate of write 0's key: an IntegrityError of its own
        else:
            works.append(insert(f"k{i}", i))
    with counting_commits() as commits:
        outcomes = await asyncio.gather(*(database.write(work) for work in works), return_exceptions=True)
    for i, outcome in enumerate(outcomes):
        if i % 10 == 3:
            assert isinstance(outcome, Unavailable), (i, outcome)
        elif i % 10 == 7:
            assert isinstance(outcome, exc.IntegrityError), (i, outcome)
        else:
            assert outcome == i
    assert await stored(database) == {f"k{i}": i for i in range(WRITES) if i % 10 not in (3, 7)}
    assert len(commits) < WRITES / 4, f"{len(commits)} commits for {WRITES} concurrent writes"


async def test_a_commit_that_fails_fails_every_write_of_its_batch_and_stores_nothing(
    database: Database,
) -> None:
    failures: list[int] = []

    def fail_commit(connection: Connection) -> None:
        failures.append(1)
        raise exc.OperationalError("COMMIT", {}, Exception("disk I/O error"))

    event.listen(Engine, "commit", fail_commit)
    try:
        outcomes = await asyncio.gather(
            *(database.write(insert(f"k{i}", i)) for i in range(50)), return_exceptions=True
        )
    finally:
        event.remove(Engine, "commit", fail_commit)
    assert failures
    assert all(isinstance(outcome, Unavailable) for outcome in outcomes), outcomes
    assert await stored(database) == {}
    assert await database.write(insert("after", 1)) == 1  # the writer goes on
    assert await stored(database) == {"after": 1}


async def test_a_lone_write_that_raises_leaves_nothing_behind(database: Database) -> None:
    with pytest.raises(Unavailable):
        await database.write(insert_then_fail("lone"))
    assert await stored(database) == {}


async def test_writes_that_all_succeed_share_a_transaction_without_savepoints(database: Database) -> None:
    statements: list[str] = []

    def record(conn: Connection, cursor: object, statement: str, *args: object) -> None:
        statements.append(statement)

    event.listen(Engine, "before_cursor_execute", record)
    try:
        with counting_commits() as commits:
            outcomes = await asyncio.gather(*(database.write(insert(f"k{i}", i)) for i in range(WRITES)))
    finally:
        event.remove(Engine, "before_cursor_execute", record)
    assert outcomes == list(range(WRITES))
    assert len(commits) < WRITES / 4
    assert not [s for s in statements if "SAVEPOINT" in s.upper()]
    assert await stored(database) == {f"k{i}": i for i in range(WRITES)}
