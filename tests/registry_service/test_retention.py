"""Retention: ended runs past it are purged in batches with their messages and inputs; live runs never."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator, Callable
from datetime import datetime, timedelta

import grpc
import pytest
from pydantic import SecretStr
from sqlalchemy import func, select
from sqlalchemy.engine import Connection

from registry_service.database import Database, open_database
from registry_service.migrator import upgrade_schema
from registry_service.models import RUNS
from registry_service.retention import Purged, RetentionPolicy, RetentionPurger, purge_expired
from registry_service.settings import DatabaseSettings, RegistrySettings
from registry_service.states import COMPLETED, FAILED, RUNNING, WAITING
from runwire.common.v1 import context_pb2, run_pb2
from runwire.registry.v1 import registry_pb2
from runwire_common.ids import new_id
from runwire_common.timeutil import utcnow
from tests.registry_service.rows import add_run, kept
from tests.registry_service.support import CALL_TIMEOUT_S, open_registry

DAY = timedelta(days=1)
RETENTION = RetentionPolicy(retention_s=30 * 86_400, interval_s=3_600, batch=500)


@pytest.fixture
async def database(database_url: str) -> AsyncIterator[Database]:
    async with open_database(DatabaseSettings(database_url=database_url)) as opened:
        await upgrade_schema(opened.write_engine())
        yield opened


def _count_runs(connection: Connection) -> int:
    return int(connection.execute(select(func.count()).select_from(RUNS)).scalar_one())


def purger(database: Database, now: datetime, policy: RetentionPolicy = RETENTION) -> RetentionPurger:
    return RetentionPurger(database, policy=policy, clock=lambda: now)


async def test_runs_that_ended_before_the_retention_go_with_their_messages_and_inputs(
    database: Database,
) -> None:
    now = utcnow()
    old = await add_run(database, state=COMPLETED, ended_at=now - 31 * DAY)
    old_failed = await add_run(database, state=FAILED, ended_at=now - 45 * DAY)
    recent = await add_run(database, state=COMPLETED, ended_at=now - 29 * DAY)

    purged = await purger(database, now).purge()

    assert purged == Purged(runs=2, messages=2, inputs=2)
    assert await kept(database) == {"runs": {recent}, "messages": {recent}, "inputs": {recent}}
    assert not {old, old_failed} & (await kept(database))["runs"]


async def test_a_live_run_and_what_it_wrote_are_never_purged_however_old(database: Database) -> None:
    now = utcnow()
    running = await add_run(database, state=RUNNING, ended_at=now - 90 * DAY)
    waiting = await add_run(database, state=WAITING, ended_at=now - 90 * DAY)

    assert await purger(database, now).purge() == Purged()
    both = {running, waiting}
    assert await kept(database) == {"runs": both, "messages": both, "inputs": both}


async def test_a_run_whose_notice_is_still_owed_stays_until_the_notice_was_sent(database: Database) -> None:
    now = utcnow()
    owed = await add_run(database, state=COMPLETED, ended_at=now - 40 * DAY, owed=True)

    assert await purger(database, now).purge() == Purged()
    assert (await kept(database))["runs"] == {owed}


async def test_each_transaction_deletes_at_most_one_batch_and_a_pass_at_most_max_batches(
    database: Database,
) -> None:
    now = utcnow()
    for age in range(40, 45):
        await add_run(database, state=COMPLETED, ended_at=now - age * DAY)

    before = now - 30 * DAY
    first = await database.write(functools.partial(purge_expired, before=before, limit=2))
    assert first.runs == 2
    assert await database.read(_count_runs) == 3

    small = RetentionPolicy(retention_s=30 * 86_400, interval_s=3_600, batch=1, max_batches=2)
    assert (await purger(database, now, small).purge()).runs == 2
    assert await database.read(_count_runs) == 1
    assert (await purger(database, now, small).purge()).runs == 1
    assert await database.read(_count_runs) == 0


async def test_the_oldest_runs_go_first(database: Database) -> None:
    now = utcnow()
    await add_run(database, state=COMPLETED, ended_at=now - 60 * DAY)
    await add_run(database, state=COMPLETED, ended_at=now - 50 * DAY)
    old = await add_run(database, state=COMPLETED, ended_at=now - 40 * DAY)

    await database.write(functools.partial(purge_expired, before=now - 30 * DAY, limit=2))
    assert (await kept(database))["runs"] == {old}


async def test_the_registry_purges_runs_past_its_retention_in_the_background(
    registry_settings: RegistrySettings, make_context: Callable[..., context_pb2.UserContext]
) -> None:
    settings = registry_settings.model_copy(update={"retention_days": 30, "retention_interval_s": 0.2})
    user = new_id("user")
    async with open_database(settings.database()) as database:
        await upgrade_schema(database.write_engine())
        old = await add_run(database, state=COMPLETED, ended_at=utcnow() - 31 * DAY, user_id=user)
        recent = await add_run(database, state=COMPLETED, ended_at=utcnow() - 1 * DAY, user_id=user)
    async with open_registry(settings, make_context) as registry:

        async def get(run_id: str) -> run_pb2.Run:
            ctx = make_context(user, run_id=run_id)
            reply = await registry.stub.GetRun(
                registry_pb2.GetRunRequest(user_context=ctx), timeout=CALL_TIMEOUT_S
            )
            return reply.run

        async with asyncio.timeout(10):
            while True:
                try:
                    await get(old)
                except grpc.aio.AioRpcError as error:
                    assert error.code() == grpc.StatusCode.NOT_FOUND
                    break
                await asyncio.sleep(0.05)
        assert (await get(recent)).run_id == recent


def test_retention_defaults_to_30_days_and_0_keeps_everything(attestation_key_spec: str) -> None:
    settings = RegistrySettings(attestation_keys=SecretStr(attestation_key_spec))
    assert settings.retention_days == 30
    kept_forever = RegistrySettings(attestation_keys=SecretStr(attestation_key_spec), retention_days=0)
    assert kept_forever.retention_days == 0
