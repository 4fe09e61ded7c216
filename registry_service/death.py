"""Death detection in the database, and the outbox of what run ends owe their owners.

The outbox (``death_notice_pending`` and its claim columns) holds two kinds of
notice, delivered by the same sweep:

* a death notice: a run the sweep declared dead (:func:`mark_dead`); the
  registry builds its ``agent_death`` event;
* an end notice: a run whose terminal ``TransitionRun`` carried the terminal
  event its caller is about to publish (``end_event_type``,
  ``end_payload_json``, stored in the same ``UPDATE`` as the transition, see
  :mod:`registry_service.runs`). The caller usually publishes it itself; the
  notice is the safety net for a caller whose publication never arrived (the
  bridge unreachable past its publish retry window, or refusing it, or the
  caller gone). It becomes claimable ``end_delay_s`` after the run ended —
  longer than the caller's retry window — and is then delivered whatever
  happened: the bridge keeps one terminal event per run, so a copy of one it
  already has is ignored. Delivery is at least once, the owner sees it once.

Both steps are single conditional ``UPDATE … RETURNING`` statements, so any
number of registry replicas may sweep the same database at once:

* :func:`mark_dead` moves every live run whose last heartbeat *and* last
  transition are older than the timeout to ``dead`` (error ``no_heartbeat``)
  and, in the same statement, puts it in the outbox
  (``death_notice_pending``). The ``state IN (live states)`` condition is the
  fence: on PostgreSQL a replica that finds a row locked by another replica's
  sweep skips it (``FOR UPDATE SKIP LOCKED`` in the candidates CTE), and
  a row that changed state meanwhile no longer matches when the ``UPDATE``
  re-checks its ``WHERE`` under the row lock; SQLite has one writer at a time
  (``BEGIN IMMEDIATE``). Each run is therefore marked dead exactly once, and
  never after it reached another terminal state.
* :func:`claim_notices` reserves a bounded batch of owed notices for this
  replica by stamping ``death_notice_claimed_at``; a notice whose claim is
  older than the lease is claimable again (its replica crashed between the
  claim and the ``Publish``). The sender then calls :func:`mark_notified`
  after a successful ``Publish`` or :func:`release_claims` after a failed
  one, so the next sweep (of any replica) retries it.

In the normal case every notice is sent once; only a claim that outlives its
lease (a replica stalled longer than ``death_notice_lease_s``) can send a
second copy, which the bridge drops because the run already has its terminal
event.

Times come from the registry's clock, like every other timestamp it writes;
replicas are assumed to agree on the time to well within the heartbeat
timeout.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from types import MappingProxyType
from typing import Any

from sqlalchemy import (
    BindParameter,
    ColumnElement,
    Integer,
    Select,
    Update,
    and_,
    bindparam,
    or_,
    select,
    true,
    update,
)
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased

from registry_service.models import RunRecord
from registry_service.states import DEAD, LIVE_STATES, NO_HEARTBEAT, NO_HEARTBEAT_MESSAGE


@dataclass(frozen=True)
class DeathNotice:
    """What the owner of a dead run is told, and the claim under which it is sent."""

    run_id: str
    user_id: str
    tenant_id: str
    thread_id: str
    agent: str
    died_at: datetime
    claimed_at: datetime
    # An end notice: the terminal event as the run's caller built it (None: a death notice).
    end_event_type: str | None = None
    end_payload_json: str | None = None

    @classmethod
    def of(cls, record: RunRecord) -> DeathNotice:
        if record.death_notice_claimed_at is None:  # pragma: no cover - claim_notices sets it
            raise ValueError(f"run {record.run_id} has no claimed notice")
        return cls(
            run_id=record.run_id,
            user_id=record.user_id,
            tenant_id=record.tenant_id,
            thread_id=record.thread_id,
            agent=record.agent,
            died_at=record.finished_at or record.updated_at,
            claimed_at=record.death_notice_claimed_at,
            end_event_type=record.end_event_type,
            end_payload_json=record.end_payload_json,
        )


def _silent(run: Any, cutoff: BindParameter[datetime]) -> ColumnElement[bool]:
    """Live, with neither a heartbeat nor a transition since ``cutoff``."""
    return and_(
        run.state.in_(LIVE_STATES),
        run.updated_at < cutoff,
        or_(run.last_heartbeat_at.is_(None), run.last_heartbeat_at < cutoff),
    )


def _claimable(
    run: Any, expired: BindParameter[datetime], ended_before: BindParameter[datetime]
) -> ColumnElement[bool]:
    """Owed, not claimed (or its claim expired), and due: a death notice at once, an end notice later."""
    return and_(
        run.death_notice_pending == true(),
        or_(run.death_notice_claimed_at.is_(None), run.death_notice_claimed_at < expired),
        or_(run.end_event_type.is_(None), run.finished_at < ended_before),
    )


def _once(candidates: Select[Any], name: str) -> Select[Any]:
    """The candidates as a materialised CTE, so the database picks them exactly once.

    As a plain ``IN (SELECT … LIMIT n FOR UPDATE SKIP LOCKED)`` PostgreSQL may
    run the sub-select again for every row the ``UPDATE`` visits; each run
    skips the rows this very statement has just updated and picks fresh ones,
    so the ``LIMIT`` stops bounding the batch.
    """
    cte = candidates.cte(name).prefix_with("MATERIALIZED", dialect="postgresql")
    return select(cte.c.run_id)


def _moment(name: str) -> BindParameter[datetime]:
    return bindparam(name, type_=RunRecord.__table__.c.updated_at.type)


def _mark_dead_statement() -> Update:
    """Silent live runs (at most ``limit``, silent since before ``cutoff``) → ``dead`` at ``now``."""
    cutoff, now = _moment("cutoff"), _moment("now")
    candidate = aliased(RunRecord)
    candidates = (
        select(candidate.run_id)
        .where(_silent(candidate, cutoff))
        .order_by(candidate.updated_at)
        .limit(bindparam("limit", type_=Integer))
        .with_for_update(skip_locked=True)
    )
    return (
        update(RunRecord)
        .where(RunRecord.run_id.in_(_once(candidates, "silent_runs")), _silent(RunRecord, cutoff))
        .values(
            state=DEAD,
            error_code=NO_HEARTBEAT,
            error_message=NO_HEARTBEAT_MESSAGE,
            finished_at=now,
            updated_at=now,
            version=RunRecord.version + 1,
            cancel_requested=False,
            death_notice_pending=True,
            death_notice_claimed_at=None,
            death_notified_at=None,
        )
        .returning(RunRecord)
        .execution_options(synchronize_session=False)
    )


def _claim_notices_statement() -> Update:
    """Due notices (at most ``limit``; claims older than ``expired``, ends before ``ended_before``) → claimed at ``now``."""
    expired, ended_before, now = _moment("expired"), _moment("ended_before"), _moment("now")
    candidate = aliased(RunRecord)
    candidates = (
        select(candidate.run_id)
        .where(_claimable(candidate, expired, ended_before))
        .order_by(candidate.finished_at)
        .limit(bindparam("limit", type_=Integer))
        .with_for_update(skip_locked=True)
    )
    return (
        update(RunRecord)
        .where(
            RunRecord.run_id.in_(_once(candidates, "owed_notices")),
            _claimable(RunRecord, expired, ended_before),
        )
        .values(death_notice_claimed_at=now)
        .returning(RunRecord)
        .execution_options(synchronize_session=False)
    )


# Built once: a sweep runs every second, and a statement built per sweep (an alias, a CTE and
# their columns) left about a thousand objects a second for the cyclic garbage collector, whose
# pauses held up the registry's writes. Immutable; each sweep binds its own values.
STATEMENTS: Mapping[str, Update] = MappingProxyType(
    {"mark_dead": _mark_dead_statement(), "claim_notices": _claim_notices_statement()}
)


async def mark_dead(
    session: AsyncSession, *, now: datetime, heartbeat_timeout_s: float, limit: int
) -> list[RunRecord]:
    """Move at most ``limit`` silent live runs to ``dead``; return them (oldest silence first)."""
    cutoff = now - timedelta(seconds=heartbeat_timeout_s)
    parameters = {"cutoff": cutoff, "now": now, "limit": limit}
    return list((await session.scalars(STATEMENTS["mark_dead"], parameters)).all())


async def claim_notices(
    session: AsyncSession, *, now: datetime, lease_s: float, limit: int, end_delay_s: float = 0.0
) -> list[DeathNotice]:
    """Reserve at most ``limit`` due notices (unclaimed, or claimed longer than ``lease_s`` ago).

    An end notice is due once its run ended more than ``end_delay_s`` ago.
    """
    parameters = {
        "expired": now - timedelta(seconds=lease_s),
        "ended_before": now - timedelta(seconds=end_delay_s),
        "now": now,
        "limit": limit,
    }
    return [
        DeathNotice.of(record)
        for record in (await session.scalars(STATEMENTS["claim_notices"], parameters)).all()
    ]


async def mark_notified(session: AsyncSession, run_ids: Sequence[str], *, now: datetime) -> int:
    """Close the notices of ``run_ids`` (the bridge has them); return how many were still owed.

    An end notice's payload is dropped then: the run's result stays in ``result_json``.
    """
    if not run_ids:
        return 0
    statement = (
        update(RunRecord)
        .where(RunRecord.run_id.in_(run_ids), RunRecord.death_notice_pending == true())
        .values(
            death_notice_pending=False,
            death_notified_at=now,
            death_notice_claimed_at=None,
            end_payload_json=None,
        )
        .execution_options(synchronize_session=False)
    )
    result = await session.execute(statement)
    return int(getattr(result, "rowcount", 0) or 0)


async def release_claims(session: AsyncSession, notices: Sequence[DeathNotice]) -> None:
    """Give up claims whose ``Publish`` failed, unless another replica has re-claimed them since."""
    for notice in notices:
        await session.execute(
            update(RunRecord)
            .where(
                RunRecord.run_id == notice.run_id,
                RunRecord.death_notice_pending == true(),
                RunRecord.death_notice_claimed_at == notice.claimed_at,
            )
            .values(death_notice_claimed_at=None)
            .execution_options(synchronize_session=False)
        )
