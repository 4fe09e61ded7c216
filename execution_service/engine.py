"""The engine of one run: its lifecycle from ``pending`` to one terminal event.

One :class:`RunEngine` is built per ``StartRun`` from the call's context, with
its own emitter, dispatcher and cancellation signal; it shares nothing with
other runs except the immutable catalog and the process's channels. It moves
the run through the registry (``starting → running → completing →
completed``, or ``failed`` / ``timeout`` / ``cancelled`` / ``dead``) in as
few calls as the contract allows: a run is usually created ``running``
(``CreateRun.initial_state``; a queued run is created ``pending``) and
completes through ``completing`` in one call
(``TransitionRun.through_completing``), so a run costs two registry writes.
It heartbeats the run while it lives (queued runs included), and enforces the
execution timeout and the cancel grace period.

Terminal-event ownership: the engine announces the end of its run only when
its own terminal transition won in the registry, and always transitions
before it announces. When the run already ended elsewhere (cancelled through
another replica, interrupted by a newer run, declared dead) the engine stops
the agent and publishes nothing more: whoever ended the run announces it.

Stopping an agent is cooperative first (the cancellation signal, for
``cancel_grace_s``), then hard (the agent's task is cancelled). Three things
stop a run: a cancel (ends ``cancelled``), the end of the run elsewhere
(silent), and the executor's shutdown (ends ``dead`` / ``executor_lost``,
within the time the drain has left).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

from execution_service.catalog import AgentSpec, ToolSpec
from execution_service.dispatcher import ToolDispatcher
from execution_service.emitter import Publish, RawJson, RunEmitter
from execution_service.ending import record_end
from execution_service.identity import RunIdentity
from execution_service.memory import ThreadHistory, messages_of_run
from execution_service.outcomes import Outcome, State, failure, outcome_of_agent
from execution_service.peers import BridgePort, RegistryPort
from execution_service.retry import Backoff
from execution_service.run_input import RunInput
from execution_service.sdk import AgentResult, Cancellation, RunContext
from execution_service.waiting import INPUT_TIMEOUT_CODE, InputWaiter, WaitConfig
from runwire.common.v1 import context_pb2, event_pb2, run_pb2
from runwire_common import names
from runwire_common.errors import Aborted, FailedPrecondition, NotFound, RunwireError
from runwire_common.owners import owner_of

SHUTDOWN_REASON = "the executor is shutting down"
T = TypeVar("T")


@dataclass(frozen=True)
class EngineConfig:
    """The settings an engine needs (a slice of ``ExecutionSettings``)."""

    executor_id: str
    heartbeat_interval_s: float = 2.0
    cancel_grace_s: float = 5.0
    hard_stop_s: float = 1.0  # after cancelling the agent's task, how long to wait for it
    tool_timeout_s: float = 10.0
    event_queue_size: int = 1000
    publish_batch_size: int = 100
    max_payload_bytes: int = 64 * 1024
    publish_retry_s: float = 20.0
    registry_retry_s: float = 10.0
    queue_poll_initial_s: float = 0.2
    queue_poll_max_s: float = 1.0
    input_timeout_s: float = 600.0
    input_poll_s: float = 0.5


def publisher(bridge: BridgePort, identity: RunIdentity) -> Publish:
    """The emitter's way to the bridge: the run's batches, as the run's owner.

    A function of its own rather than a method of the engine, so the emitter
    holds no reference back to the engine that holds it.
    """

    async def publish(events: Sequence[event_pb2.RunEvent]) -> None:
        await bridge.publish(identity.context(), events)

    return publish


class RunEngine:
    """Runs one agent run to its end, announcing it only if it owns that end."""

    def __init__(
        self,
        *,
        spec: AgentSpec,
        run: run_pb2.Run,
        identity: RunIdentity,
        run_input: RunInput,
        timeout_s: float,
        tools: Mapping[str, ToolSpec],
        registry: RegistryPort,
        bridge: BridgePort,
        config: EngineConfig,
        log: logging.LoggerAdapter,  # type: ignore[type-arg]
    ) -> None:
        user = identity.context()
        self.run_id = run.run_id
        self.owner = owner_of(user)
        self._spec = spec
        self._identity = identity
        self._thread_id = run.thread_id or user.thread_id
        self._input = run_input
        self._timeout_s = timeout_s
        self._registry = registry
        self._bridge = bridge
        self._config = config
        self._log = log
        self._registry_retry = Backoff(budget_s=config.registry_retry_s)
        self.cancellation = Cancellation()
        self.emitter = RunEmitter(
            user=user,
            run_id=self.run_id,
            thread_id=self._thread_id,
            agent=spec.name,
            publish=publisher(bridge, identity),
            log=log,
            max_pending=config.event_queue_size,
            max_batch=config.publish_batch_size,
            max_payload_bytes=config.max_payload_bytes,
            retry=Backoff(budget_s=config.publish_retry_s),
        )
        self.inputs = InputWaiter(
            registry=registry,
            context=identity.context,
            emitter=self.emitter,
            cancellation=self.cancellation,
            config=WaitConfig(input_timeout_s=config.input_timeout_s, poll_s=config.input_poll_s),
            on_ended=lambda ended: self.stop_silently(ended, ended.error.message or "the run ended"),
            on_expired=self._input_expired,
            log=log,
        )
        self.dispatcher = ToolDispatcher(
            user=user,
            run_id=self.run_id,
            thread_id=self._thread_id,
            tools=tools,
            emitter=self.emitter,
            cancellation=self.cancellation,
            default_timeout_s=config.tool_timeout_s,
            log=log,
            approver=self.inputs,
        )
        self._memory = ThreadHistory(registry=registry, context=identity.context, run_id=self.run_id)
        # The state the registry created the run in (CreateRun.initial_state): PENDING when
        # it queues behind its thread (or the registry predates initial_state).
        self._created_state = run.state
        self._external: run_pb2.Run | None = None  # the run as it ended elsewhere
        self._shutdown_within_s: float | None = None  # set when the executor shuts down
        self._unanswered: str | None = None  # set when the owner did not answer in time
        self._hurry = asyncio.Event()
        self._started_emitted = False
        self._started_at = time.monotonic()
        self._finished = asyncio.Event()

    @property
    def _user(self) -> context_pb2.UserContext:
        """The run's attested context (minted once per run; re-minted only near its expiry)."""
        return self._identity.context()

    # --- control from the supervisor / servicer ---

    def request_cancel(self, reason: str) -> None:
        """Cancel the run: stop the agent, record ``cancelled``, announce ``agent_cancelled``."""
        if self.cancellation.request(reason):
            self._log.info("cancel requested", extra={"reason": reason})

    def stop_silently(self, run: run_pb2.Run, reason: str) -> None:
        """The run already ended elsewhere (``run`` is terminal): stop the agent, announce nothing."""
        if self._external is None:
            self._external = run
            self._log.info("run ended elsewhere", extra={"state": names.state_name(run.state)})
        self.cancellation.request(reason)

    def _input_expired(self, reason: str) -> None:
        """The owner did not answer in time: stop the agent; the run ends ``timeout``."""
        if self._unanswered is None:
            self._unanswered = reason
            self._log.info("no answer from the user in time")
        self.cancellation.request(reason)

    def request_shutdown(self, within_s: float) -> None:
        """The executor goes away: stop the agent and end the run within ``within_s``."""
        if self._shutdown_within_s is None:
            self._shutdown_within_s = within_s
        self.cancellation.request(SHUTDOWN_REASON)
        self._hurry.set()

    @property
    def finished(self) -> bool:
        return self._finished.is_set()

    async def wait_finished(self, within_s: float) -> bool:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._finished.wait(), timeout=max(0.0, within_s))
        return self._finished.is_set()

    # --- the lifecycle ---

    async def execute(self) -> None:
        """Drive the run to its end. Never raises except on hard cancellation."""
        heartbeat = asyncio.create_task(self._heartbeat_loop(), name=f"heartbeat:{self.run_id}")
        try:
            try:
                outcome = await self._lifecycle()
            except RunwireError as exc:
                self._log.error("run could not proceed", extra={"error": exc.message})
                outcome = failure("executor_error", "the run could not proceed: a backing service failed")
            heartbeat.cancel()
            await self._finish(outcome)
        except asyncio.CancelledError:
            self.emitter.abort()
            raise
        except Exception:  # noqa: BLE001 - an engine never takes the process down
            self._log.exception("run engine failed")
            self.emitter.abort()
        finally:
            heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await heartbeat
            # The waiter's callbacks into this engine are the run's last reference cycle: without
            # them, reference counting frees the run's objects at once instead of the cyclic
            # garbage collector, whose pauses would hold up every other run's events.
            self.inputs.close()
            self._finished.set()

    async def _lifecycle(self) -> Outcome:
        if self._created_state == run_pb2.RUN_STATE_PENDING:
            ended = await self._advance(run_pb2.RUN_STATE_STARTING)
            if ended is not None:
                return ended
        await self._emit_started()
        if self._created_state != run_pb2.RUN_STATE_RUNNING:
            ended = await self._advance(run_pb2.RUN_STATE_RUNNING)
            if ended is not None:
                return ended
        return await self._run_agent()

    async def _advance(self, state: State) -> Outcome | None:
        """Transition to ``state``; how the run ended instead, if it was stopped or ended elsewhere.

        A queued run (multitask ``enqueue``) is answered ``ABORTED`` until its
        thread frees: it waits with backoff and asks again, heartbeated and
        cancellable all along.
        """
        delay = self._config.queue_poll_initial_s
        while not self.cancellation.requested:
            try:
                await self._registry.transition(self._user, state)
                return None
            except Aborted:
                self._log.debug("run is queued behind another run of its thread")
            except FailedPrecondition:
                run = await self._registry.get_run(self._user)
                if run.state not in names.TERMINAL_STATES:
                    raise
                self.stop_silently(run, run.error.message or names.state_name(run.state))
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.cancellation.wait(), timeout=delay)
            delay = min(delay * 2, self._config.queue_poll_max_s)
        return self._stopped()

    async def _run_agent(self) -> Outcome:
        loop = asyncio.get_running_loop()
        ctx = RunContext(
            user=self._user,
            run_id=self.run_id,
            thread_id=self._thread_id,
            input=self._input.value,
            emitter=self.emitter,
            tools=self.dispatcher,
            cancellation=self.cancellation,
            deadline=loop.time() + self._timeout_s,
            inputs=self.inputs,
            memory=self._memory,
        )
        agent = self._spec.new_agent()
        task = asyncio.create_task(agent.run(ctx), name=f"agent:{self.run_id}")
        stop = asyncio.create_task(self.cancellation.wait())
        deadline = loop.time() + self._timeout_s
        try:
            while True:
                # Time spent waiting for the owner does not count against the execution timeout.
                remaining = deadline + self.inputs.waited_s - loop.time()
                if remaining <= 0 and not self.inputs.waiting:
                    break
                done, _ = await asyncio.wait(
                    (task, stop),
                    timeout=remaining if remaining > 0 else self._config.input_poll_s,
                    return_when=asyncio.FIRST_COMPLETED,
                )
                if self.cancellation.requested:
                    await self._let_stop(task)
                    return self._stopped()
                if task in done:
                    return self._completed(outcome_of_agent(task, self._log), task)
            await self._hard_stop(task, self._config.hard_stop_s)
            return Outcome.timed_out(self._timeout_s)
        finally:
            stop.cancel()
            await asyncio.wait((stop,))
            await self._hard_stop(task, self._config.hard_stop_s)

    def _completed(self, outcome: Outcome, task: asyncio.Task[AgentResult]) -> Outcome:
        """A completed run's outcome carries the messages it adds to its thread."""
        if outcome.state != run_pb2.RUN_STATE_COMPLETED:
            return outcome
        try:
            messages = messages_of_run(task.result(), run_input=self._input.value, run_id=self.run_id)
        except ValueError as exc:
            self._log.error("agent returned invalid messages", extra={"error": str(exc)})
            return failure("invalid_result", "the agent returned invalid conversation messages")
        return dataclasses.replace(outcome, messages=tuple(messages))

    def _stopped(self) -> Outcome:
        """The outcome of a run that was stopped."""
        if self._external is not None:
            return Outcome.from_run(self._external)
        if self._shutdown_within_s is not None:
            return Outcome.executor_lost()
        if self._unanswered is not None:
            return Outcome(
                state=run_pb2.RUN_STATE_TIMEOUT, error_code=INPUT_TIMEOUT_CODE, error_message=self._unanswered
            )
        return Outcome.cancelled(self.cancellation.reason)

    async def _let_stop(self, task: asyncio.Task[AgentResult]) -> None:
        """Cooperative first: the agent gets the grace period to stop by itself, then a hard stop.

        A shutdown cuts the grace period short so the run still ends in time.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._config.cancel_grace_s
        hurry = asyncio.create_task(self._hurry.wait())
        try:
            while not task.done():
                if self._shutdown_within_s is not None:
                    deadline = min(deadline, loop.time() + self._shutdown_within_s / 3)
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                waiting = (task,) if hurry.done() else (task, hurry)
                await asyncio.wait(waiting, timeout=remaining, return_when=asyncio.FIRST_COMPLETED)
        finally:
            hurry.cancel()
            await asyncio.wait((hurry,))
        wait_s = self._config.hard_stop_s
        if self._shutdown_within_s is not None:
            wait_s = min(wait_s, self._shutdown_within_s / 3)
        await self._hard_stop(task, wait_s)

    async def _hard_stop(self, task: asyncio.Task[AgentResult], wait_s: float) -> None:
        if task.done():
            if not task.cancelled():
                task.exception()  # retrieved, so asyncio does not log it
            return
        task.cancel()
        await asyncio.wait((task,), timeout=wait_s)
        if not task.done():
            self._log.error("agent ignores cancellation; abandoning it")

    # --- the end: record, then announce (only if this engine owns the end) ---

    async def _finish(self, outcome: Outcome) -> None:
        if outcome.external:
            await self._end_silently(outcome)
            return
        # Built before the transition, which hands it to the registry's run-end outbox: should
        # its publication below never reach the bridge, the registry delivers this very event.
        end = self.emitter.terminal(outcome, duration_ms=int((time.monotonic() - self._started_at) * 1000))
        recorded = await record_end(
            outcome,
            registry=self._registry,
            context=self._identity.context,
            retry=self._registry_retry,
            log=self._log,
            end=end,
        )
        if not recorded.announce:
            await self._end_silently(outcome)
            return
        await self._emit_started()
        await self.emitter.emit_end(end)
        await self.emitter.aclose()
        self._log.info("run finished", extra={"state": names.state_name(outcome.state)})

    async def _end_silently(self, outcome: Outcome) -> None:
        # Whoever ended the run announces it; what is still queued here is flushed, and
        # the bridge ignores anything that arrives after the run's terminal event.
        await self.emitter.aclose()
        self._log.info(
            "run ended elsewhere; not announcing", extra={"state": names.state_name(outcome.state)}
        )

    async def _emit_started(self) -> None:
        if self._started_emitted:
            return
        self._started_emitted = True
        await self.emitter.emit_reserved(
            names.AGENT_STARTED,
            # The input as the servicer parsed and redacted it, spliced in without encoding it again.
            {"message": f"agent {self._spec.name} started", "input": RawJson(self._input.redacted_json)},
        )

    # --- liveness ---

    async def _heartbeat_loop(self) -> None:
        interval = self._config.heartbeat_interval_s
        while True:
            await asyncio.sleep(interval)
            try:
                run = await self._registry.heartbeat(self._user, executor_id=self._config.executor_id)
            except (FailedPrecondition, NotFound):
                try:
                    run = await self._registry.get_run(self._user)
                except RunwireError as exc:
                    self._log.warning("heartbeat failed", extra={"error": exc.message})
                    continue
            except RunwireError as exc:
                self._log.warning("heartbeat failed", extra={"error": exc.message})
                continue
            if run.state in names.TERMINAL_STATES:
                # Ended elsewhere (cancelled through another replica, interrupted, declared dead).
                self.stop_silently(run, run.error.message or f"run is {names.state_name(run.state)}")
                return
            if run.cancel_requested:
                self.request_cancel(run.error.message or "cancel requested")
