"""In-memory stand-ins for the registry and the bridge (unit tests, no network).

They follow the contracts: the registry queues ``enqueue`` runs (``ABORTED``
on ``STARTING`` while an older run of the thread lives) and cancels the live
runs of a thread for ``interrupt``; the bridge is idempotent per
``(run_id, seq)``, assigns the next seq for ``seq = 0`` and ignores anything
after a run's terminal event. Both can be made unavailable for a while.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import SecretStr

from execution_service.catalog import AgentCatalog
from execution_service.engine import EngineConfig, RunEngine
from execution_service.identity import RunIdentity
from execution_service.outcomes import TerminalEvent
from execution_service.peers import CreatedRun
from execution_service.run_input import parse_input
from execution_service.servicer import ExecutionServicer
from execution_service.settings import ExecutionSettings
from execution_service.supervisor import RunSupervisor
from runwire.common.v1 import context_pb2, event_pb2, run_pb2
from runwire.execution.v1 import execution_pb2
from runwire_common import names
from runwire_common.attestation import ContextAttestor, generate_key_spec
from runwire_common.errors import (
    Aborted,
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    Unavailable,
)
from runwire_common.ids import new_id
from runwire_common.logs import bind

ALLOWED: dict[int, set[int] | frozenset[int]] = {
    run_pb2.RUN_STATE_STARTING: {run_pb2.RUN_STATE_PENDING},
    run_pb2.RUN_STATE_RUNNING: {run_pb2.RUN_STATE_STARTING},
    run_pb2.RUN_STATE_COMPLETING: {run_pb2.RUN_STATE_RUNNING},
    run_pb2.RUN_STATE_COMPLETED: {run_pb2.RUN_STATE_COMPLETING},
    # Entered and left (to running) only through request_input / answer_input, as in the registry.
    run_pb2.RUN_STATE_WAITING: frozenset(),
}


@dataclass
class StoredMessage:
    user_id: str
    thread_id: str
    message: run_pb2.ThreadMessage


class FakeRegistry:
    def __init__(self) -> None:
        self.runs: dict[str, run_pb2.Run] = {}
        self.heartbeats: list[str] = []
        self.transitions: list[tuple[str, str]] = []
        self.aborted: list[str] = []
        self.unavailable_transitions = 0  # the next N transitions fail with UNAVAILABLE
        self.lost_replies = 0  # the next N transitions apply, but the caller sees UNAVAILABLE
        self.transition_calls = 0
        self.create_keys: list[str] = []  # the create_key of every CreateRun
        self.end_events: dict[str, list[TerminalEvent]] = {}
        # False: behave like a registry that predates TransitionRun.through_completing.
        self.knows_through_completing = True
        self.inputs: dict[tuple[str, str], run_pb2.InputRequest] = {}  # (run_id, request_id) →
        self.messages: list[StoredMessage] = []
        self.appended_runs: set[str] = set()
        self.append_calls = 0  # AppendMessages calls (a completed run stores its turn in its transition)
        self.refuse_messages = False  # the next transitions carrying messages are INVALID_ARGUMENT

    async def create_run(
        self,
        ctx: context_pb2.UserContext,
        *,
        agent: str,
        input_json: str,
        multitask_strategy: int,
        executor_id: str,
        timeout_seconds: int,
        initial_state: int = run_pb2.RUN_STATE_PENDING,
        create_key: str = "",
    ) -> CreatedRun:
        self.create_keys.append(create_key)
        live = [
            r for r in self.runs.values() if r.thread_id == ctx.thread_id and r.state in names.LIVE_STATES
        ]
        interrupted: list[run_pb2.Run] = []
        if live and multitask_strategy == run_pb2.MULTITASK_STRATEGY_INTERRUPT:
            for old in live:
                old.state = run_pb2.RUN_STATE_CANCELLED
                old.version += 1
                old.error.CopyFrom(run_pb2.RunError(code="cancelled", message="interrupted by a newer run"))
                interrupted.append(self._copy(old))
        elif live and multitask_strategy != run_pb2.MULTITASK_STRATEGY_ENQUEUE:
            raise FailedPrecondition(f"thread {ctx.thread_id!r} already has a live run")
        run = run_pb2.Run(
            run_id=new_id("run"),
            user_id=ctx.user_id,
            thread_id=ctx.thread_id,
            agent=agent,
            state=run_pb2.RUN_STATE_PENDING,
            input_json=input_json,
            executor_id=executor_id,
            timeout_seconds=timeout_seconds,
            version=1,
            multitask_strategy=multitask_strategy,  # type: ignore[arg-type]
        )
        self.runs[run.run_id] = run
        queued = live and multitask_strategy == run_pb2.MULTITASK_STRATEGY_ENQUEUE
        steps = (run_pb2.RUN_STATE_STARTING, run_pb2.RUN_STATE_RUNNING)
        for step in steps[: steps.index(initial_state) + 1] if initial_state in steps and not queued else ():
            run.state = step
            run.version += 1
            self.transitions.append((run.run_id, names.state_name(step)))
        return CreatedRun(run=self._copy(run), interrupted=tuple(interrupted))

    def _get(self, ctx: context_pb2.UserContext) -> run_pb2.Run:
        run = self.runs.get(ctx.run_id)
        if run is None or run.user_id != ctx.user_id:
            raise NotFound(f"run {ctx.run_id!r} not found")
        return run

    async def transition(
        self,
        ctx: context_pb2.UserContext,
        to_state: int,
        *,
        error: run_pb2.RunError | None = None,
        result_json: str = "",
        through_completing: bool = False,
        end_event: TerminalEvent | None = None,
        messages: Sequence[run_pb2.ThreadMessage] = (),
    ) -> run_pb2.Run:
        await asyncio.sleep(0)
        self.transition_calls += 1
        if end_event is not None:
            self.end_events.setdefault(ctx.run_id, []).append(end_event)
        if not self.knows_through_completing:
            through_completing = False
        if self.unavailable_transitions > 0:
            self.unavailable_transitions -= 1
            raise Unavailable("registry is unavailable (unavailable)")
        if messages and self.refuse_messages:
            raise InvalidArgument("messages[1].content must be at most 200000 characters")
        run = self._get(ctx)
        if to_state == run_pb2.RUN_STATE_STARTING and run.state == run_pb2.RUN_STATE_PENDING:
            older = list(self.runs.values())
            older = older[: older.index(run)]
            if any(r.thread_id == run.thread_id and r.state in names.LIVE_STATES for r in older):
                self.aborted.append(run.run_id)
                raise Aborted("the thread is busy; the run is queued")
        allowed: set[int] | frozenset[int] = ALLOWED.get(to_state, frozenset(names.LIVE_STATES))
        if through_completing:
            assert to_state == run_pb2.RUN_STATE_COMPLETED, "through_completing is only for COMPLETED"
            allowed = {run_pb2.RUN_STATE_RUNNING, run_pb2.RUN_STATE_COMPLETING}
        if run.state not in allowed:
            raise FailedPrecondition(
                f"cannot move from {names.state_name(run.state)} to {names.state_name(to_state)}"
            )
        if run.state == run_pb2.RUN_STATE_RUNNING and through_completing:
            run.version += 1
            self.transitions.append((ctx.run_id, "completing"))
        run.state = to_state  # type: ignore[assignment]
        run.version += 1
        run.ClearField("pending_input")  # the registry shows it only while the run waits
        if error is not None:
            run.error.CopyFrom(error)
        if result_json:
            run.result_json = result_json
        self.transitions.append((ctx.run_id, names.state_name(to_state)))
        if messages:
            assert to_state == run_pb2.RUN_STATE_COMPLETED, "messages are only for COMPLETED"
            self._store(ctx, run, messages)
        if self.lost_replies > 0:
            self.lost_replies -= 1
            raise Unavailable("registry reply lost (deadline_exceeded)")
        out = run_pb2.Run()
        out.CopyFrom(run)
        return out

    async def heartbeat(self, ctx: context_pb2.UserContext, *, executor_id: str) -> run_pb2.Run:
        self.heartbeats.append(ctx.run_id)
        return self._copy(self._get(ctx))

    async def get_run(self, ctx: context_pb2.UserContext) -> run_pb2.Run:
        return self._copy(self._get(ctx))

    async def request_input(self, ctx: context_pb2.UserContext, request: run_pb2.InputRequest) -> run_pb2.Run:
        await asyncio.sleep(0)
        run = self._get(ctx)
        if not request.request_id:
            raise InvalidArgument("input.request_id is required")
        if run.state != run_pb2.RUN_STATE_RUNNING:
            raise FailedPrecondition(f"a {names.state_name(run.state)} run cannot move to waiting")
        key = (run.run_id, request.request_id)
        if key in self.inputs:
            raise AlreadyExists(f"run {run.run_id!r} already asked request {request.request_id!r}")
        stored = run_pb2.InputRequest()
        stored.CopyFrom(request)
        stored.ClearField("response_json")
        stored.ClearField("answered_at")
        stored.created_at.GetCurrentTime()
        self.inputs[key] = stored
        run.state = run_pb2.RUN_STATE_WAITING
        run.version += 1
        run.pending_input.CopyFrom(stored)
        self.transitions.append((run.run_id, "waiting"))
        return self._copy(run)

    def _input(
        self, ctx: context_pb2.UserContext, request_id: str
    ) -> tuple[run_pb2.Run, run_pb2.InputRequest]:
        run = self._get(ctx)
        stored = self.inputs.get((run.run_id, request_id))
        if stored is None:
            raise NotFound(f"input request {request_id!r} not found")
        return run, stored

    async def get_input(
        self, ctx: context_pb2.UserContext, request_id: str
    ) -> tuple[run_pb2.InputRequest, run_pb2.Run]:
        await asyncio.sleep(0)
        run, stored = self._input(ctx, request_id)
        out = run_pb2.InputRequest()
        out.CopyFrom(stored)
        return out, self._copy(run)

    async def answer_input(
        self, ctx: context_pb2.UserContext, request_id: str, response_json: str
    ) -> tuple[run_pb2.Run, run_pb2.InputRequest]:
        await asyncio.sleep(0)
        run, stored = self._input(ctx, request_id)
        if stored.response_json:
            raise FailedPrecondition(f"input request {request_id!r} was already answered")
        if run.state != run_pb2.RUN_STATE_WAITING:
            raise FailedPrecondition(f"run is {names.state_name(run.state)}, no longer waiting for input")
        stored.response_json = response_json
        stored.answered_at.GetCurrentTime()
        run.state = run_pb2.RUN_STATE_RUNNING
        run.version += 1
        run.ClearField("pending_input")
        self.transitions.append((run.run_id, "running"))
        out = run_pb2.InputRequest()
        out.CopyFrom(stored)
        return self._copy(run), out

    async def append_messages(
        self, ctx: context_pb2.UserContext, messages: Sequence[run_pb2.ThreadMessage]
    ) -> int:
        await asyncio.sleep(0)
        run = self._get(ctx)
        if ctx.thread_id != run.thread_id:
            raise NotFound(f"run {run.run_id!r} not found in thread {ctx.thread_id!r}")
        self.append_calls += 1
        return self._store(ctx, run, messages)

    def _store(
        self, ctx: context_pb2.UserContext, run: run_pb2.Run, messages: Sequence[run_pb2.ThreadMessage]
    ) -> int:
        if run.run_id in self.appended_runs:
            return 0
        self.appended_runs.add(run.run_id)
        for message in messages:
            stored = run_pb2.ThreadMessage()
            stored.CopyFrom(message)
            stored.run_id = run.run_id
            stored.created_at.GetCurrentTime()
            self.messages.append(StoredMessage(ctx.user_id, run.thread_id, stored))
        return len(messages)

    async def get_thread(
        self, ctx: context_pb2.UserContext, *, max_messages: int = 0
    ) -> tuple[run_pb2.Thread, list[run_pb2.ThreadMessage]]:
        await asyncio.sleep(0)
        runs = [r for r in self.runs.values() if r.user_id == ctx.user_id and r.thread_id == ctx.thread_id]
        if not runs:
            raise NotFound(f"thread {ctx.thread_id!r} not found")
        stored = [
            m.message for m in self.messages if m.user_id == ctx.user_id and m.thread_id == ctx.thread_id
        ]
        if max_messages > 0:
            stored = stored[-max_messages:]
        title = next(
            (
                m.message.content
                for m in self.messages
                if m.message.role == run_pb2.MESSAGE_ROLE_USER
                and m.user_id == ctx.user_id
                and m.thread_id == ctx.thread_id
            ),
            "",
        )
        thread = run_pb2.Thread(
            thread_id=ctx.thread_id,
            user_id=ctx.user_id,
            tenant_id=runs[0].tenant_id,
            last_run_state=runs[-1].state,
            title=title[:80],
        )
        out: list[run_pb2.ThreadMessage] = []
        for message in stored:
            copy = run_pb2.ThreadMessage()
            copy.CopyFrom(message)
            out.append(copy)
        return thread, out

    @staticmethod
    def _copy(run: run_pb2.Run) -> run_pb2.Run:
        out = run_pb2.Run()
        out.CopyFrom(run)
        return out


class FakeBridge:
    def __init__(self) -> None:
        self.events: list[event_pb2.RunEvent] = []
        self.calls = 0
        self.batch_sizes: list[int] = []
        self.ignored: list[event_pb2.RunEvent] = []
        self.unavailable_calls = 0  # the next N calls fail with UNAVAILABLE

    async def publish(
        self, ctx: context_pb2.UserContext, events: Sequence[event_pb2.RunEvent]
    ) -> Sequence[str]:
        await asyncio.sleep(0)
        self.calls += 1
        self.batch_sizes.append(len(events))
        if self.unavailable_calls > 0:
            self.unavailable_calls -= 1
            raise Unavailable("bridge is unavailable (unavailable)")
        ids: list[str] = []
        for event in events:
            assert event.user_id == ctx.user_id
            assert event.run_id == ctx.run_id
            stored = self.of(event.run_id)
            last = max((e.seq for e in stored), default=0)
            ended = any(e.type in names.TERMINAL_EVENT_TYPES for e in stored)
            if ended or 0 < event.seq <= last:
                self.ignored.append(event)
                ids.append("")
                continue
            copy = event_pb2.RunEvent()
            copy.CopyFrom(event)
            if copy.seq == 0:
                copy.seq = last + 1
            self.events.append(copy)
            ids.append(str(len(self.events)))
        return ids

    def of(self, run_id: str) -> list[event_pb2.RunEvent]:
        return [e for e in self.events if e.run_id == run_id]

    def types(self, run_id: str) -> list[str]:
        return [e.type for e in self.of(run_id)]

    def payloads(self, run_id: str, event_type: str | None = None) -> list[dict[str, Any]]:
        return [
            json.loads(e.payload_json) for e in self.of(run_id) if event_type is None or e.type == event_type
        ]


class Harness:
    """Builds engines wired to the fakes, as the servicer would."""

    def __init__(
        self,
        *,
        catalog: AgentCatalog | None = None,
        config: EngineConfig | None = None,
        user: str = "user_alice_0123456789",
        roles: Sequence[str] = (),
    ) -> None:
        self.catalog = catalog or AgentCatalog.discover(entry_points=False)
        self.config = config or EngineConfig(
            executor_id="exec_unit_tests_000000",
            heartbeat_interval_s=0.05,
            cancel_grace_s=0.5,
            tool_timeout_s=1.0,
        )
        self.registry = FakeRegistry()
        self.bridge = FakeBridge()
        self.attestor = ContextAttestor.from_spec(generate_key_spec())
        self.user = user
        self.roles = tuple(roles)

    async def engine(
        self,
        agent: str,
        agent_input: dict[str, Any],
        *,
        timeout_s: float = 30.0,
        user: str | None = None,
        thread: str | None = None,
        strategy: int = 0,
        initial_state: int = run_pb2.RUN_STATE_RUNNING,
    ) -> RunEngine:
        spec = self.catalog.agent(agent)
        run_input = parse_input(json.dumps(agent_input))
        spec.check_input(run_input.value)
        ctx = context_pb2.UserContext(
            user_id=user or self.user,
            thread_id=thread or new_id("thread"),
            request_id=new_id("req"),
            roles=self.roles,
        )
        created = await self.registry.create_run(
            ctx,
            agent=spec.name,
            input_json=run_input.redacted_json,
            multitask_strategy=strategy,
            executor_id=self.config.executor_id,
            timeout_seconds=int(timeout_s),
            initial_state=initial_state,
        )
        run = created.run
        ctx.run_id = run.run_id
        return RunEngine(
            spec=spec,
            run=run,
            identity=RunIdentity(ctx, attestor=self.attestor, ttl_s=120),
            run_input=run_input,
            timeout_s=timeout_s,
            tools=self.catalog.tools_of(spec),
            registry=self.registry,
            bridge=self.bridge,
            config=self.config,
            log=bind(logging.getLogger("test.execution"), ctx),
        )

    async def run(self, agent: str, agent_input: dict[str, Any], **options: Any) -> str:
        engine = await self.engine(agent, agent_input, **options)
        await engine.execute()
        return engine.run_id

    def state(self, run_id: str) -> str:
        return names.state_name(self.registry.runs[run_id].state)


@dataclass
class ServicerUnderTest:
    """An ExecutionServicer over fakes, its supervisor, and a StartRun request of one new user."""

    servicer: ExecutionServicer
    supervisor: RunSupervisor
    attestor: ContextAttestor

    def start_request(self, input_json: str, agent: str = "scripted") -> execution_pb2.StartRunRequest:
        ctx = self.attestor.mint(
            context_pb2.UserContext(
                user_id=new_id("user"), thread_id=new_id("thread"), request_id=new_id("req")
            ),
            ttl_s=60,
        )
        return execution_pb2.StartRunRequest(user_context=ctx, agent=agent, input_json=input_json)


def servicer_over(registry: FakeRegistry, bridge: FakeBridge) -> ServicerUnderTest:
    """The real StartRun path with fake peers: the registry and bridge given, a fresh key."""
    key_spec = generate_key_spec()
    attestor = ContextAttestor.from_spec(key_spec)
    settings = ExecutionSettings(
        attestation_keys=SecretStr(key_spec), registry_target="127.0.0.1:1", bridge_target="127.0.0.1:2"
    )
    supervisor = RunSupervisor(log=logging.getLogger("test"))
    servicer = ExecutionServicer(
        settings=settings,
        attestor=attestor,
        catalog=AgentCatalog.discover(entry_points=False),
        supervisor=supervisor,
        registry=registry,
        bridge=bridge,
    )
    return ServicerUnderTest(servicer, supervisor, attestor)
