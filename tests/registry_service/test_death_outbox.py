"""The death SQL on its own, with a hand-driven clock: batches, claims, leases and closing notices."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime, timedelta

import pytest

from registry_service.database import Database, open_database
from registry_service.death import claim_notices, mark_dead, mark_notified, release_claims
from registry_service.migrator import upgrade_schema
from registry_service.models import RunRecord
from registry_service.settings import DatabaseSettings
from registry_service.states import COMPLETED, DEAD, PENDING, RUNNING
from runwire_common.ids import new_id
from runwire_common.timeutil import utcnow

TIMEOUT_S = 10.0
LEASE_S = 30.0


@pytest.fixture
async def database(database_url: str) -> AsyncIterator[Database]:
    async with open_database(DatabaseSettings(database_url=database_url)) as opened:
        await upgrade_schema(opened.write_engine())
        yield opened


async def add_run(
    database: Database, *, state: str, updated_at: datetime, heartbeat: datetime | None = None
) -> str:
    run_id = new_id("run")
    async with database.writing() as session:
        session.add(
            RunRecord(
                run_id=run_id,
                user_id=new_id("user"),
                tenant_id="",
                thread_id=new_id("thread"),
                agent="scripted",
                state=state,
                created_at=updated_at,
                updated_at=updated_at,
                last_heartbeat_at=heartbeat,
                input_json="{}",
                version=3,
                executor_id="executor-a",
                cancel_requested=False,
                multitask_strategy="reject",
                timeout_seconds=0,
            )
        )
    return run_id


async def sweep(database: Database, now: datetime, *, limit: int = 100) -> list[str]:
    async with database.writing() as session:
        return [
            run.run_id
            for run in await mark_dead(session, now=now, heartbeat_timeout_s=TIMEOUT_S, limit=limit)
        ]


async def claim(database: Database, now: datetime) -> list[str]:
    async with database.writing() as session:
        return [notice.run_id for notice in await claim_notices(session, now=now, lease_s=LEASE_S, limit=100)]


async def test_only_live_runs_silent_for_longer_than_the_timeout_die(database: Database) -> None:
    now = utcnow()
    old = now - timedelta(seconds=60)
    silent = await add_run(database, state=RUNNING, updated_at=old)
    beating = await add_run(database, state=RUNNING, updated_at=old, heartbeat=now - timedelta(seconds=2))
    moved = await add_run(database, state=PENDING, updated_at=now - timedelta(seconds=2))
    stale_beat = await add_run(database, state=PENDING, updated_at=old, heartbeat=old)
    await add_run(database, state=COMPLETED, updated_at=old)

    assert sorted(await sweep(database, now)) == sorted([silent, stale_beat])
    assert await sweep(database, now) == []
    async with database.reading() as session:
        record = await session.get(RunRecord, silent)
        assert record is not None
        assert (record.state, record.version, record.death_notice_pending) == (DEAD, 4, True)
        for alive in (beating, moved):
            other = await session.get(RunRecord, alive)
            assert other is not None and other.state != DEAD


async def test_a_sweep_marks_at_most_its_batch_oldest_first(database: Database) -> None:
    now = utcnow()
    ids = [
        await add_run(database, state=RUNNING, updated_at=now - timedelta(seconds=60 - i)) for i in range(3)
    ]

    assert await sweep(database, now, limit=2) == ids[:2]
    assert await sweep(database, now, limit=2) == ids[2:]


async def test_a_claimed_notice_is_reserved_until_its_lease_expires(database: Database) -> None:
    now = utcnow()
    run_id = await add_run(database, state=RUNNING, updated_at=now - timedelta(seconds=60))
    await sweep(database, now)

    assert await claim(database, now) == [run_id]
    assert await claim(database, now + timedelta(seconds=LEASE_S - 1)) == []
    # The claimant never came back: after the lease another replica takes the notice over.
    assert await claim(database, now + timedelta(seconds=LEASE_S + 1)) == [run_id]


async def test_a_released_claim_is_claimable_at_once_unless_someone_else_reclaimed_it(
    database: Database,
) -> None:
    now = utcnow()
    await add_run(database, state=RUNNING, updated_at=now - timedelta(seconds=60))
    await sweep(database, now)
    async with database.writing() as session:
        first = await claim_notices(session, now=now, lease_s=LEASE_S, limit=10)
    later = now + timedelta(seconds=LEASE_S + 1)
    assert len(await claim(database, later)) == 1  # taken over after the lease

    async with database.writing() as session:
        await release_claims(session, first)  # the first claimant's late release changes nothing

    assert await claim(database, later + timedelta(seconds=1)) == []


async def test_a_notified_run_is_never_claimed_again(database: Database) -> None:
    now = utcnow()
    run_id = await add_run(database, state=RUNNING, updated_at=now - timedelta(seconds=60))
    await sweep(database, now)
    await claim(database, now)

    async with database.writing() as session:
        assert await mark_notified(session, [run_id], now=now) == 1
        assert await mark_notified(session, [run_id], now=now) == 0

    assert await claim(database, now + timedelta(days=1)) == []
    async with database.reading() as session:
        record = await session.get(RunRecord, run_id)
    assert record is not None and record.death_notified_at == now
