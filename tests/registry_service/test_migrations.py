"""Alembic migrations: up from nothing, down to nothing, and in step with the models."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import DateTime, bindparam, inspect, text
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

import registry_service
from registry_service.database import Database, open_database
from registry_service.migrator import current_revision, downgrade_schema, upgrade_schema
from registry_service.models import Base
from registry_service.settings import DatabaseSettings

HEAD = "0006"
TABLES = {"runs", "run_owners", "input_requests", "thread_messages"}


@pytest.fixture
async def database(database_url: str) -> AsyncIterator[Database]:
    async with open_database(DatabaseSettings(database_url=database_url)) as opened:
        yield opened


async def _tables(database: Database) -> set[str]:
    async with database.engine.connect() as connection:
        names = await connection.run_sync(lambda sync: inspect(sync).get_table_names())
    return set(names) - {"alembic_version"}


def _differences(connection: Connection) -> list[object]:
    return list(
        compare_metadata(MigrationContext.configure(connection, opts={"compare_type": True}), Base.metadata)
    )


async def test_upgrade_to_head_on_an_empty_database_creates_the_tables(database: Database) -> None:
    assert await _tables(database) == set()

    await upgrade_schema(database.write_engine())

    assert await _tables(database) == TABLES
    assert await current_revision(database.engine) == HEAD


async def test_upgrading_twice_is_harmless(database: Database) -> None:
    await upgrade_schema(database.write_engine())
    await upgrade_schema(database.write_engine())

    assert await current_revision(database.engine) == HEAD


async def test_downgrade_to_base_drops_every_table(database: Database) -> None:
    await upgrade_schema(database.write_engine())

    await downgrade_schema(database.write_engine(), revision="base")

    assert await _tables(database) == set()
    assert await current_revision(database.engine) is None


async def test_the_schema_can_be_rebuilt_after_a_downgrade(database: Database) -> None:
    await upgrade_schema(database.write_engine())
    await downgrade_schema(database.write_engine(), revision="base")

    await upgrade_schema(database.write_engine())

    assert await _tables(database) == TABLES


async def test_the_migrated_schema_matches_the_models(database: Database) -> None:
    await upgrade_schema(database.write_engine())

    async with database.engine.connect() as connection:
        differences = await connection.run_sync(_differences)

    assert differences == []


def _migrate(database_url: str, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    source_root = Path(registry_service.__file__).resolve().parent.parent
    env = {
        **os.environ,
        "RUNWIRE_DATABASE_URL": database_url,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(source_root), os.environ.get("PYTHONPATH", "")])),
    }
    env.pop("RUNWIRE_REGISTRY_DATABASE_URL", None)
    return subprocess.run(
        [sys.executable, "-m", "registry_service.migrate", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def test_the_migrate_command_upgrades_and_downgrades_from_any_directory(
    database: Database, database_url: str, tmp_path: Path
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()

    upgraded = _migrate(database_url, elsewhere)
    assert upgraded.returncode == 0, upgraded.stderr
    assert upgraded.stdout.strip().splitlines()[-1] == HEAD
    assert await _tables(database) == TABLES

    downgraded = _migrate(database_url, elsewhere, "downgrade", "base")
    assert downgraded.returncode == 0, downgraded.stderr
    assert downgraded.stdout.strip().splitlines()[-1] == "base"
    assert await _tables(database) == set()


def test_the_migrate_command_refuses_a_downgrade_without_a_target(database_url: str, tmp_path: Path) -> None:
    result = _migrate(database_url, tmp_path, "downgrade")

    assert result.returncode == 2
    assert "downgrade needs a target revision" in result.stderr


async def test_upgrading_from_0001_keeps_the_runs_and_owes_no_notice_for_old_deaths(
    database: Database,
) -> None:
    await upgrade_schema(database.write_engine(), revision="0001")
    async with database.write_engine().begin() as connection:
        await connection.execute(
            text(
                "INSERT INTO runs (run_id, user_id, tenant_id, thread_id, agent, state, created_at, updated_at,"
                " input_json, version, executor_id, cancel_requested, multitask_strategy, timeout_seconds)"
                " VALUES ('run_old_dead_one_xxxxxxxx', 'user_someone_xxxxxxxxxx', '', 'thread_x_xxxxxxxxxxxx',"
                " 'scripted', 'dead', :now, :now, '{}', 2, '', false, 'reject', 0)"
            ),
            {"now": datetime.now(UTC)},
        )

    await upgrade_schema(database.write_engine())

    async with database.engine.connect() as connection:
        rows = (await connection.execute(text("SELECT run_id, death_notice_pending FROM runs"))).all()
    assert [(row[0], bool(row[1])) for row in rows] == [("run_old_dead_one_xxxxxxxx", False)]

    await downgrade_schema(database.write_engine(), revision="0001")
    assert await current_revision(database.engine) == "0001"
    async with database.engine.connect() as connection:
        assert (await connection.execute(text("SELECT count(*) FROM runs"))).scalar_one() == 1


RUN_ROW = (
    "INSERT INTO runs (run_id, user_id, tenant_id, thread_id, agent, state, created_at, updated_at,"
    " input_json, version, executor_id, cancel_requested, multitask_strategy, timeout_seconds,"
    " death_notice_pending, queued)"
    " VALUES (:run_id, 'user_someone_xxxxxxxxxx', '', 'thread_x_xxxxxxxxxxxx',"
    " 'scripted', :state, :now, :now, '{}', 3, '', false, 'reject', 0, false, false)"
)


async def _insert_run(database: Database, run_id: str, state: str) -> None:
    async with database.write_engine().begin() as connection:
        await connection.execute(
            text(RUN_ROW).bindparams(bindparam("now", type_=DateTime(timezone=True))),
            {"run_id": run_id, "state": state, "now": datetime.now(UTC)},
        )


async def _states(database: Database) -> dict[str, str]:
    async with database.engine.connect() as connection:
        rows = (await connection.execute(text("SELECT run_id, state FROM runs"))).all()
    return {row[0]: row[1] for row in rows}


async def test_upgrading_from_0003_keeps_the_runs_and_lets_them_wait(database: Database) -> None:
    await upgrade_schema(database.write_engine(), revision="0003")
    await _insert_run(database, "run_old_running_xxxxxxxx", "running")
    await _insert_run(database, "run_old_completed_xxxxxx", "completed")
    with pytest.raises(IntegrityError):
        await _insert_run(database, "run_too_early_xxxxxxxxxx", "waiting")

    await upgrade_schema(database.write_engine())

    assert await _states(database) == {
        "run_old_running_xxxxxxxx": "running",
        "run_old_completed_xxxxxx": "completed",
    }
    await _insert_run(database, "run_new_waiting_xxxxxxxx", "waiting")
    with pytest.raises(IntegrityError):
        await _insert_run(database, "run_bogus_state_xxxxxxxx", "sleeping")
    assert (await _states(database))["run_new_waiting_xxxxxxxx"] == "waiting"


async def test_downgrading_to_0003_ends_waiting_runs_as_failed(database: Database) -> None:
    await upgrade_schema(database.write_engine())
    await _insert_run(database, "run_waiting_xxxxxxxxxxxx", "waiting")
    await _insert_run(database, "run_running_xxxxxxxxxxxx", "running")

    await downgrade_schema(database.write_engine(), revision="0003")

    assert await _tables(database) == {"runs", "run_owners"}
    assert await _states(database) == {
        "run_waiting_xxxxxxxxxxxx": "failed",
        "run_running_xxxxxxxxxxxx": "running",
    }
    with pytest.raises(IntegrityError):
        await _insert_run(database, "run_waiting_again_xxxxxxx", "waiting")


async def test_upgrading_from_0005_keeps_the_runs_without_keys_and_keys_are_unique_per_owner(
    database: Database,
) -> None:
    await upgrade_schema(database.write_engine(), revision="0005")
    await _insert_run(database, "run_old_one_xxxxxxxxxxxx", "running")
    await _insert_run(database, "run_old_two_xxxxxxxxxxxx", "completed")  # the same owner, no key: both NULL

    await upgrade_schema(database.write_engine())

    assert set(await _states(database)) == {"run_old_one_xxxxxxxxxxxx", "run_old_two_xxxxxxxxxxxx"}
    async with database.write_engine().begin() as connection:
        await connection.execute(
            text("UPDATE runs SET create_key = 'key-1' WHERE run_id = 'run_old_one_xxxxxxxxxxxx'")
        )
    with pytest.raises(IntegrityError):
        async with database.write_engine().begin() as connection:
            await connection.execute(
                text("UPDATE runs SET create_key = 'key-1' WHERE run_id = 'run_old_two_xxxxxxxxxxxx'")
            )

    await downgrade_schema(database.write_engine(), revision="0005")
    assert set(await _states(database)) == {"run_old_one_xxxxxxxxxxxx", "run_old_two_xxxxxxxxxxxx"}
