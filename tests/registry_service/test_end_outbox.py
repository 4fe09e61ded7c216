"""Run-end notices in the outbox, on SQLite and PostgreSQL, with a hand-driven clock.

A terminal transition that carries its caller's terminal event owes it to the
owner: claimable only once the run ended more than the delay ago, delivered
verbatim (``seq = 0``), closed once the bridge has it, retried while it does
not, and closed for good when the bridge refuses it as invalid.
"""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator
from datetime import datetime, timedelta

import grpc
import pytest

from registry_service.database import Database, open_database
from registry_service.death import DeathNotice, claim_notices, mark_notified
from registry_service.migrator import upgrade_schema
from registry_service.models import RunRecord
from registry_service.notifier import death_event
from registry_service.runs import EndEvent, RunError, Transition, transition_run
from registry_service.settings import DatabaseSettings
from registry_service.states import FAILED, RUNNING
from registry_service.sweeper import DeathSweeper, SweepPolicy
from registry_service.validation import transition as parse_transition
from runwire.common.v1 import run_pb2
from runwire.registry.v1 import registry_pb2
from runwire_common.errors import InvalidArgument
from runwire_common.owners import owner_of
from runwire_common.timeutil import utcnow
from tests.registry_service.test_death_outbox import add_run

DELAY_S = 60.0
LEASE_S = 30.0
END = EndEvent("agent_error", '{"status":"failed","error_code":"boom","error_message":"it broke"}')


@pytest.fixture
async def database(database_url: str) -> AsyncIterator[Database]:
    async with open_database(DatabaseSettings(database_url=database_url)) as opened:
        await upgrade_schema(opened.write_engine())
        yield opened


async def end_run(database: Database, run_id: str, now: datetime, *, end: EndEvent | None = END) -> None:
    async with database.writing() as session:
        owner = owner_of(await session.get(RunRecord, run_id))  # type: ignore[arg-type]
    change = Transition(to_state=FAILED, error=RunError("boom", "it broke"), end_event=end)
    await database.write(lambda c: transition_run(c, change, owner=owner, run_id=run_id, now=now))


async def claim(database: Database, now: datetime) -> list[DeathNotice]:
    async with database.writing() as session:
        return await claim_notices(session, now=now, lease_s=LEASE_S, limit=100, end_delay_s=DELAY_S)


async def record(database: Database, run_id: str) -> RunRecord:
    async with database.reading() as session:
        found = await session.get(RunRecord, run_id)
    assert found is not None
    return found


class Notifier:
    """Stands in for the bridge: records what it was given, or fails with ``code``."""

    def __init__(self, code: grpc.StatusCode | None = None) -> None:
        self.code = code
        self.sent: list[DeathNotice] = []

    async def notify(self, notice: DeathNotice) -> None:
        if self.code is not None:
            raise grpc.aio.AioRpcError(self.code, grpc.aio.Metadata(), grpc.aio.Metadata(), details="no")
        self.sent.append(notice)


def sweeper(database: Database, notifier: Notifier, clock: list[datetime]) -> DeathSweeper:
    policy = SweepPolicy(
        heartbeat_timeout_s=10.0, interval_s=1.0, batch=100, lease_s=LEASE_S, end_notice_delay_s=DELAY_S
    )
    return DeathSweeper(database, policy=policy, notifier=notifier, clock=lambda: clock[0])


async def test_an_end_notice_is_owed_from_the_transition_but_due_only_after_the_delay(
    database: Database,
) -> None:
    now = utcnow()
    run_id = await add_run(database, state=RUNNING, updated_at=now)
    await end_run(database, run_id, now)
    stored = await record(database, run_id)
    assert stored.death_notice_pending and stored.end_event_type == END.type
    assert await claim(database, now + timedelta(seconds=DELAY_S - 1)) == []
    (notice,) = await claim(database, now + timedelta(seconds=DELAY_S + 1))
    assert (notice.run_id, notice.end_event_type, notice.end_payload_json) == (
        run_id,
        END.type,
        END.payload_json,
    )


async def test_a_terminal_transition_without_an_end_event_owes_nothing(database: Database) -> None:
    now = utcnow()
    run_id = await add_run(database, state=RUNNING, updated_at=now)
    await end_run(database, run_id, now, end=None)
    assert not (await record(database, run_id)).death_notice_pending
    assert await claim(database, now + timedelta(seconds=DELAY_S * 10)) == []


async def test_a_delivered_end_notice_is_closed_and_its_payload_dropped(database: Database) -> None:
    now = utcnow()
    run_id = await add_run(database, state=RUNNING, updated_at=now)
    await end_run(database, run_id, now)
    later = now + timedelta(seconds=DELAY_S + 1)
    assert [n.run_id for n in await claim(database, later)] == [run_id]
    async with database.writing() as session:
        assert await mark_notified(session, [run_id], now=later) == 1
    stored = await record(database, run_id)
    assert not stored.death_notice_pending and stored.death_notified_at is not None
    assert stored.end_payload_json is None
    assert await claim(database, later + timedelta(seconds=LEASE_S * 2)) == []


async def test_the_sweep_delivers_the_stored_event_verbatim_once(database: Database) -> None:
    now = utcnow()
    run_id = await add_run(database, state=RUNNING, updated_at=now)
    await end_run(database, run_id, now)
    clock, notifier = [now + timedelta(seconds=1)], Notifier()
    early = await sweeper(database, notifier, clock).sweep()
    assert early.notified == () and notifier.sent == []
    clock[0] = now + timedelta(seconds=DELAY_S + 1)
    report = await sweeper(database, notifier, clock).sweep()
    assert report.notified == (run_id,)
    (notice,) = notifier.sent
    event = death_event(notice)
    assert (event.seq, event.type, event.payload_json) == (0, END.type, END.payload_json)
    assert (event.run_id, event.user_id) == (run_id, (await record(database, run_id)).user_id)
    clock[0] += timedelta(seconds=LEASE_S * 2)
    assert (await sweeper(database, notifier, clock).sweep()).notified == ()
    assert len(notifier.sent) == 1


async def test_an_unreachable_bridge_keeps_the_notice_for_a_later_sweep(database: Database) -> None:
    now = utcnow()
    run_id = await add_run(database, state=RUNNING, updated_at=now)
    await end_run(database, run_id, now)
    clock = [now + timedelta(seconds=DELAY_S + 1)]
    down = await sweeper(database, Notifier(grpc.StatusCode.UNAVAILABLE), clock).sweep()
    assert down.failed == (run_id,) and (await record(database, run_id)).death_notice_pending
    back = Notifier()
    assert (await sweeper(database, back, clock).sweep()).notified == (run_id,)
    assert [n.run_id for n in back.sent] == [run_id]


async def test_a_notice_the_bridge_refuses_as_invalid_is_not_retried_forever(database: Database) -> None:
    now = utcnow()
    run_id = await add_run(database, state=RUNNING, updated_at=now)
    await end_run(database, run_id, now)
    clock = [now + timedelta(seconds=DELAY_S + 1)]
    await sweeper(database, Notifier(grpc.StatusCode.INVALID_ARGUMENT), clock).sweep()
    assert not (await record(database, run_id)).death_notice_pending


@pytest.mark.parametrize(
    ("to_state", "event_type", "payload"),
    [
        (run_pb2.RUN_STATE_FAILED, "agent_thinking", "{}"),
        (run_pb2.RUN_STATE_FAILED, "agent_error", "[1]"),
        (run_pb2.RUN_STATE_RUNNING, "agent_error", "{}"),
    ],
)
def test_an_end_event_must_be_a_terminal_one_with_a_terminal_state(
    to_state: run_pb2.RunState.ValueType, event_type: str, payload: str
) -> None:
    request = registry_pb2.TransitionRunRequest(
        to_state=to_state, end_event_type=event_type, end_payload_json=payload
    )
    with pytest.raises(InvalidArgument):
        parse_transition(request)


async def test_idle_sweeps_leave_nothing_for_the_cyclic_garbage_collector(database: Database) -> None:
    # A sweep runs every second. Building its statements per sweep left about a thousand objects
    # in reference cycles each time, and collecting them paused the registry's writes.
    clock, notifier = [utcnow()], Notifier()
    sweeps = sweeper(database, notifier, clock)
    for _ in range(3):  # warm: the first execution of each statement fills SQLAlchemy's caches
        await sweeps.sweep()
    gc.collect()
    gc.disable()
    try:
        for _ in range(20):
            clock[0] += timedelta(seconds=1)
            await sweeps.sweep()
        left = gc.collect()
    finally:
        gc.enable()
    assert left < 100, f"{left} objects in reference cycles after 20 sweeps"
