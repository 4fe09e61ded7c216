"""The death sweeper: a background task of the composition root, one per registry process.

Every ``interval_s`` it runs one sweep: mark silent runs dead (one
transaction), claim the due notices — ``agent_death`` for those runs, and the
run-end notices older than ``end_notice_delay_s`` — (another), publish them
concurrently, then close the sent ones and release the failed ones (a third).
A notice the bridge refuses as invalid is closed too (logged): retrying it
would never succeed.
A notice is closed only after ``Publish`` succeeded, and every sweep retries
open notices, so a registry that crashes between marking a run dead and
telling its owner, or a bridge that is down for a while, delays the notice
but never loses it. See :mod:`registry_service.death` for why replicas can
all sweep the same database.

The task holds no state between sweeps beyond its settings; it is started
after the gRPC server and stopped (the sweep in progress allowed to finish)
when the server drains.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

import grpc

from registry_service.database import Database
from registry_service.death import DeathNotice, claim_notices, mark_dead, mark_notified, release_claims
from registry_service.metrics import RegistryMetrics
from registry_service.notifier import DeathNotifier
from registry_service.periodic import Periodic
from runwire_common.timeutil import utcnow

log = logging.getLogger("runwire.registry.sweeper")


@dataclass(frozen=True)
class SweepPolicy:
    heartbeat_timeout_s: float
    interval_s: float
    batch: int
    lease_s: float
    end_notice_delay_s: float = 0.0


@dataclass(frozen=True)
class SweepReport:
    """What one sweep did: runs marked dead, notices sent and notices that failed."""

    marked: tuple[str, ...] = ()
    notified: tuple[str, ...] = ()
    failed: tuple[str, ...] = ()


class DeathSweeper:
    """Marks silent runs dead and notifies their owners, every ``policy.interval_s``."""

    def __init__(
        self,
        database: Database,
        *,
        policy: SweepPolicy,
        notifier: DeathNotifier | None,
        clock: Callable[[], datetime] = utcnow,
        metrics: RegistryMetrics | None = None,
    ) -> None:
        self._metrics = metrics if metrics is not None else RegistryMetrics()
        self._database = database
        self._policy = policy
        self._notifier = notifier
        self._clock = clock
        self._periodic = Periodic(
            self.sweep,
            interval_s=policy.interval_s,
            name="registry-death-sweeper",
            log=log,
            failure="death sweep failed; trying again next interval",
        )

    async def sweep(self) -> SweepReport:
        """One sweep; database and bridge failures propagate (the loop logs them)."""
        policy = self._policy
        async with self._database.writing() as session:
            dead = await mark_dead(
                session, now=self._clock(), heartbeat_timeout_s=policy.heartbeat_timeout_s, limit=policy.batch
            )
        for run in dead:
            log.warning(
                "run marked dead: no heartbeat",
                extra={"run_id": run.run_id, "user_id": run.user_id, "executor_id": run.executor_id},
            )
        marked = tuple(run.run_id for run in dead)
        self._metrics.runs_marked_dead.inc(len(marked))
        if self._notifier is None:
            return SweepReport(marked=marked)
        async with self._database.writing() as session:
            notices = await claim_notices(
                session,
                now=self._clock(),
                lease_s=policy.lease_s,
                limit=policy.batch,
                end_delay_s=policy.end_notice_delay_s,
            )
        if not notices:
            return SweepReport(marked=marked)
        outcomes = await asyncio.gather(*(self._send(notice) for notice in notices))
        sent = [notice for notice, ok in zip(notices, outcomes, strict=True) if ok]
        failed = [notice for notice, ok in zip(notices, outcomes, strict=True) if not ok]
        async with self._database.writing() as session:
            await mark_notified(session, [notice.run_id for notice in sent], now=self._clock())
            await release_claims(session, failed)
        self._metrics.death_notices.labels(outcome="delivered").inc(len(sent))
        self._metrics.death_notices.labels(outcome="retry").inc(len(failed))
        return SweepReport(
            marked=marked,
            notified=tuple(notice.run_id for notice in sent),
            failed=tuple(notice.run_id for notice in failed),
        )

    async def _send(self, notice: DeathNotice) -> bool:
        if self._notifier is None:  # pragma: no cover - sweep() checks first
            return False
        try:
            await self._notifier.notify(notice)
        except grpc.aio.AioRpcError as error:
            if error.code() == grpc.StatusCode.INVALID_ARGUMENT:
                log.error(
                    "notice refused by the bridge as invalid; not retrying",
                    extra={"run_id": notice.run_id, "user_id": notice.user_id, "error": error.details()},
                )
                return True
            log.warning(
                "notice not delivered; retrying on a later sweep",
                extra={"run_id": notice.run_id, "user_id": notice.user_id, "status": error.code().name},
            )
            return False
        except Exception:
            log.exception(
                "notice failed; retrying on a later sweep",
                extra={"run_id": notice.run_id, "user_id": notice.user_id},
            )
            return False
        # Every run's end notice is delivered (usually as a copy the bridge ignores): not worth a line each.
        level = logging.INFO if notice.end_event_type is None else logging.DEBUG
        log.log(level, "notice delivered", extra={"run_id": notice.run_id, "user_id": notice.user_id})
        return True

    def start(self) -> None:
        self._periodic.start()

    async def stop(self, *, timeout_s: float = 5.0) -> None:
        """Let the sweep in progress finish (up to ``timeout_s``), then end the task. Idempotent."""
        await self._periodic.stop(timeout_s=timeout_s)
