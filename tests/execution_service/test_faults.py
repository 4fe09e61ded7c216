"""Runs that survive faults, against in-memory fakes: ownership of the end, queues, outages."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import ClassVar

import pytest

from execution_service.announcer import Announcer
from execution_service.builtins import BUILTIN_AGENTS, BUILTIN_TOOLS
from execution_service.catalog import AgentCatalog
from execution_service.emitter import RunEmitter
from execution_service.engine import EngineConfig
from execution_service.outcomes import Outcome, failure
from execution_service.retry import Backoff
from execution_service.sdk import Agent, AgentResult, RunContext
from execution_service.supervisor import RunSupervisor
from runwire.common.v1 import context_pb2, event_pb2, run_pb2
from runwire_common.errors import Unavailable
from runwire_common.ids import new_id
from runwire_common.logs import bind
from tests.execution_service.fakes import Harness

TERMINAL = {"agent_completed", "agent_error", "agent_cancelled", "agent_death"}
CONFIG = EngineConfig(
    executor_id="exec_fault_tests_000000",
    heartbeat_interval_s=0.05,
    cancel_grace_s=0.4,
    hard_stop_s=0.3,
    tool_timeout_s=1.0,
    publish_retry_s=1.0,
    registry_retry_s=1.0,
    queue_poll_initial_s=0.02,
    queue_poll_max_s=0.1,
)


class Stubborn(Agent):
    """Ignores the cancellation signal; only a hard stop ends it."""

    name = "stubborn"
    tools: ClassVar[tuple[str, ...]] = ()

    async def run(self, ctx: RunContext) -> AgentResult:
        await ctx.emitter.thinking("not listening")
        await asyncio.sleep(30)
        return AgentResult(final_response="never")


def harness(*extra: type[Agent]) -> Harness:
    return Harness(catalog=AgentCatalog((*BUILTIN_AGENTS, *extra), BUILTIN_TOOLS), config=CONFIG)


def terminal_types(h: Harness, run_id: str) -> list[str]:
    return [t for t in h.bridge.types(run_id) if t in TERMINAL]


def assert_gapless(h: Harness, run_id: str) -> None:
    assert [e.seq for e in h.bridge.of(run_id)] == list(range(1, len(h.bridge.of(run_id)) + 1))


async def test_a_stubborn_agent_is_hard_stopped_after_the_grace_period_and_cancelled_once() -> None:
    h = harness(Stubborn)
    engine = await h.engine("stubborn", {})
    task = asyncio.create_task(engine.execute())
    await asyncio.sleep(0.1)
    loop = asyncio.get_running_loop()
    began = loop.time()
    engine.request_cancel("stop now")
    engine.request_cancel("stop again")
    await asyncio.wait_for(task, 3)
    assert loop.time() - began < CONFIG.cancel_grace_s + 0.3
    assert terminal_types(h, engine.run_id) == ["agent_cancelled"]
    assert h.bridge.payloads(engine.run_id)[-1] == {"reason": "stop now"}
    assert h.state(engine.run_id) == "cancelled"
    assert_gapless(h, engine.run_id)


async def test_a_stubborn_agent_of_a_run_ended_elsewhere_is_stopped_silently() -> None:
    h = harness(Stubborn)
    engine = await h.engine("stubborn", {})
    task = asyncio.create_task(engine.execute())
    await asyncio.sleep(0.1)
    ctx = context_pb2.UserContext(user_id=h.user, run_id=engine.run_id)
    dead = run_pb2.RunError(code="no_heartbeat", message="declared dead")
    await h.registry.transition(ctx, run_pb2.RUN_STATE_DEAD, error=dead)
    await asyncio.wait_for(task, CONFIG.cancel_grace_s + CONFIG.hard_stop_s + 1)
    assert terminal_types(h, engine.run_id) == []
    assert h.state(engine.run_id) == "dead"


async def test_the_engine_announces_nothing_when_its_terminal_transition_loses() -> None:
    h = harness()
    registry = h.registry

    class Raced(Agent):
        """Finishes just as another replica cancels the run."""

        name = "raced"

        async def run(self, ctx: RunContext) -> AgentResult:
            other = context_pb2.UserContext(user_id=ctx.user.user_id, run_id=ctx.run_id)
            error = run_pb2.RunError(code="cancelled", message="cancelled elsewhere")
            await registry.transition(other, run_pb2.RUN_STATE_CANCELLED, error=error)
            return AgentResult(final_response="done")

    h.catalog = AgentCatalog((*BUILTIN_AGENTS, Raced), BUILTIN_TOOLS)
    run_id = await h.run("raced", {})
    assert h.bridge.types(run_id) == ["agent_started"]
    assert h.state(run_id) == "cancelled"


async def test_the_end_is_recorded_through_a_registry_outage_and_announced_once() -> None:
    h = harness()
    engine = await h.engine("scripted", {"steps": [{"sleep_ms": 50}], "result": "ok"})
    task = asyncio.create_task(engine.execute())
    await asyncio.sleep(0.02)
    h.registry.unavailable_transitions = 3
    await asyncio.wait_for(task, 3)
    assert h.state(engine.run_id) == "completed"
    assert terminal_types(h, engine.run_id) == ["agent_completed"]


@pytest.mark.parametrize("lost", [1, 2])
async def test_a_transition_whose_reply_was_lost_still_counts_as_won(lost: int) -> None:
    h = harness()
    engine = await h.engine("scripted", {"steps": [{"sleep_ms": 50}], "result": "ok"})
    task = asyncio.create_task(engine.execute())
    await asyncio.sleep(0.02)
    h.registry.lost_replies = lost  # COMPLETING (and COMPLETED) apply, but their replies are lost
    await asyncio.wait_for(task, 3)
    assert h.state(engine.run_id) == "completed"
    assert terminal_types(h, engine.run_id) == ["agent_completed"]


async def test_a_queued_run_waits_heartbeated_and_starts_when_the_thread_frees() -> None:
    h = harness()
    thread = new_id("thread")
    first = await h.engine("scripted", {"steps": [{"sleep_ms": 300}], "result": "one"}, thread=thread)
    second = await h.engine(
        "scripted",
        {"steps": [], "result": "two"},
        thread=thread,
        strategy=run_pb2.MULTITASK_STRATEGY_ENQUEUE,
    )
    await asyncio.gather(first.execute(), second.execute())
    assert h.bridge.payloads(first.run_id)[-1]["final_response"] == "one"
    assert h.bridge.payloads(second.run_id)[-1]["final_response"] == "two"
    assert h.registry.aborted.count(second.run_id) >= 2
    assert h.registry.heartbeats.count(second.run_id) >= 2  # heartbeated while queued
    order = [(r, s) for r, s in h.registry.transitions if s in ("starting", "completed")]
    assert order == [
        (first.run_id, "starting"),
        (first.run_id, "completed"),
        (second.run_id, "starting"),
        (second.run_id, "completed"),
    ]


async def test_a_queued_run_can_be_cancelled_while_it_waits() -> None:
    h = harness()
    thread = new_id("thread")
    first = await h.engine("scripted", {"steps": [{"sleep_ms": 5000}]}, thread=thread)
    queued = await h.engine(
        "scripted", {"steps": []}, thread=thread, strategy=run_pb2.MULTITASK_STRATEGY_ENQUEUE
    )
    tasks = [asyncio.create_task(e.execute()) for e in (first, queued)]
    await asyncio.sleep(0.2)
    queued.request_cancel("not needed any more")
    await asyncio.wait_for(tasks[1], 1)
    assert h.bridge.types(queued.run_id) == ["agent_started", "agent_cancelled"]
    assert h.state(queued.run_id) == "cancelled"
    assert "starting" not in {s for r, s in h.registry.transitions if r == queued.run_id}
    first.request_cancel("done")
    await asyncio.wait_for(tasks[0], 2)


async def test_shutdown_ends_a_queued_run_dead() -> None:
    h = harness()
    thread = new_id("thread")
    supervisor = RunSupervisor(log=logging.getLogger("test"))
    first = await h.engine("scripted", {"steps": [{"sleep_ms": 5000}]}, thread=thread)
    queued = await h.engine(
        "scripted", {"steps": []}, thread=thread, strategy=run_pb2.MULTITASK_STRATEGY_ENQUEUE
    )
    supervisor.start(first)
    supervisor.start(queued)
    await supervisor.drain(finish_within_s=0.1, stop_within_s=0.8)
    for engine in (first, queued):
        assert h.state(engine.run_id) == "dead"
        assert terminal_types(h, engine.run_id) == ["agent_death"]
        assert h.bridge.payloads(engine.run_id)[-1]["death_cause"] == "executor_lost"


async def test_a_run_over_its_timeout_is_hard_stopped_even_if_it_ignores_cancellation() -> None:
    h = harness(Stubborn)
    loop = asyncio.get_running_loop()
    began = loop.time()
    run_id = await h.run("stubborn", {}, timeout_s=0.3)
    assert loop.time() - began < 1.0
    assert h.state(run_id) == "timeout"
    assert h.bridge.payloads(run_id)[-1] == {
        "status": "timeout",
        "error_code": "timeout",
        "error_message": "the run exceeded its execution timeout of 0.3 s",
    }


# --- publishing through outages ---

LOG = bind(logging.getLogger("test.faults"))
USER = context_pb2.UserContext(user_id="user_faults_0000000001")


def emitter_for(publish, budget_s: float) -> RunEmitter:  # type: ignore[no-untyped-def]
    return RunEmitter(
        user=USER,
        run_id="run_faults",
        thread_id="thread_faults",
        agent="scripted",
        publish=publish,
        log=LOG,
        retry=Backoff(budget_s=budget_s, initial_s=0.01, max_s=0.05),
    )


async def test_a_batch_is_retried_until_the_bridge_is_back() -> None:
    attempts: list[list[int]] = []

    async def publish(events: Sequence[event_pb2.RunEvent]) -> None:
        attempts.append([e.seq for e in events])
        if len(attempts) <= 5:
            raise Unavailable("bridge restarting")

    emitter = emitter_for(publish, budget_s=2.0)
    await emitter.partial("a")
    await emitter.emit_terminal(Outcome.cancelled("x"), duration_ms=0)
    await emitter.aclose()
    assert len(attempts) == 6
    assert {tuple(a) for a in attempts} <= {(1,), (1, 2), (2,)}
    assert attempts[-1][-1] == 2


async def test_a_terminal_event_that_cannot_be_delivered_is_logged_as_lost(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def publish(events: Sequence[event_pb2.RunEvent]) -> None:
        raise Unavailable("bridge down")

    emitter = emitter_for(publish, budget_s=0.1)
    await emitter.emit_terminal(failure("failed", "x"), duration_ms=0)
    with caplog.at_level(logging.ERROR):
        await emitter.aclose()
    assert any("terminal event lost" in r.getMessage() for r in caplog.records)


async def test_an_aborted_emitter_logs_the_events_it_drops(caplog: pytest.LogCaptureFixture) -> None:
    async def publish(events: Sequence[event_pb2.RunEvent]) -> None:
        await asyncio.sleep(10)

    emitter = emitter_for(publish, budget_s=1.0)
    await emitter.partial("a")
    await emitter.partial("b")
    await asyncio.sleep(0.01)
    with caplog.at_level(logging.ERROR):
        emitter.abort()
    lost = [r for r in caplog.records if "events lost" in r.getMessage()]
    assert lost and (lost[0].seq_from, lost[0].seq_to) == (1, 2)  # type: ignore[attr-defined]


# --- ending runs that execute elsewhere ---


async def test_ending_a_run_elsewhere_announces_it_once_with_seq_zero() -> None:
    h = harness()
    tasks: set[asyncio.Task[None]] = set()
    announcer = Announcer(
        registry=h.registry,
        bridge=h.bridge,
        track=tasks.add,
        publish_retry=Backoff(budget_s=1.0),
        log=logging.getLogger("test"),
    )
    engine = await h.engine("scripted", {"steps": [{"think": "a"}, {"sleep_ms": 5000}]})
    running = asyncio.create_task(engine.execute())
    await asyncio.sleep(0.1)
    ctx = context_pb2.UserContext(user_id=h.user, run_id=engine.run_id)
    ended = await announcer.end_run(ctx, Outcome.cancelled("from another replica"), wait_s=1.0)
    again = await announcer.end_run(ctx, Outcome.cancelled("twice"), wait_s=1.0)
    await asyncio.wait_for(running, 2)
    assert ended.state == run_pb2.RUN_STATE_CANCELLED and again.version == ended.version
    assert terminal_types(h, engine.run_id) == ["agent_cancelled"]
    assert h.bridge.payloads(engine.run_id)[-1] == {"reason": "from another replica"}
    assert_gapless(h, engine.run_id)
    assert all(task.done() for task in tasks)
