"""Runs that survive faults, against the real registry and bridge on loopback.

Cancel from any replica (even of an agent that ignores cancellation), the
multitask strategies, execution timeouts and the drain on shutdown, each with
exactly one terminal event per run.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import grpc
import pytest

from execution_service.builtins import BUILTIN_AGENTS, BUILTIN_TOOLS
from execution_service.catalog import AgentCatalog
from execution_service.outcomes import EXECUTOR_LOST_MESSAGE
from execution_service.sdk import Agent, AgentResult, RunContext
from execution_service.servicer import INTERRUPT_REASON
from runwire.common.v1 import context_pb2, event_pb2, run_pb2
from runwire.execution.v1 import execution_pb2, execution_pb2_grpc
from runwire_common import names
from runwire_common.ids import new_id
from tests.conftest import ContextFactory
from tests.execution_service.system import CALL_TIMEOUT_S, System, running_system
from tests.support.watcher import Watcher

CANCEL_GRACE_S = 1.0
SLEEPY = {"steps": [{"think": "working"}, {"sleep_ms": 20_000}]}


def stubborn_catalog() -> tuple[AgentCatalog, asyncio.Event]:
    """A catalog with an agent that ignores the cancellation signal; the event is set once it stops."""
    stopped = asyncio.Event()

    class Stubborn(Agent):
        name = "stubborn"
        description = "ignores cancellation"

        async def run(self, ctx: RunContext) -> AgentResult:
            await ctx.emitter.thinking("not listening")
            try:
                await asyncio.sleep(60)  # never looks at ctx.cancellation
            finally:
                stopped.set()
            return AgentResult(final_response="never")

    return AgentCatalog((*BUILTIN_AGENTS, Stubborn), BUILTIN_TOOLS), stopped


@asynccontextmanager
async def system_with(
    tmp_path: Path, key_spec: str, make_context: ContextFactory, **options: Any
) -> AsyncIterator[System]:
    async with running_system(
        tmp_path, key_spec, make_context, cancel_grace_s=CANCEL_GRACE_S, **options
    ) as s:
        yield s


def new_ctx(system: System, user: str | None = None, thread: str | None = None) -> context_pb2.UserContext:
    return system.make_context(user or new_id("user"), thread_id=thread or new_id("thread"))


def body(event: event_pb2.RunEvent) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(event.payload_json)
    return loaded


def terminals(events: list[event_pb2.RunEvent]) -> list[event_pb2.RunEvent]:
    return [e for e in events if e.type in names.TERMINAL_EVENT_TYPES]


def assert_one_end(events: list[event_pb2.RunEvent], event_type: str) -> event_pb2.RunEvent:
    """Gapless seqs from 1, exactly one terminal event of ``event_type``, and it is the last."""
    assert [e.seq for e in events] == list(range(1, len(events) + 1)), [(e.seq, e.type) for e in events]
    ends = terminals(events)
    assert [e.type for e in ends] == [event_type] and ends[0] is events[-1]
    return events[-1]


async def settle(watcher: Watcher, run_id: str, seconds: float = 0.5) -> list[event_pb2.RunEvent]:
    """The run's events after a pause, so anything wrongly published late shows up too."""
    await asyncio.sleep(seconds)
    return watcher.of(run_id)


async def expect_code(call: Any, code: grpc.StatusCode) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    assert caught.value.code() == code, caught.value.details()


# --- cancel ---


async def test_cancelling_an_agent_that_ignores_cancellation_ends_it_once_within_the_grace_period(
    tmp_path: Path, attestation_key_spec: str, make_context: ContextFactory
) -> None:
    catalog, stopped = stubborn_catalog()
    async with system_with(tmp_path, attestation_key_spec, make_context, catalog=catalog) as system:
        ctx = new_ctx(system)
        async with system.watch(ctx.user_id) as watcher:
            run = await system.start(ctx, "stubborn", {})
            await watcher.until(run.run_id, "agent_thinking")
            loop = asyncio.get_running_loop()
            began = loop.time()
            cancelled = await system.cancel(ctx, run.run_id, reason="stop it")
            await watcher.until_terminal(run.run_id)
            took = loop.time() - began
            assert stopped.is_set()
            again = [await system.cancel(ctx, run.run_id, reason="again") for _ in range(2)]
            events = await settle(watcher, run.run_id)
        assert took < CANCEL_GRACE_S + 1.5
        assert body(assert_one_end(events, "agent_cancelled")) == {"reason": "stop it"}
        assert cancelled.state == run_pb2.RUN_STATE_CANCELLED
        assert [(r.state, r.version) for r in again] == [(cancelled.state, cancelled.version)] * 2
        final = await system.get(ctx.user_id, run.run_id)
        assert (final.state, final.version, final.error.message) == (
            cancelled.state,
            cancelled.version,
            "stop it",
        )


async def test_a_cancel_through_a_second_replica_ends_the_run_once_and_stops_the_first(
    tmp_path: Path, attestation_key_spec: str, make_context: ContextFactory
) -> None:
    catalog, stopped = stubborn_catalog()
    async with system_with(tmp_path, attestation_key_spec, make_context, catalog=catalog) as system:
        other = await system.add_execution()
        ctx = new_ctx(system)
        async with system.watch(ctx.user_id) as watcher:
            run = await system.start(ctx, "stubborn", {})
            await watcher.until(run.run_id, "agent_thinking")
            response = await other.stub.CancelRun(
                execution_pb2.CancelRunRequest(
                    user_context=system.make_context(ctx.user_id, run_id=run.run_id),
                    reason="from replica two",
                ),
                timeout=CALL_TIMEOUT_S,
            )
            await watcher.until_terminal(run.run_id)
            # The first replica learns it from its next heartbeat and stops its agent, silently.
            await asyncio.wait_for(stopped.wait(), CANCEL_GRACE_S + 2.0)
            events = await settle(watcher, run.run_id)
        assert response.run.state == run_pb2.RUN_STATE_CANCELLED
        assert body(assert_one_end(events, "agent_cancelled")) == {"reason": "from replica two"}
        assert (await system.get(ctx.user_id, run.run_id)).state == run_pb2.RUN_STATE_CANCELLED


# --- timeouts ---


async def test_a_requested_timeout_ends_a_long_run_in_timeout(
    tmp_path: Path, attestation_key_spec: str, make_context: ContextFactory
) -> None:
    async with system_with(tmp_path, attestation_key_spec, make_context) as system:
        ctx = new_ctx(system)
        async with system.watch(ctx.user_id) as watcher:
            loop = asyncio.get_running_loop()
            began = loop.time()
            run = await system.start(ctx, "scripted", {"steps": [{"sleep_ms": 10_000}]}, timeout_seconds=2)
            await watcher.until_terminal(run.run_id)
            took = loop.time() - began
            events = await settle(watcher, run.run_id, 0.2)
        assert took < 3.0
        end = body(assert_one_end(events, "agent_error"))
        assert (end["status"], end["error_code"]) == ("timeout", "timeout")
        assert "2 s" in end["error_message"]
        final = await system.get(ctx.user_id, run.run_id)
        assert final.state == run_pb2.RUN_STATE_TIMEOUT and final.error.code == "timeout"


# --- multitask ---


async def test_interrupt_cancels_the_live_run_once_and_the_new_run_completes(
    tmp_path: Path, attestation_key_spec: str, make_context: ContextFactory
) -> None:
    async with system_with(tmp_path, attestation_key_spec, make_context) as system:
        ctx = new_ctx(system)
        async with system.watch(ctx.user_id) as watcher:
            old = await system.start(ctx, "scripted", SLEEPY)
            await watcher.until(old.run_id, "agent_thinking")
            new = await system.start(
                ctx,
                "scripted",
                {"steps": [{"think": "fresh"}], "result": "new answer"},
                multitask_strategy=run_pb2.MULTITASK_STRATEGY_INTERRUPT,
            )
            await watcher.until_terminal(new.run_id)
            await watcher.until_terminal(old.run_id)
            old_events = await settle(watcher, old.run_id)
            new_events = watcher.of(new.run_id)
        assert body(assert_one_end(old_events, "agent_cancelled")) == {"reason": INTERRUPT_REASON}
        assert body(assert_one_end(new_events, "agent_completed"))["final_response"] == "new answer"
        assert (await system.get(ctx.user_id, old.run_id)).state == run_pb2.RUN_STATE_CANCELLED
        assert (await system.get(ctx.user_id, new.run_id)).state == run_pb2.RUN_STATE_COMPLETED


async def test_enqueue_starts_the_second_run_only_after_the_first_and_both_complete(
    tmp_path: Path, attestation_key_spec: str, make_context: ContextFactory
) -> None:
    async with system_with(tmp_path, attestation_key_spec, make_context) as system:
        ctx = new_ctx(system)
        enqueue = run_pb2.MULTITASK_STRATEGY_ENQUEUE
        async with system.watch(ctx.user_id) as watcher:
            first = await system.start(ctx, "scripted", {"steps": [{"sleep_ms": 1000}], "result": "first"})
            second = await system.start(
                ctx, "scripted", {"steps": [], "result": "second"}, multitask_strategy=enqueue
            )
            await asyncio.sleep(0.5)
            queued = await system.get(ctx.user_id, second.run_id)
            assert queued.state == run_pb2.RUN_STATE_PENDING and watcher.of(second.run_id) == []
            await watcher.until_terminal(second.run_id)
            firsts, seconds = watcher.of(first.run_id), await settle(watcher, second.run_id, 0.2)
        assert body(assert_one_end(firsts, "agent_completed"))["final_response"] == "first"
        assert body(assert_one_end(seconds, "agent_completed"))["final_response"] == "second"
        order = [(e.run_id, e.type) for e in watcher.events]
        assert order.index((first.run_id, "agent_completed")) < order.index((second.run_id, "agent_started"))
        done = await system.get(ctx.user_id, first.run_id)
        started = await system.get(ctx.user_id, second.run_id)
        assert started.started_at.ToDatetime() >= done.finished_at.ToDatetime()


async def test_a_queued_run_can_be_cancelled(
    tmp_path: Path, attestation_key_spec: str, make_context: ContextFactory
) -> None:
    async with system_with(tmp_path, attestation_key_spec, make_context) as system:
        ctx = new_ctx(system)
        async with system.watch(ctx.user_id) as watcher:
            first = await system.start(ctx, "scripted", SLEEPY)
            queued = await system.start(
                ctx, "scripted", {"steps": []}, multitask_strategy=run_pb2.MULTITASK_STRATEGY_ENQUEUE
            )
            await asyncio.sleep(0.3)
            cancelled = await system.cancel(ctx, queued.run_id, reason="never mind")
            await watcher.until_terminal(queued.run_id)
            await system.cancel(ctx, first.run_id)
            events = await settle(watcher, queued.run_id)
        assert cancelled.state == run_pb2.RUN_STATE_CANCELLED
        assert body(assert_one_end(events, "agent_cancelled")) == {"reason": "never mind"}


# --- drain on shutdown ---


async def test_a_drain_ends_long_runs_dead_lets_short_ones_finish_and_refuses_new_runs(
    tmp_path: Path, attestation_key_spec: str, make_context: ContextFactory
) -> None:
    grace_s = 4.0
    async with system_with(tmp_path, attestation_key_spec, make_context, grace_period_s=grace_s) as system:
        ctx = new_ctx(system)
        async with system.watch(ctx.user_id) as watcher:
            long = await system.start(ctx, "scripted", SLEEPY)
            short = await system.start(
                new_ctx(system, ctx.user_id), "scripted", {"steps": [{"sleep_ms": 800}], "result": "made it"}
            )
            await watcher.until(long.run_id, "agent_thinking")
            loop = asyncio.get_running_loop()
            began = loop.time()
            stopping = asyncio.ensure_future(system.stop_execution())
            async with asyncio.timeout(2):
                while not system.execution_server.draining.is_set():
                    await asyncio.sleep(0.01)
            await expect_code(
                system.start(new_ctx(system, ctx.user_id), "scripted", {"steps": []}),
                grpc.StatusCode.UNAVAILABLE,
            )
            await stopping
            took = loop.time() - began
            long_events = await settle(watcher, long.run_id, 0.2)
            short_events = watcher.of(short.run_id)
        assert took < grace_s
        assert body(assert_one_end(short_events, "agent_completed"))["final_response"] == "made it"
        assert body(assert_one_end(long_events, "agent_death")) == {
            "status": "dead",
            "death_cause": "executor_lost",
            "message": EXECUTOR_LOST_MESSAGE,
            "recovery_action": "retry",
            "recovery_hint": "Start the run again; the thread is free.",
        }
        final = await system.get(ctx.user_id, long.run_id)
        assert final.state == run_pb2.RUN_STATE_DEAD and final.error.code == "executor_lost"


async def test_sigterm_drains_the_process_ends_its_runs_dead_and_exits_0(
    tmp_path: Path, attestation_key_spec: str, make_context: ContextFactory
) -> None:
    grace_s = 3.0
    async with system_with(tmp_path, attestation_key_spec, make_context) as system:
        ready = tmp_path / "execution.ready"
        env = {k: v for k, v in os.environ.items() if not k.startswith("RUNWIRE_")} | {
            "RUNWIRE_ATTESTATION_KEYS": attestation_key_spec,
            "RUNWIRE_EXECUTION_REGISTRY_TARGET": system.execution_settings.registry_target,
            "RUNWIRE_EXECUTION_BRIDGE_TARGET": system.execution_settings.bridge_target,
            "RUNWIRE_EXECUTION_GRACE_PERIOD_S": str(grace_s),
            "RUNWIRE_EXECUTION_HEARTBEAT_INTERVAL_S": "0.2",
            "RUNWIRE_EXECUTION_READY_FILE": str(ready),
        }
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "execution_service", env=env, stdout=asyncio.subprocess.DEVNULL
        )
        try:
            async with asyncio.timeout(30):
                while not ready.exists():
                    await asyncio.sleep(0.05)
            port = json.loads(ready.read_text())["port"]
            ctx = new_ctx(system)
            async with (
                grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel,
                system.watch(ctx.user_id) as watcher,
            ):
                stub = execution_pb2_grpc.ExecutionServiceStub(channel)
                response = await stub.StartRun(
                    execution_pb2.StartRunRequest(
                        user_context=ctx, agent="scripted", input_json=json.dumps(SLEEPY)
                    ),
                    timeout=CALL_TIMEOUT_S,
                )
                run = response.run
                await watcher.until(run.run_id, "agent_thinking")
                loop = asyncio.get_running_loop()
                began = loop.time()
                process.send_signal(signal.SIGTERM)
                code = await asyncio.wait_for(process.wait(), grace_s + 5)
                took = loop.time() - began
                events = await settle(watcher, run.run_id, 0.2)
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
        assert code == 0
        assert took < grace_s + 1.0  # the drain fits in the grace period; the rest is process exit
        assert body(assert_one_end(events, "agent_death"))["death_cause"] == "executor_lost"
        assert (await system.get(ctx.user_id, run.run_id)).state == run_pb2.RUN_STATE_DEAD
