"""The ``queued`` flag: only runs queued behind another run of their thread take the thread check to start."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, timedelta
from typing import Any

import grpc
import pytest
from sqlalchemy import text, update
from sqlalchemy.engine import Connection

from registry_service.database import Database, open_database
from registry_service.migrator import current_revision, downgrade_schema, upgrade_schema
from registry_service.models import RUNS
from registry_service.runs import get_run
from registry_service.settings import DatabaseSettings
from runwire.common.v1 import run_pb2
from runwire_common.ids import new_id
from runwire_common.owners import owner_of
from tests.registry_service.support import Registry, rpc_error

S = run_pb2
ENQUEUE = S.MULTITASK_STRATEGY_ENQUEUE
INTERRUPT = S.MULTITASK_STRATEGY_INTERRUPT


@pytest.fixture
async def database(registry: Registry) -> AsyncIterator[Database]:
    """A second handle on the registry's own database, to look at and tamper with rows."""
    async with open_database(DatabaseSettings(database_url=registry.settings.database_url)) as opened:
        yield opened


async def queued_of(database: Database, run: run_pb2.Run) -> bool | None:
    row = await database.read(lambda c: get_run(c, owner=owner_of(run), run_id=run.run_id))
    value: Any = row.queued
    return None if value is None else bool(value)


async def set_columns(database: Database, run: run_pb2.Run, **values: Any) -> None:
    def work(connection: Connection) -> None:
        connection.execute(update(RUNS).where(RUNS.c.run_id == run.run_id).values(**values))

    await database.write(work)


async def test_only_a_run_enqueued_on_a_busy_thread_is_queued(registry: Registry, database: Database) -> None:
    user, thread = new_id("user"), new_id("thread")
    first = await registry.create(user, thread_id=thread)
    queued = await registry.create(user, thread_id=thread, strategy=ENQUEUE)
    free_enqueue = await registry.create(user, strategy=ENQUEUE)

    assert await queued_of(database, first) is False
    assert await queued_of(database, queued) is True
    assert await queued_of(database, free_enqueue) is False
    assert (await registry.transition(free_enqueue, S.RUN_STATE_STARTING)).state == S.RUN_STATE_STARTING


async def test_interrupt_admits_an_unqueued_run(registry: Registry, database: Database) -> None:
    user, thread = new_id("user"), new_id("thread")
    await registry.create(user, thread_id=thread)
    new = await registry.create(user, thread_id=thread, strategy=INTERRUPT)

    assert await queued_of(database, new) is False
    assert (await registry.transition(new, S.RUN_STATE_STARTING)).state == S.RUN_STATE_STARTING


async def test_a_run_of_unknown_queuing_still_waits_for_its_thread(
    registry: Registry, database: Database
) -> None:
    """NULL (rows from before migration 0003, or from an older replica) is treated as queued."""
    user, thread = new_id("user"), new_id("thread")
    first = await registry.create(user, thread_id=thread)
    first = await registry.transition(first, S.RUN_STATE_STARTING)
    waiting = await registry.create(user, thread_id=thread, strategy=ENQUEUE)
    await set_columns(database, waiting, queued=None)

    refused = await rpc_error(registry.transition(waiting, S.RUN_STATE_STARTING))
    await registry.transition(first, S.RUN_STATE_FAILED)
    started = await registry.transition(waiting, S.RUN_STATE_STARTING)

    assert refused.code() == grpc.StatusCode.ABORTED and first.run_id in (refused.details() or "")
    assert started.state == S.RUN_STATE_STARTING


async def test_an_unqueued_pending_run_goes_before_queued_runs_whatever_the_clocks_say(
    registry: Registry, database: Database
) -> None:
    user, thread = new_id("user"), new_id("thread")
    first = await registry.create(user, thread_id=thread)
    queued = await registry.create(user, thread_id=thread, strategy=ENQUEUE)
    # Another replica's clock ran behind: the queued run looks older than the run it queued behind.
    earlier = first.created_at.ToDatetime(tzinfo=UTC) - timedelta(seconds=5)
    await set_columns(database, queued, created_at=earlier)

    refused = await rpc_error(registry.transition(queued, S.RUN_STATE_STARTING))
    first = await registry.transition(first, S.RUN_STATE_STARTING)
    still = await rpc_error(registry.transition(queued, S.RUN_STATE_STARTING))

    for error in (refused, still):
        assert error.code() == grpc.StatusCode.ABORTED and first.run_id in (error.details() or "")
    assert first.state == S.RUN_STATE_STARTING


async def test_the_fast_start_is_still_a_conditional_update(registry: Registry) -> None:
    user = new_id("user")
    run = await registry.run_in(user, S.RUN_STATE_STARTING)

    again = await rpc_error(registry.transition(run, S.RUN_STATE_STARTING))
    stale = await rpc_error(
        registry.transition(await registry.create(user), S.RUN_STATE_STARTING, expected_version=7)
    )

    assert again.code() == stale.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "cannot move" in (again.details() or "") and "version" in (stale.details() or "")


async def test_migration_0003_adds_the_flag_as_unknown_and_drops_it_again(database_url: str) -> None:
    async with open_database(DatabaseSettings(database_url=database_url)) as database:
        await upgrade_schema(database.write_engine(), revision="0002")
        await database.write(
            lambda c: c.execute(
                text(
                    "INSERT INTO runs (run_id, user_id, tenant_id, thread_id, agent, state, created_at,"
                    " updated_at, input_json, version, executor_id, cancel_requested, multitask_strategy,"
                    " timeout_seconds, death_notice_pending) VALUES ('run_before_0003_xxxxxxxx', 'user_x',"
                    " '', 'thread_x', 'scripted', 'pending', '2026-01-01 00:00:00', '2026-01-01 00:00:00',"
                    " '{}', 1, '', false, 'enqueue', 0, false)"
                )
            )
        )

        await upgrade_schema(database.write_engine())
        upgraded = await database.read(lambda c: c.execute(text("SELECT run_id, queued FROM runs")).all())
        await downgrade_schema(database.write_engine(), revision="0002")
        columns = await database.read(lambda c: list(c.execute(text("SELECT * FROM runs")).keys()))
        kept = await database.read(lambda c: c.execute(text("SELECT count(*) FROM runs")).scalar_one())
        revision = await current_revision(database.engine)

    assert [tuple(row) for row in upgraded] == [("run_before_0003_xxxxxxxx", None)]
    assert "queued" not in columns and kept == 1 and revision == "0002"
