"""Heartbeat: proof of life for live runs, a read-only answer for ended ones."""

from __future__ import annotations

import grpc

from runwire.common.v1 import run_pb2
from runwire_common.ids import new_id
from tests.registry_service.support import Registry, rpc_error

S = run_pb2


async def test_a_heartbeat_records_the_time_and_executor_without_bumping_the_version(
    registry: Registry,
) -> None:
    run = await registry.run_in(new_id("user"), S.RUN_STATE_RUNNING)

    beaten = await registry.heartbeat(run, executor_id="executor-b")

    assert beaten.HasField("last_heartbeat_at")
    assert beaten.executor_id == "executor-b"
    assert (beaten.state, beaten.version) == (S.RUN_STATE_RUNNING, run.version)
    assert await registry.get(run) == beaten


async def test_a_later_heartbeat_moves_the_time_forward(registry: Registry) -> None:
    run = await registry.run_in(new_id("user"), S.RUN_STATE_STARTING)

    first = await registry.heartbeat(run)
    second = await registry.heartbeat(run)

    assert second.last_heartbeat_at.ToDatetime() >= first.last_heartbeat_at.ToDatetime()


async def test_a_heartbeat_without_an_executor_keeps_the_recorded_one(registry: Registry) -> None:
    run = await registry.create(new_id("user"), executor_id="executor-a")

    beaten = await registry.heartbeat(run)

    assert beaten.executor_id == "executor-a"
    assert beaten.HasField("last_heartbeat_at")


async def test_a_heartbeat_on_an_ended_run_returns_it_unchanged(registry: Registry) -> None:
    run = await registry.run_in(new_id("user"), S.RUN_STATE_CANCELLED)

    answer = await registry.heartbeat(run, executor_id="executor-z")

    assert answer == run
    assert answer.state == S.RUN_STATE_CANCELLED
    assert not answer.HasField("last_heartbeat_at")


async def test_a_heartbeat_for_an_unknown_run_is_not_found(registry: Registry) -> None:
    ghost = run_pb2.Run(run_id=new_id("run"), user_id=new_id("user"), thread_id=new_id("thread"))

    error = await rpc_error(registry.heartbeat(ghost))

    assert error.code() == grpc.StatusCode.NOT_FOUND
