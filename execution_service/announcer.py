"""Ending runs that no local engine owns, and announcing their terminal event.

Terminal-event ownership: whoever wins the registry's terminal transition
announces the end, exactly once. When this replica wins it for a run it does
not execute (a cancel of a run on another replica, a run the registry
interrupted for a newer one), the announcement is published with ``seq = 0``:
only the run's executor knows its next seq, so the bridge assigns it, and the
bridge ignores whatever the executor still publishes after the terminal event.

Announcements run as background tasks tracked by the supervisor, so the
process drains them before it exits, and they are retried while the bridge
is unavailable; a lost one is logged. They are published through the same
bridge port (the process's publish streams) as every run's events, and their
payload comes from the one builder, :func:`~execution_service.outcomes.terminal_event`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from google.protobuf.timestamp_pb2 import Timestamp

from execution_service.emitter import encode_payload
from execution_service.outcomes import Outcome, TerminalEvent, terminal_event
from execution_service.peers import BridgePort, RegistryPort
from execution_service.retry import Backoff, retry_unavailable
from runwire.common.v1 import context_pb2, event_pb2, run_pb2
from runwire_common.errors import FailedPrecondition, RunwireError, Unavailable

Track = Callable[[asyncio.Task[None]], None]


def with_run_id(ctx: context_pb2.UserContext, run_id: str) -> context_pb2.UserContext:
    out = context_pb2.UserContext()
    out.CopyFrom(ctx)
    out.run_id = run_id
    return out


def end_of(outcome: Outcome) -> TerminalEvent:
    """The terminal event announcing ``outcome``, encoded once (the registry keeps the same)."""
    event_type, payload = terminal_event(outcome)
    return TerminalEvent(event_type, encode_payload(payload))


def terminal_for_owner(
    run: run_pb2.Run, outcome: Outcome, end: TerminalEvent | None = None
) -> event_pb2.RunEvent:
    """The terminal event of ``run`` with ``seq = 0``: the bridge assigns the run's next seq."""
    end = end or end_of(outcome)
    timestamp = Timestamp()
    timestamp.GetCurrentTime()
    return event_pb2.RunEvent(
        seq=0,
        type=end.type,
        run_id=run.run_id,
        thread_id=run.thread_id,
        user_id=run.user_id,
        tenant_id=run.tenant_id,
        agent=run.agent,
        timestamp=timestamp,
        payload_json=end.payload_json,
    )


class Announcer:
    """Ends runs in the registry and announces the ends this replica won."""

    def __init__(
        self,
        *,
        registry: RegistryPort,
        bridge: BridgePort,
        track: Track,
        publish_retry: Backoff,
        log: logging.Logger | logging.LoggerAdapter,  # type: ignore[type-arg]
    ) -> None:
        self._registry = registry
        self._bridge = bridge
        self._track = track
        self._retry = publish_retry
        self._log = log

    async def end_run(self, ctx: context_pb2.UserContext, outcome: Outcome, *, wait_s: float) -> run_pb2.Run:
        """Move ``ctx.run_id`` to ``outcome``; announce the end if this call won the transition.

        ``ctx`` is attested. A run that already ended is returned unchanged and
        nothing is announced. Waits up to ``wait_s`` for the announcement (it
        goes on in the background).
        """
        end = end_of(outcome)  # the registry keeps it too, and delivers it should ours be lost
        try:
            run = await self._registry.transition(
                ctx, outcome.state, error=outcome.run_error(), end_event=end
            )
        except FailedPrecondition:
            return await self._registry.get_run(ctx)
        await self.wait(self.announce(ctx, run, outcome, end=end), wait_s)
        return run

    def announce(
        self,
        ctx: context_pb2.UserContext,
        run: run_pb2.Run,
        outcome: Outcome,
        *,
        end: TerminalEvent | None = None,
    ) -> asyncio.Task[None]:
        """Publish the terminal event of ``run`` (ended by this replica as ``outcome``) in the background."""
        event = terminal_for_owner(run, outcome, end)
        task = asyncio.create_task(
            self._publish(with_run_id(ctx, run.run_id), event), name=f"announce:{run.run_id}"
        )
        self._track(task)
        return task

    @staticmethod
    async def wait(task: asyncio.Task[None], within_s: float) -> None:
        await asyncio.wait((task,), timeout=max(0.0, within_s))

    async def _publish(self, ctx: context_pb2.UserContext, event: event_pb2.RunEvent) -> None:
        extra = {"run_id": event.run_id, "user_id": event.user_id, "event_type": event.type}
        try:
            ids = await retry_unavailable(
                lambda: self._bridge.publish(ctx, (event,)),
                self._retry,
                on_retry=lambda exc, pause: self._log.warning(
                    "bridge unavailable; retrying the terminal event", extra=extra | {"error": exc.message}
                ),
            )
        except Unavailable as exc:
            self._log.error(
                f"terminal event lost: the bridge stayed unavailable for {self._retry.budget_s:g} s",
                extra=extra | {"error": exc.message},
            )
            return
        except RunwireError as exc:
            self._log.error(
                "terminal event lost: the bridge refused it", extra=extra | {"error": exc.message}
            )
            return
        except asyncio.CancelledError:
            self._log.error("terminal event lost: publishing was stopped", extra=extra)
            raise
        if ids and not ids[0]:
            self._log.info("the run had ended already; terminal event ignored by the bridge", extra=extra)
        else:
            self._log.info("run end announced", extra=extra)
