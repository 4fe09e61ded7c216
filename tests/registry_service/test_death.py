"""Death detection: silent live runs become dead, and their owner is told once through the bridge.

The bridge here is a recording ``BridgeService`` on loopback (a real gRPC
server), so the tests see exactly which ``Publish`` calls the registry made.
Timeouts are shrunk to fractions of a second.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Callable

import grpc
import pytest

from registry_service.settings import RegistrySettings
from runwire.common.v1 import context_pb2, run_pb2
from runwire.registry.v1 import registry_pb2
from runwire_common.attestation import ContextAttestor
from runwire_common.ids import new_id
from tests.registry_service.bridge_double import RecordingBridge, recording_bridge
from tests.registry_service.support import Registry, eventually, open_registry, rpc_error

S = run_pb2
ContextFactory = Callable[..., context_pb2.UserContext]
FAST = {"heartbeat_timeout_s": 0.5, "death_sweep_interval_s": 0.1}


def fast(settings: RegistrySettings, **changes: object) -> RegistrySettings:
    return settings.model_copy(update={**FAST, **changes})


@pytest.fixture
async def bridge(attestor: ContextAttestor) -> AsyncIterator[RecordingBridge]:
    async with recording_bridge(attestor) as recording:
        yield recording


@pytest.fixture
async def watched(
    registry_settings: RegistrySettings, bridge: RecordingBridge, make_context: ContextFactory
) -> AsyncIterator[Registry]:
    """A registry with fast death detection, reporting to the recording bridge."""
    async with open_registry(fast(registry_settings, bridge_target=bridge.address), make_context) as opened:
        yield opened


async def dead(registry: Registry, *runs: run_pb2.Run) -> bool:
    states = [(await registry.get(run)).state for run in runs]
    return all(state == S.RUN_STATE_DEAD for state in states)


async def test_a_silent_run_dies_while_a_heartbeating_one_lives_on(
    registry_settings: RegistrySettings, make_context: ContextFactory
) -> None:
    settings = registry_settings.model_copy(
        update={"heartbeat_timeout_s": 1.0, "death_sweep_interval_s": 0.1}
    )
    async with open_registry(settings, make_context) as registry:
        user = new_id("user")
        silent = await registry.run_in(user, S.RUN_STATE_RUNNING)
        queued_silent = await registry.create(user)
        alive = await registry.run_in(user, S.RUN_STATE_RUNNING)

        async def keep_alive() -> None:
            while True:
                await registry.heartbeat(alive)
                await asyncio.sleep(0.1)

        beating = asyncio.create_task(keep_alive())
        try:
            await eventually(lambda: dead(registry, silent, queued_silent))
            await asyncio.sleep(1.2)  # longer than the timeout: still beating, still alive
            assert (await registry.get(alive)).state == S.RUN_STATE_RUNNING
        finally:
            beating.cancel()

        died = await registry.get(silent)
    assert died.error.code == "no_heartbeat"
    assert died.error.message == "the worker running this run stopped responding"
    assert died.version == silent.version + 1
    assert died.HasField("finished_at") and died.updated_at == died.finished_at


async def test_ended_runs_are_never_touched(watched: Registry, bridge: RecordingBridge) -> None:
    user = new_id("user")
    ended = [
        await watched.run_in(user, state)
        for state in (S.RUN_STATE_COMPLETED, S.RUN_STATE_CANCELLED, S.RUN_STATE_FAILED)
    ]
    canary = await watched.create(new_id("user"))

    await eventually(lambda: dead(watched, canary))
    await asyncio.sleep(0.3)

    assert [await watched.get(run) for run in ended] == ended
    assert set(bridge.counts()) == {canary.run_id}


async def test_the_owner_is_told_once_with_an_agent_death_event(
    watched: Registry, bridge: RecordingBridge, attestor: ContextAttestor
) -> None:
    user = new_id("user")
    ctx = watched.make_context(user, thread_id=new_id("thread"), tenant_id="tenant_acme_corporation")
    created = await watched.stub.CreateRun(
        registry_pb2.CreateRunRequest(user_context=ctx, agent="assistant", input_json="{}"),
        timeout=10,
    )
    run = await watched.transition(created.run, S.RUN_STATE_STARTING)
    other = await watched.run_in(new_id("user"), S.RUN_STATE_RUNNING)

    await eventually(lambda: _has(bridge, run.run_id, other.run_id))
    await asyncio.sleep(0.5)  # several more sweeps: nothing is sent again

    assert bridge.counts() == {run.run_id: 1, other.run_id: 1}
    sent = next(item for item in bridge.published if item.event.run_id == run.run_id)
    event = sent.event
    assert (event.type, event.seq) == ("agent_death", 0)
    assert (event.user_id, event.tenant_id, event.thread_id, event.agent) == (
        user,
        "tenant_acme_corporation",
        run.thread_id,
        "assistant",
    )
    assert event.timestamp == (await watched.get(run)).finished_at
    assert sent.payload["status"] == "dead"
    assert sent.payload["death_cause"] == "no_heartbeat"
    assert sent.payload["recovery_action"] == "retry"
    assert "stopped responding" in sent.payload["message"]
    assert {"status", "death_cause", "message", "recovery_action"} <= set(sent.payload)
    # Published under the owner's own attested identity, scoped to the run.
    attestor.verify(sent.context)
    assert (sent.context.user_id, sent.context.tenant_id, sent.context.run_id) == (
        user,
        "tenant_acme_corporation",
        run.run_id,
    )


async def _has(bridge: RecordingBridge, *run_ids: str) -> bool:
    return set(run_ids) <= set(bridge.counts())


async def test_a_heartbeat_on_a_dead_run_returns_the_dead_run(watched: Registry) -> None:
    run = await watched.run_in(new_id("user"), S.RUN_STATE_RUNNING)
    await eventually(lambda: dead(watched, run))

    answer = await watched.heartbeat(run, executor_id="executor-late")
    refused = await rpc_error(watched.transition(run, S.RUN_STATE_COMPLETING))

    assert answer.state == S.RUN_STATE_DEAD
    assert answer.executor_id == run.executor_id
    assert refused.code() == grpc.StatusCode.FAILED_PRECONDITION


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def test_a_notice_the_bridge_could_not_take_is_sent_once_it_is_back(
    registry_settings: RegistrySettings, attestor: ContextAttestor, make_context: ContextFactory
) -> None:
    port = _free_port()
    settings = fast(registry_settings, bridge_target=f"127.0.0.1:{port}")
    async with open_registry(settings, make_context) as registry:
        run = await registry.run_in(new_id("user"), S.RUN_STATE_RUNNING)
        await eventually(lambda: dead(registry, run))
        await asyncio.sleep(0.5)  # a few sweeps fail against the missing bridge

        async with recording_bridge(attestor, port=port) as bridge:
            await eventually(lambda: _has(bridge, run.run_id), timeout_s=30)
            await asyncio.sleep(0.5)

    assert bridge.counts() == {run.run_id: 1}


async def test_a_bridge_refusing_calls_gets_the_notice_on_a_later_sweep(
    watched: Registry, bridge: RecordingBridge
) -> None:
    bridge.failing = True
    run = await watched.run_in(new_id("user"), S.RUN_STATE_RUNNING)
    await eventually(lambda: dead(watched, run))
    await asyncio.sleep(0.3)
    assert bridge.counts() == {}

    bridge.failing = False

    await eventually(lambda: _has(bridge, run.run_id))
    await asyncio.sleep(0.3)
    assert bridge.counts() == {run.run_id: 1}


async def test_a_run_that_died_while_no_bridge_was_configured_is_reported_later(
    registry_settings: RegistrySettings, bridge: RecordingBridge, make_context: ContextFactory
) -> None:
    # The first registry marks the run dead but cannot tell anyone, like a
    # replica that crashed between the UPDATE and the Publish.
    async with open_registry(fast(registry_settings, bridge_target=""), make_context) as first:
        run = await first.run_in(new_id("user"), S.RUN_STATE_RUNNING)
        await eventually(lambda: dead(first, run))

    async with open_registry(fast(registry_settings, bridge_target=bridge.address), make_context):
        await eventually(lambda: _has(bridge, run.run_id))
        await asyncio.sleep(0.3)

    assert bridge.counts() == {run.run_id: 1}


async def test_two_registries_sweeping_one_database_report_each_death_once(
    registry_settings: RegistrySettings, bridge: RecordingBridge, make_context: ContextFactory
) -> None:
    settings = fast(registry_settings, bridge_target=bridge.address, death_sweep_interval_s=0.05)
    async with (
        open_registry(settings, make_context) as one,
        open_registry(settings, make_context) as two,
    ):
        runs = []
        for index in range(12):
            replica = one if index % 2 else two
            runs.append(
                await replica.run_in(new_id("user"), (S.RUN_STATE_PENDING, S.RUN_STATE_RUNNING)[index % 2])
            )
        ids = [run.run_id for run in runs]
        await eventually(lambda: _has(bridge, *ids))
        await asyncio.sleep(0.5)
        final = [await one.get(run) for run in runs]

    assert bridge.counts() == dict.fromkeys(ids, 1)
    # Marked dead exactly once: one transition past where each run was left.
    assert [(run.state, run.version) for run in final] == [
        (S.RUN_STATE_DEAD, before.version + 1) for before in runs
    ]


async def test_the_sweeper_ends_with_the_service(
    registry_settings: RegistrySettings, make_context: ContextFactory
) -> None:
    async with open_registry(fast(registry_settings), make_context):
        assert any(task.get_name() == "registry-death-sweeper" for task in asyncio.all_tasks())

    assert not any(task.get_name() == "registry-death-sweeper" for task in asyncio.all_tasks())
