"""``runwire admin purge-user``: one owner's rows and Redis log go, everybody else's stay, live runs are guarded.

Runs on SQLite and PostgreSQL (the registry tests' database fixtures) and,
for the event log, on the Redis behind the ``redis_url`` fixture.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import TypeVar

import pytest
import redis.asyncio as aioredis

from bridge_service.app import open_bus
from bridge_service.redis_bus import RedisEventBus
from bridge_service.redis_scripts import user_keys
from registry_service.database import Database, open_database
from registry_service.migrator import upgrade_schema
from registry_service.settings import DatabaseSettings
from registry_service.states import CANCELLED, COMPLETED, FAILED, RUNNING, WAITING
from runwire.common.v1 import event_pb2
from runwire_cli.main import main
from runwire_common.ids import new_id
from runwire_common.owners import owner_key
from runwire_common.timeutil import utcnow
from tests.bridge_service.harness import delete_keys, settings_for
from tests.registry_service.conftest import backend, database_url, postgres_registry_url
from tests.registry_service.rows import add_run, kept, owners, states

__all__ = ["backend", "database_url", "postgres_registry_url"]  # fixtures shared with the registry tests

T = TypeVar("T")
ALICE = "alice"
BOB = "bob"
ACME = "acme"


def purge(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exited:
        main(["admin", "purge-user", *argv])
    out, err = capsys.readouterr()
    return int(exited.value.code or 0), out, err


async def _with_database(url: str, work: Callable[[Database], Awaitable[T]]) -> T:
    async with open_database(DatabaseSettings(database_url=url)) as database:
        await upgrade_schema(database.write_engine())
        return await work(database)


def on_database(url: str, work: Callable[[Database], Awaitable[T]]) -> T:
    """``work`` on the database at ``url`` (migrated to head), on a loop of its own."""
    return asyncio.run(_with_database(url, work))


@pytest.fixture
def redis_prefix(redis_url: str) -> Iterator[str]:
    prefix = f"rwtest-{new_id('p')}"
    yield prefix
    asyncio.run(delete_keys(redis_url, prefix))


async def seed(database: Database) -> dict[str, list[str]]:
    """Alice (no tenant), Bob, and another Alice of tenant acme: ended runs, one with an owed notice."""
    now = utcnow()
    day = timedelta(days=1)
    return {
        "alice": [
            await add_run(database, state=COMPLETED, ended_at=now - day, user_id=ALICE),
            await add_run(database, state=FAILED, ended_at=now - 2 * day, user_id=ALICE),
            await add_run(database, state=COMPLETED, ended_at=now, user_id=ALICE, owed=True),
        ],
        "bob": [
            await add_run(database, state=COMPLETED, ended_at=now - day, user_id=BOB),
            await add_run(database, state=RUNNING, ended_at=now, user_id=BOB),
        ],
        "acme_alice": [
            await add_run(database, state=COMPLETED, ended_at=now - day, user_id=ALICE, tenant_id=ACME),
        ],
    }


def test_purge_user_deletes_every_row_of_the_user_and_nothing_of_anybody_else(
    database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    seeded = on_database(database_url, seed)

    code, out, err = purge(capsys, ALICE, "--database-url", database_url)

    assert code == 0, err
    assert "deleted 3 run(s), 3 thread message(s) and 3 input request(s)" in out
    others = set(seeded["bob"]) | set(seeded["acme_alice"])
    assert on_database(database_url, kept) == {"runs": others, "messages": others, "inputs": others}
    # Alice of acme still has runs under the same user id: the shared admission row stays.
    assert on_database(database_url, owners) == {ALICE, BOB}

    code, out, err = purge(capsys, ALICE, "--tenant", ACME, "--database-url", database_url)
    assert code == 0, err
    bob = set(seeded["bob"])
    assert on_database(database_url, kept) == {"runs": bob, "messages": bob, "inputs": bob}
    assert on_database(database_url, owners) == {BOB}


def test_purge_user_refuses_while_the_user_has_a_live_run_and_deletes_nothing(
    database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    async def seed_live(database: Database) -> list[str]:
        now = utcnow()
        return [
            await add_run(database, state=COMPLETED, ended_at=now, user_id=ALICE),
            await add_run(database, state=WAITING, ended_at=now, user_id=ALICE),
        ]

    ended, waiting = on_database(database_url, seed_live)

    code, _, err = purge(capsys, ALICE, "--database-url", database_url)

    assert code == 1
    assert waiting in err and "--force" in err
    assert on_database(database_url, states) == {ended: COMPLETED, waiting: WAITING}


def test_purge_user_with_force_ends_the_live_runs_then_deletes_them(
    database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    async def seed_live(database: Database) -> list[str]:
        now = utcnow()
        return [
            await add_run(database, state=RUNNING, ended_at=now, user_id=ALICE),
            await add_run(database, state=RUNNING, ended_at=now, user_id=BOB),
        ]

    alices, bobs = on_database(database_url, seed_live)

    code, out, err = purge(capsys, ALICE, "--database-url", database_url, "--force", "--settle", "0")

    assert code == 0, err
    assert f"ended 1 live run(s) as cancelled: {alices}" in out
    assert on_database(database_url, states) == {bobs: RUNNING}


def test_force_ends_a_live_run_as_cancelled_before_anything_is_deleted(
    database_url: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    async def seed_live(database: Database) -> str:
        return await add_run(database, state=RUNNING, ended_at=utcnow(), user_id=ALICE)

    run_id = on_database(database_url, seed_live)
    seen: list[object] = []

    async def settle(seconds: float) -> None:
        # What an executor's heartbeat would find during the settle wait (read on another loop).
        with ThreadPoolExecutor(1) as pool:
            seen.append(pool.submit(on_database, database_url, states).result())

    monkeypatch.setattr("runwire_cli.admin.asyncio.sleep", settle)
    code, _, err = purge(capsys, ALICE, "--database-url", database_url, "--force")

    assert code == 0, err
    assert seen == [{run_id: CANCELLED}]
    assert on_database(database_url, states) == {}


@pytest.mark.parametrize("backend", ["sqlite"])
def test_purge_user_deletes_the_users_redis_log_and_keeps_other_users_logs(
    database_url: str,
    redis_url: str,
    redis_prefix: str,
    attestation_key_spec: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    settings = settings_for(
        attestation_key_spec, backend="redis", redis_url=redis_url, redis_key_prefix=redis_prefix
    )
    owners_ = {
        "alice": owner_key("", ALICE),
        "bob": owner_key("", BOB),
        "acme_alice": owner_key(ACME, ALICE),
    }

    async def publish_logs() -> dict[str, list[str]]:
        async with open_bus(settings) as bus:
            assert isinstance(bus, RedisEventBus)
            logs: dict[str, list[str]] = {}
            for name, key in owners_.items():
                events = [
                    event_pb2.RunEvent(
                        user_id=key, run_id="run_0123456789abcdef", seq=seq, type="agent_thinking"
                    )
                    for seq in (1, 2, 3)
                ]
                await bus.publish(key, events)
                logs[name] = await bus.retained(key)
            return logs

    async def keys_left() -> dict[str, int]:
        client = aioredis.Redis.from_url(redis_url)
        try:
            counts: dict[str, int] = {}
            for name, key in owners_.items():
                keys = user_keys(redis_prefix, key)
                counts[name] = int(await client.exists(keys.stream, keys.meta, keys.runs, keys.run_order))
            return counts
        finally:
            await client.aclose()

    async def no_runs(database: Database) -> None:
        return None

    on_database(database_url, no_runs)  # an empty, migrated registry
    logs = asyncio.run(publish_logs())
    assert all(len(ids) == 3 for ids in logs.values())
    assert asyncio.run(keys_left()) == {"alice": 4, "bob": 4, "acme_alice": 4}

    code, out, err = purge(
        capsys,
        ALICE,
        "--database-url",
        database_url,
        "--redis-url",
        redis_url,
        "--redis-key-prefix",
        redis_prefix,
    )

    assert code == 0, err
    assert "deleted 4 Redis key(s)" in out
    assert asyncio.run(keys_left()) == {"alice": 0, "bob": 4, "acme_alice": 4}

    async def retained_after() -> dict[str, list[str]]:
        async with open_bus(settings) as bus:
            assert isinstance(bus, RedisEventBus)
            return {name: await bus.retained(key) for name, key in owners_.items()}

    after = asyncio.run(retained_after())
    assert after == {"alice": [], "bob": logs["bob"], "acme_alice": logs["acme_alice"]}


def test_purge_user_with_a_database_url_it_cannot_use_explains(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = purge(capsys, ALICE, "--database-url", "mysql://root:hunter2@db/app")
    assert code == 2
    assert "--database-url" in err and "unsupported database" in err
    assert "hunter2" not in err
