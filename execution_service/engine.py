"""The engine of one run: its lifecycle from ``pending`` to one terminal event.

One :class:`RunEngine` is built per ``StartRun`` from the call's context, with
its own emitter, dispatcher and cancellation signal; it shares nothing with
other runs except the immutable catalog and the process's channels. It moves
the run through the registry (``starting → running → completing →
completed``, or ``failed`` / ``timeout`` / ``cancelled``), always transitions
the state before emitting the terminal event, heartbeats the run while it
lives, and enforces the execution timeout and the cancel grace period.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from execution_service.catalog import AgentSpec, ToolSpec
from execution_service.dispatcher import ToolDispatcher
from execution_service.emitter import RunEmitter
from execution_service.outcomes import Outcome, State, terminal_event
from execution_service.peers import BridgePort, RegistryPort
from execution_service.redaction import redact, redact_text
from execution_service.sdk import AgentFailure, AgentResult, Cancellation, RunCancelled, RunContext
from runwire.common.v1 import context_pb2, event_pb2, run_pb2
from runwire_common import names
from runwire_common.errors import FailedPrecondition, NotFound, RunwireError


@dataclass(frozen=True)
class EngineConfig:
    """The settings an engine needs (a slice of ``ExecutionSettings``)."""

    executor_id: str
    heartbeat_interval_s: float = 2.0
    cancel_grace_s: float = 5.0
    tool_timeout_s: float = 10.0
    event_queue_size: int = 1000
    publish_batch_size: int = 100
    max_payload_bytes: int = 64 * 1024


class RunEngine:
    """Runs one agent run to its single terminal event."""

    def __init__(
        self,
        *,
        spec: AgentSpec,
        run: run_pb2.Run,
        user: context_pb2.UserContext,
        agent_input: Mapping[str, Any],
        timeout_s: float,
        tools: Mapping[str, ToolSpec],
        registry: RegistryPort,
        bridge: BridgePort,
        config: EngineConfig,
        log: logging.LoggerAdapter,  # type: ignore[type-arg]
    ) -> None:
        self.run_id = run.run_id
        self.user_id = user.user_id
        self._spec = spec
        self._user = user
        self._thread_id = run.thread_id or user.thread_id
        self._input = dict(agent_input)
        self._timeout_s = timeout_s
        self._registry = registry
        self._bridge = bridge
        self._config = config
        self._log = log
        self.cancellation = Cancellation()
        self.emitter = RunEmitter(
            user=user,
            run_id=self.run_id,
            thread_id=self._thread_id,
            agent=spec.name,
            publish=self._publish,
            log=log,
            max_pending=config.event_queue_size,
            max_batch=config.publish_batch_size,
            max_payload_bytes=config.max_payload_bytes,
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
        )
        self._external: run_pb2.Run | None = None
        self._started_emitted = False
        self._started_at = time.monotonic()
        self._finished = asyncio.Event()

    # --- control from the supervisor / servicer ---

    def request_cancel(self, reason: str) -> None:
        if self.cancellation.request(reason):
            self._log.info("cancel requested", extra={"reason": reason})

    @property
    def finished(self) -> bool:
        return self._finished.is_set()

    async def wait_finished(self, within_s: float) -> bool:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._finished.wait(), timeout=within_s)
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
                outcome = Outcome(
                    state=run_pb2.RUN_STATE_FAILED,
                    error_code="executor_error",
                    error_message="the run could not proceed: a backing service failed",
                )
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
            self._finished.set()

    async def _lifecycle(self) -> Outcome:
        external = await self._advance(run_pb2.RUN_STATE_STARTING)
        await self._emit_started()
        if external is not None:
            return Outcome.from_run(external)
        if self.cancellation.requested:
            return self._cancelled()
        external = await self._advance(run_pb2.RUN_STATE_RUNNING)
        if external is not None:
            return Outcome.from_run(external)
        return await self._run_agent()

    async def _advance(self, state: State) -> run_pb2.Run | None:
        """Transition to ``state``; the run if it already ended elsewhere, else ``None``."""
        while True:
            try:
                await self._registry.transition(self._user, state)
                return None
            except FailedPrecondition:
                run = await self._registry.get_run(self._user)
                if run.state in names.TERMINAL_STATES:
                    return run
                if state != run_pb2.RUN_STATE_STARTING or run.state != run_pb2.RUN_STATE_PENDING:
                    raise
            # Queued behind another run of the thread (multitask "enqueue"): wait, stay cancellable.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.cancellation.wait(), timeout=self._config.heartbeat_interval_s)
            if self.cancellation.requested:
                return self._external

    async def _run_agent(self) -> Outcome:
        loop = asyncio.get_running_loop()
        ctx = RunContext(
            user=self._user,
            run_id=self.run_id,
            thread_id=self._thread_id,
            input=self._input,
            emitter=self.emitter,
            tools=self.dispatcher,
            cancellation=self.cancellation,
            deadline=loop.time() + self._timeout_s,
        )
        agent = self._spec.new_agent()
        task = asyncio.create_task(agent.run(ctx), name=f"agent:{self.run_id}")
        stop = asyncio.create_task(self.cancellation.wait())
        try:
            done, _ = await asyncio.wait(
                (task, stop), timeout=self._timeout_s, return_when=asyncio.FIRST_COMPLETED
            )
            if task in done:
                return self._outcome_of(task)
            if stop in done:
                # Cooperative first: the agent gets a grace period to stop by itself.
                await asyncio.wait((task,), timeout=self._config.cancel_grace_s)
                await self._stop(task)
                return self._cancelled()
            await self._stop(task)
            return Outcome(
                state=run_pb2.RUN_STATE_TIMEOUT,
                error_code="timeout",
                error_message=f"the run exceeded its execution timeout of {self._timeout_s:g} s",
            )
        finally:
            stop.cancel()
            await asyncio.wait((stop,))
            await self._stop(task)

    async def _stop(self, task: asyncio.Task[AgentResult]) -> None:
        if task.done():
            if not task.cancelled():
                task.exception()  # retrieved, so asyncio does not log it
            return
        task.cancel()
        await asyncio.wait((task,), timeout=self._config.cancel_grace_s)
        if not task.done():
            self._log.error("agent ignores cancellation; abandoning it")

    def _cancelled(self) -> Outcome:
        if self._external is not None:
            return Outcome.from_run(self._external)
        return Outcome(
            state=run_pb2.RUN_STATE_CANCELLED,
            error_code="cancelled",
            error_message=self.cancellation.reason or "cancelled",
        )

    def _outcome_of(self, task: asyncio.Task[AgentResult]) -> Outcome:
        if self.cancellation.requested:
            return self._cancelled()
        if task.cancelled():
            return self._cancelled()
        exc = task.exception()
        if isinstance(exc, RunCancelled):
            return self._cancelled()
        if isinstance(exc, AgentFailure):
            return Outcome(
                state=run_pb2.RUN_STATE_FAILED,
                error_code=exc.code,
                error_message=redact_text(exc.message),
            )
        if exc is not None:
            self._log.error("agent raised", exc_info=exc)
            return Outcome(
                state=run_pb2.RUN_STATE_FAILED,
                error_code="internal_error",
                error_message="the agent failed unexpectedly",
            )
        result: object = task.result()
        if not isinstance(result, AgentResult) or not isinstance(result.final_response, str):
            return Outcome(
                state=run_pb2.RUN_STATE_FAILED,
                error_code="invalid_result",
                error_message="the agent returned an invalid result",
            )
        try:
            json.dumps(result.result, allow_nan=False)
        except (TypeError, ValueError):
            return Outcome(
                state=run_pb2.RUN_STATE_FAILED,
                error_code="invalid_result",
                error_message="the agent returned a result that is not JSON",
            )
        return Outcome(
            state=run_pb2.RUN_STATE_COMPLETED,
            result=redact(result.result),
            final_response=result.final_response,
        )

    # --- the end: record, then announce ---

    async def _finish(self, outcome: Outcome) -> None:
        await self._emit_started()
        final = outcome if outcome.recorded else await self._record(outcome)
        duration_ms = int((time.monotonic() - self._started_at) * 1000)
        await self.emitter.emit_reserved(*terminal_event(final, duration_ms=duration_ms))
        await self.emitter.aclose()
        self._log.info("run finished", extra={"state": names.state_name(final.state)})

    async def _record(self, outcome: Outcome) -> Outcome:
        """Transition the registry to the outcome; the registry's view wins a race."""
        try:
            if outcome.state == run_pb2.RUN_STATE_COMPLETED:
                result_json = json.dumps(outcome.result)
                await self._registry.transition(
                    self._user, run_pb2.RUN_STATE_COMPLETING, result_json=result_json
                )
                await self._registry.transition(
                    self._user, run_pb2.RUN_STATE_COMPLETED, result_json=result_json
                )
            else:
                error = run_pb2.RunError(code=outcome.error_code, message=outcome.error_message)
                await self._registry.transition(self._user, outcome.state, error=error)
            return outcome
        except FailedPrecondition:
            try:
                run = await self._registry.get_run(self._user)
            except RunwireError:
                return outcome
            if run.state in names.TERMINAL_STATES and run.state != outcome.state:
                return Outcome.from_run(run)
            return outcome
        except RunwireError as exc:
            self._log.error("could not record the end of the run", extra={"error": exc.message})
            return outcome

    async def _emit_started(self) -> None:
        if self._started_emitted:
            return
        self._started_emitted = True
        await self.emitter.emit_reserved(
            names.AGENT_STARTED,
            {"message": f"agent {self._spec.name} started", "input": redact(self._input)},
        )

    async def _publish(self, events: Sequence[event_pb2.RunEvent]) -> None:
        await self._bridge.publish(self._user, events)

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
                # Ended elsewhere (cancelled through another replica, or declared dead).
                self._external = run
                self.request_cancel(run.error.message or f"run is {names.state_name(run.state)}")
                return
            if run.cancel_requested:
                self.request_cancel(run.error.message or "cancel requested")
