"""Registry rows written straight into the database: a run with one thread message and one input request."""

from __future__ import annotations

import functools
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.engine import Connection

from registry_service.database import Database
from registry_service.models import INPUT_REQUESTS, OWNERS, RUNS, THREAD_MESSAGES
from registry_service.states import LIVE_STATES
from runwire_common.ids import new_id


def _insert_run(
    connection: Connection,
    *,
    run_id: str,
    user_id: str,
    tenant_id: str,
    state: str,
    ended_at: datetime,
    owed: bool,
) -> None:
    thread_id = f"thread_{run_id}"
    connection.execute(
        RUNS.insert().values(
            run_id=run_id,
            user_id=user_id,
            tenant_id=tenant_id,
            thread_id=thread_id,
            agent="scripted",
            state=state,
            created_at=ended_at - timedelta(minutes=1),
            updated_at=ended_at,
            finished_at=None if state in LIVE_STATES else ended_at,
            input_json="{}",
            version=3,
            executor_id="executor-a",
            cancel_requested=False,
            multitask_strategy="reject",
            timeout_seconds=0,
            death_notice_pending=owed,
        )
    )
    connection.execute(
        THREAD_MESSAGES.insert().values(
            user_id=user_id,
            tenant_id=tenant_id,
            thread_id=thread_id,
            run_id=run_id,
            role="user",
            content="hello",
            tool_calls_json="",
            tool_call_id="",
            name="",
            created_at=ended_at - timedelta(minutes=1),
        )
    )
    connection.execute(
        INPUT_REQUESTS.insert().values(
            run_id=run_id,
            request_id="ask_0123456789abcdef",
            user_id=user_id,
            kind="input",
            prompt="Which city?",
            schema_json="",
            tool_name="",
            call_id="",
            parameters_json="",
            run_version=3,
            created_at=ended_at - timedelta(minutes=1),
        )
    )
    exists = connection.execute(select(OWNERS.c.user_id).where(OWNERS.c.user_id == user_id)).first()
    if exists is None:
        connection.execute(OWNERS.insert().values(user_id=user_id, created_at=ended_at))


async def add_run(
    database: Database,
    *,
    state: str,
    ended_at: datetime,
    owed: bool = False,
    user_id: str | None = None,
    tenant_id: str = "",
) -> str:
    """A run of ``state`` last changed at ``ended_at``, with a message and an input request; its id."""
    run_id = new_id("run")
    await database.write(
        functools.partial(
            _insert_run,
            run_id=run_id,
            user_id=user_id or new_id("user"),
            tenant_id=tenant_id,
            state=state,
            ended_at=ended_at,
            owed=owed,
        )
    )
    return run_id


def _kept(connection: Connection) -> dict[str, set[str]]:
    return {
        "runs": set(connection.execute(select(RUNS.c.run_id)).scalars()),
        "messages": set(connection.execute(select(THREAD_MESSAGES.c.run_id)).scalars()),
        "inputs": set(connection.execute(select(INPUT_REQUESTS.c.run_id)).scalars()),
    }


async def kept(database: Database) -> dict[str, set[str]]:
    """The run ids that still have a run row, a message and an input request."""
    return await database.read(_kept)


def _states(connection: Connection) -> dict[str, str]:
    return {row.run_id: row.state for row in connection.execute(select(RUNS.c.run_id, RUNS.c.state))}


async def states(database: Database) -> dict[str, str]:
    return await database.read(_states)


def _owners(connection: Connection) -> set[str]:
    return set(connection.execute(select(OWNERS.c.user_id)).scalars())


async def owners(database: Database) -> set[str]:
    """The user ids that have an admission lock row."""
    return await database.read(_owners)
