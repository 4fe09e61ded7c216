"""How long the registry keeps what runs leave behind, and deleting one owner's data on request.

Retention: a run that ended more than the retention ago (``updated_at``: a
terminal run changes no more) is deleted together with its thread messages
and its input requests, by :class:`RetentionPurger`, a background task of the
composition root. It works in batches of at most ``batch`` runs, each batch
one short write transaction (on SQLite the file's write lock is held for one
batch only; on PostgreSQL rows locked by a concurrent call are skipped, not
waited for), and at most ``max_batches`` batches per pass, so a backlog is
worked off over several passes instead of in one long stretch. It never
deletes a live run (nor what a live run wrote), nor a run whose notice the
outbox still owes its owner (:mod:`registry_service.death`): the notice is
sent first, the run goes on a later pass. A thread disappears with its last
run, as when its owner deletes it.

Purging an owner (``runwire admin purge-user``): :func:`purge_owner` deletes
every run of ``(tenant_id, user_id)`` that is not live, with its messages,
input requests and outbox entry (owed notices included: nobody is left to
tell), in batches, and then the owner's admission lock row once no run of
that user id is left in any tenant. Live runs are refused by the caller
unless it first ends them with :func:`end_live_runs` (``cancelled``, error
``purged``), which their executors learn at their next heartbeat, as for an
interrupted run.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Row, delete, false, select, update
from sqlalchemy.engine import Connection

from registry_service.database import Database
from registry_service.metrics import RegistryMetrics
from registry_service.models import INPUT_REQUESTS, OWNERS, RUNS, THREAD_MESSAGES
from registry_service.ownership import owned_by
from registry_service.periodic import Periodic
from registry_service.states import CANCELLED, LIVE_STATES, TERMINAL_STATES
from runwire_common.owners import Owner
from runwire_common.timeutil import utcnow

log = logging.getLogger("runwire.registry.retention")

PURGED = "purged"
PURGED_MESSAGE = "the run was ended by an operator deleting its owner's data"


@dataclass(frozen=True)
class Purged:
    """Rows deleted: runs, thread messages and input requests."""

    runs: int = 0
    messages: int = 0
    inputs: int = 0

    def __add__(self, other: Purged) -> Purged:
        return Purged(self.runs + other.runs, self.messages + other.messages, self.inputs + other.inputs)


def _delete_runs(connection: Connection, run_ids: Sequence[str]) -> Purged:
    """Delete the runs ``run_ids`` that are not live, with their input requests and messages."""
    if not run_ids:
        return Purged()
    ended = select(RUNS.c.run_id).where(RUNS.c.run_id.in_(run_ids), RUNS.c.state.in_(TERMINAL_STATES))
    inputs = connection.execute(delete(INPUT_REQUESTS).where(INPUT_REQUESTS.c.run_id.in_(ended)))
    messages = connection.execute(delete(THREAD_MESSAGES).where(THREAD_MESSAGES.c.run_id.in_(ended)))
    runs = connection.execute(
        delete(RUNS).where(RUNS.c.run_id.in_(run_ids), RUNS.c.state.in_(TERMINAL_STATES))
    )
    return Purged(
        runs=int(runs.rowcount or 0), messages=int(messages.rowcount or 0), inputs=int(inputs.rowcount or 0)
    )


def purge_expired(connection: Connection, *, before: datetime, limit: int) -> Purged:
    """Delete at most ``limit`` runs that ended before ``before`` and owe no notice, oldest first."""
    candidates = (
        select(RUNS.c.run_id)
        .where(
            RUNS.c.state.in_(TERMINAL_STATES),
            RUNS.c.updated_at < before,
            RUNS.c.death_notice_pending == false(),
        )
        .order_by(RUNS.c.updated_at)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    return _delete_runs(connection, connection.execute(candidates).scalars().all())


def live_runs(connection: Connection, *, tenant_id: str, user_id: str) -> Sequence[Row[Any, Any, Any]]:
    """The owner's live runs (``run_id``, ``thread_id``, ``state``), oldest first."""
    statement = (
        select(RUNS.c.run_id, RUNS.c.thread_id, RUNS.c.state)
        .where(owned_by(RUNS, Owner(tenant_id, user_id)), RUNS.c.state.in_(LIVE_STATES))
        .order_by(RUNS.c.created_at, RUNS.c.run_id)
    )
    return connection.execute(statement).all()


def end_live_runs(connection: Connection, *, tenant_id: str, user_id: str, now: datetime) -> list[str]:
    """Move the owner's live runs to ``cancelled`` (error ``purged``); return their ids.

    One conditional ``UPDATE``, like an interrupt: a run that ended meanwhile
    keeps its own end. Its executor stops at its next heartbeat.
    """
    statement = (
        update(RUNS)
        .where(owned_by(RUNS, Owner(tenant_id, user_id)), RUNS.c.state.in_(LIVE_STATES))
        .values(
            state=CANCELLED,
            error_code=PURGED,
            error_message=PURGED_MESSAGE,
            finished_at=now,
            updated_at=now,
            version=RUNS.c.version + 1,
            cancel_requested=False,
        )
        .returning(RUNS.c.run_id)
    )
    return list(connection.execute(statement).scalars().all())


def purge_owner_batch(connection: Connection, *, tenant_id: str, user_id: str, limit: int) -> Purged:
    """Delete at most ``limit`` of the owner's runs that are not live, with their messages and inputs.

    Once none is left, also the owner's messages of runs that no longer exist
    and, when no run of ``user_id`` is left in any tenant, its admission lock
    row. Call it until it returns nothing.
    """
    candidates = (
        select(RUNS.c.run_id)
        .where(owned_by(RUNS, Owner(tenant_id, user_id)), RUNS.c.state.in_(TERMINAL_STATES))
        .limit(limit)
        .with_for_update()  # wait for a row another call holds: none may be left behind
    )
    purged = _delete_runs(connection, connection.execute(candidates).scalars().all())
    if purged.runs:
        return purged
    orphans = connection.execute(
        delete(THREAD_MESSAGES).where(
            THREAD_MESSAGES.c.user_id == user_id,
            THREAD_MESSAGES.c.tenant_id == tenant_id,
            THREAD_MESSAGES.c.run_id.not_in(
                select(RUNS.c.run_id).where(owned_by(RUNS, Owner(tenant_id, user_id)))
            ),
        )
    )
    if connection.execute(select(RUNS.c.run_id).where(RUNS.c.user_id == user_id).limit(1)).first() is None:
        connection.execute(delete(OWNERS).where(OWNERS.c.user_id == user_id))
    return Purged(messages=int(orphans.rowcount or 0))


async def purge_owner(database: Database, *, tenant_id: str, user_id: str, batch: int = 500) -> Purged:
    """Delete everything of the owner that is not live, one batch per transaction (see module doc)."""
    total = Purged()
    while True:
        purged = await database.write(
            functools.partial(purge_owner_batch, tenant_id=tenant_id, user_id=user_id, limit=batch)
        )
        total += purged
        if not purged.runs:
            return total


@dataclass(frozen=True)
class RetentionPolicy:
    """Keep ended runs ``retention_s``; purge every ``interval_s``, ``batch`` runs a transaction."""

    retention_s: float
    interval_s: float
    batch: int
    max_batches: int = 100


class RetentionPurger:
    """Deletes runs (and what they wrote) that ended longer ago than the retention, in batches."""

    def __init__(
        self,
        database: Database,
        *,
        policy: RetentionPolicy,
        clock: Callable[[], datetime] = utcnow,
        metrics: RegistryMetrics | None = None,
    ) -> None:
        self._database = database
        self._policy = policy
        self._clock = clock
        self._metrics = metrics if metrics is not None else RegistryMetrics()
        self._periodic = Periodic(
            self.purge,
            interval_s=policy.interval_s,
            name="registry-retention-purger",
            log=log,
            failure="retention purge failed; trying again next interval",
        )

    async def purge(self) -> Purged:
        """One pass: batches until one comes back short, ``max_batches`` or a stop; errors propagate."""
        policy = self._policy
        before = self._clock() - timedelta(seconds=policy.retention_s)
        work = functools.partial(purge_expired, before=before, limit=policy.batch)
        total = Purged()
        for _ in range(policy.max_batches):
            purged = await self._database.write(work)
            total += purged
            self._metrics.count_purged(purged.runs, purged.messages, purged.inputs)
            if purged.runs < policy.batch or self._periodic.stopping:
                break
        if total.runs:
            log.info(
                "ended runs past the retention purged",
                extra={"runs": total.runs, "messages": total.messages, "inputs": total.inputs},
            )
        return total

    def start(self) -> None:
        self._periodic.start()

    async def stop(self, *, timeout_s: float = 5.0) -> None:
        """Let the batch in progress finish (up to ``timeout_s``), then end the task. Idempotent."""
        await self._periodic.stop(timeout_s=timeout_s)
