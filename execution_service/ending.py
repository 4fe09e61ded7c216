"""Recording a run's end in the registry, and whether its engine should announce it.

Terminal-event ownership: the engine announces the end of its run only when
the registry holds (or most likely holds) the end this engine recorded; when
the run ended elsewhere, whoever ended it announces. :func:`record_end` makes
the terminal transition (carrying the terminal event the engine will publish,
which the registry keeps and delivers itself should that publication never
reach the bridge) (retried while the registry is unavailable) and says
which of the three it came to (:class:`EndRecord`); :attr:`EndRecord.announce`
is the verdict the engine acts on.

A completed run's messages (its turn of the thread's conversation) travel
in the terminal transition and are stored in the same transaction, before
the end is announced, so whoever sees ``agent_completed`` and reads the
thread, or starts the next run on it, finds them. Messages the registry
refuses are logged and the end is recorded without them; where a retried
transition turns out to have gone through, or the registry predates
completing in one call, they are stored with ``AppendMessages`` afterwards
(idempotent per run).
"""

from __future__ import annotations

import dataclasses
import enum
import json
import logging
from collections.abc import Awaitable, Callable
from functools import partial
from typing import TypeVar

from execution_service.outcomes import Outcome, TerminalEvent
from execution_service.peers import RegistryPort
from execution_service.retry import Backoff, retry_unavailable
from runwire.common.v1 import context_pb2, run_pb2
from runwire_common import names
from runwire_common.errors import FailedPrecondition, InvalidArgument, RunwireError, Unavailable

T = TypeVar("T")
Log = logging.Logger | logging.LoggerAdapter  # type: ignore[type-arg]


class EndRecord(enum.Enum):
    """What recording a run's end came to."""

    RECORDED = "recorded"  # the registry holds this end (this call, or a retried one, made it)
    ENDED_ELSEWHERE = "ended_elsewhere"  # the run had already ended another way (or most likely had)
    UNCONFIRMED = "unconfirmed"  # the registry could not confirm this end (down, or refused a live run)

    @property
    def announce(self) -> bool:
        """Whether the engine announces the end: unless it ended elsewhere.

        An unconfirmed end is announced anyway, so the user is never left
        without one; the bridge keeps at most one terminal event per run.
        """
        return self is not EndRecord.ENDED_ELSEWHERE


async def record_end(
    outcome: Outcome,
    *,
    registry: RegistryPort,
    context: Callable[[], context_pb2.UserContext],
    retry: Backoff,
    log: Log,
    end: TerminalEvent | None = None,
) -> EndRecord:
    """Make ``outcome`` the run's terminal state in the registry (``context()``: the run's context).

    ``end`` is the terminal event that announces it, kept by the registry as the run's end notice.
    """
    retried = False

    def note(exc: Unavailable, pause: float) -> None:
        nonlocal retried
        retried = True
        log.warning("registry unavailable; retrying", extra={"error": exc.message})

    async def call(make: Callable[[], Awaitable[T]]) -> T:
        return await retry_unavailable(make, retry, on_retry=note)

    completed = outcome.state == run_pb2.RUN_STATE_COMPLETED
    result_json = json.dumps(outcome.result) if completed else ""
    try:
        # A completed run passes through COMPLETING, and stores its thread turn, in the same call.
        await call(
            lambda: registry.transition(
                context(),
                outcome.state,
                error=outcome.run_error(),
                result_json=result_json,
                through_completing=completed,
                end_event=end,
                messages=outcome.messages,
            )
        )
        return EndRecord.RECORDED
    except InvalidArgument as exc:
        if not outcome.messages:
            log.error("could not record the end of the run", extra={"error": exc.message})
            return EndRecord.UNCONFIRMED
        # Messages the registry will not keep (too long, say) must not keep the run from ending.
        log.error(
            "the registry refused the run's end with its messages; recording the end without them",
            extra={"error": exc.message},
        )
        return await record_end(
            dataclasses.replace(outcome, messages=()),
            registry=registry,
            context=context,
            retry=retry,
            log=log,
            end=end,
        )
    except FailedPrecondition:
        try:
            run = await call(lambda: registry.get_run(context()))
        except RunwireError as exc:
            log.error("could not read the run after a refused transition", extra={"error": exc.message})
            return EndRecord.ENDED_ELSEWHERE
        if retried and outcome.matches(run):
            await _remember(outcome, call, registry=registry, context=context, log=log)
            return EndRecord.RECORDED  # an attempt that looked lost had gone through
        if completed and run.state == run_pb2.RUN_STATE_RUNNING:
            recorded = await _complete_stepwise(
                call, registry=registry, context=context, result_json=result_json, end=end, log=log
            )
            if recorded is EndRecord.RECORDED:
                await _remember(outcome, call, registry=registry, context=context, log=log)
            return recorded
        if run.state not in names.TERMINAL_STATES:
            log.error("terminal transition refused", extra={"state": names.state_name(run.state)})
            return EndRecord.UNCONFIRMED
        return EndRecord.ENDED_ELSEWHERE
    except RunwireError as exc:
        log.error("could not record the end of the run", extra={"error": exc.message})
        return EndRecord.UNCONFIRMED


async def _remember(
    outcome: Outcome,
    call: Callable[[Callable[[], Awaitable[int]]], Awaitable[int]],
    *,
    registry: RegistryPort,
    context: Callable[[], context_pb2.UserContext],
    log: Log,
) -> None:
    """Store what a completed run adds to its thread (idempotent per run in the registry)."""
    if not outcome.messages:
        return
    try:
        await call(lambda: registry.append_messages(context(), outcome.messages))
    except RunwireError as exc:
        log.error("could not store the run's messages", extra={"error": exc.message})


async def _complete_stepwise(
    call: Callable[[Callable[[], Awaitable[run_pb2.Run]]], Awaitable[run_pb2.Run]],
    *,
    registry: RegistryPort,
    context: Callable[[], context_pb2.UserContext],
    result_json: str,
    end: TerminalEvent | None,
    log: Log,
) -> EndRecord:
    """RUNNING → COMPLETING → COMPLETED in two calls.

    A registry older than ``TransitionRun.through_completing`` refuses
    RUNNING → COMPLETED and the run stays RUNNING (rolling upgrades).
    """
    try:
        for state in (run_pb2.RUN_STATE_COMPLETING, run_pb2.RUN_STATE_COMPLETED):
            try:
                end_event = end if state == run_pb2.RUN_STATE_COMPLETED else None
                await call(
                    partial(
                        registry.transition, context(), state, result_json=result_json, end_event=end_event
                    )
                )
            except FailedPrecondition:
                run = await call(partial(registry.get_run, context()))
                if run.state != state:  # not a retried attempt that had gone through
                    if run.state in names.TERMINAL_STATES:
                        return EndRecord.ENDED_ELSEWHERE
                    return EndRecord.UNCONFIRMED
        return EndRecord.RECORDED
    except RunwireError as exc:
        log.error("could not record the end of the run", extra={"error": exc.message})
        return EndRecord.UNCONFIRMED
