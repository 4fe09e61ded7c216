"""Several replicas of every service on PostgreSQL and Redis, as processes."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Callable
from typing import Any

import grpc
import pytest

from runwire.common.v1 import context_pb2
from runwire.registry.v1 import registry_pb2, registry_pb2_grpc
from runwire_common.attestation import ContextAttestor
from runwire_common.ids import new_id
from tests.e2e.conftest import Launch, System
from tests.e2e.test_faults import assert_one_clean_run
from tests.e2e.wsclient import WsClient

pytestmark = pytest.mark.e2e


def _script(marker: str, chunks: int = 5, pause_ms: int = 0) -> dict[str, Any]:
    steps: list[dict[str, Any]] = [{"think": marker}]
    for i in range(chunks):
        steps.append({"partial": f"{marker}-{i}"})
        if pause_ms:
            steps.append({"sleep_ms": pause_ms})
    return {"steps": steps, "result": marker}


def _replicated(launch: Launch, database_url: str, redis_url: str, **kwargs: Any) -> System:
    return launch(replicas=2, database_url=database_url, redis_url=redis_url, **kwargs)


async def _executor_of(system: System, attestor: ContextAttestor, user_id: str, run_id: str) -> str:
    ctx = attestor.mint(
        context_pb2.UserContext(user_id=user_id, run_id=run_id, request_id=new_id("req")), ttl_s=60
    )
    async with grpc.aio.insecure_channel(system.address("registry")) as channel:
        reply = await registry_pb2_grpc.RegistryServiceStub(channel).GetRun(
            registry_pb2.GetRunRequest(user_context=ctx), timeout=5
        )
    return reply.run.executor_id


async def test_a_hundred_users_over_two_of_everything_receive_all_and_only_their_own_events(
    launch: Launch, fresh_database: str, redis_url: str, attestor: ContextAttestor, user: Callable[[], str]
) -> None:
    system = _replicated(launch, fresh_database, redis_url)
    urls = system.cluster.gateway_urls()
    assert len(urls) == 2
    users = [user() for _ in range(100)]

    async def one(index: int, me: str) -> tuple[str, WsClient, str]:
        client = await WsClient.open(urls[index % 2], system.token(me))
        reply = await client.start_run("scripted", _script(f"secret-{me}"))
        assert reply["type"] == "run.accepted", reply
        run_id = reply["run"]["run_id"]
        await client.wait_terminal(run_id, timeout=60)
        return me, client, run_id

    results = await asyncio.gather(*(one(i, me) for i, me in enumerate(users)))
    try:
        foreign = 0
        for me, client, run_id in results:
            for event in client.events():
                mentions_other = "secret-" in str(event["payload"]) and f"secret-{me}" not in str(
                    event["payload"]
                )
                foreign += event["user_id"] != me or event["run_id"] != run_id or mentions_other
            events = client.events(run_id)
            assert_one_clean_run(events)
            assert len(events) == 8
        assert foreign == 0
        executors = {await _executor_of(system, attestor, me, run_id) for me, _, run_id in results[:40]}
        assert len(executors) == 2, executors
    finally:
        await asyncio.gather(*(client.close() for _, client, _ in results))


async def test_killing_a_bridge_replica_while_events_flow_loses_and_repeats_nothing(
    launch: Launch, fresh_database: str, redis_url: str, user: Callable[[], str]
) -> None:
    system = _replicated(launch, fresh_database, redis_url)
    urls = system.cluster.gateway_urls()
    users = [user() for _ in range(10)]
    clients = [await WsClient.open(urls[i % 2], system.token(me)) for i, me in enumerate(users)]
    try:
        runs = [
            (await client.start_run("scripted", _script(f"m-{me}", chunks=30, pause_ms=100)))["run"]["run_id"]
            for client, me in zip(clients, users, strict=True)
        ]
        for client, run_id in zip(clients, runs, strict=True):
            await client.wait_for(lambda f, r=run_id: f.get("run_id") == r and f.get("seq", 0) >= 4)
        system.cluster.processes["bridge"][0].signal(signal.SIGKILL)
        for client, run_id in zip(clients, runs, strict=True):
            final = await client.wait_terminal(run_id, timeout=60)
            assert final["type"] == "agent_completed"
            events = client.events(run_id)
            assert_one_clean_run(events)
            assert sum(e["type"] == "partial_result" for e in events) == 30
    finally:
        for client in clients:
            await client.close()


async def test_starts_sent_while_an_execution_replica_drains_all_run_on_the_other(
    launch: Launch, fresh_database: str, redis_url: str, attestor: ContextAttestor, user: Callable[[], str]
) -> None:
    # The gateways start runs over a StartRuns stream per execution replica. A replica that
    # drains (a rolling update) tells its streams so; starts it has not begun are sent to the
    # other replica, and no user sees a start refused while one replica can take it.
    system = _replicated(launch, fresh_database, redis_url)
    urls = system.cluster.gateway_urls()
    users = [user() for _ in range(20)]
    clients = [await WsClient.open(urls[i % 2], system.token(me)) for i, me in enumerate(users)]
    try:
        first = await asyncio.gather(*(client.start_run("scripted", _script("before")) for client in clients))
        assert all(reply["type"] == "run.accepted" for reply in first), first
        draining, staying = system.cluster.processes["execution"]
        draining.signal(signal.SIGTERM)

        async def keep_starting(client: WsClient, me: str) -> list[tuple[str, str]]:
            started = []
            for n in range(4):  # during the drain, then once the replica has gone
                reply = await client.start_run("scripted", _script(f"during-{n}"))
                assert reply["type"] == "run.accepted", reply
                run_id = reply["run"]["run_id"]
                assert (await client.wait_terminal(run_id, timeout=60))["type"] == "agent_completed"
                started.append((me, run_id))
                await asyncio.sleep(0.3)
            return started

        runs = [
            run
            for per_user in await asyncio.gather(
                *(keep_starting(client, me) for client, me in zip(clients, users, strict=True))
            )
            for run in per_user
        ]
        assert await asyncio.to_thread(draining.wait, 30) == 0, draining.log_tail()
        executors = {await _executor_of(system, attestor, me, run_id) for me, run_id in runs}
        assert executors == {f"executor-1-{os.getpid()}"}, executors
        assert staying.pid != draining.pid
    finally:
        await asyncio.gather(*(client.close() for client in clients))


async def test_a_user_at_the_quota_on_one_registry_replica_is_refused_on_the_other(
    launch: Launch, fresh_database: str, redis_url: str, attestor: ContextAttestor, user: Callable[[], str]
) -> None:
    system = _replicated(launch, fresh_database, redis_url)
    me = user()
    replicas = [p.address for p in system.cluster.processes["registry"]]

    def ctx() -> context_pb2.UserContext:
        return attestor.mint(
            context_pb2.UserContext(user_id=me, thread_id=new_id("thread"), request_id=new_id("req")),
            ttl_s=60,
        )

    async with (
        grpc.aio.insecure_channel(replicas[0]) as first,
        grpc.aio.insecure_channel(replicas[1]) as second,
    ):
        one = registry_pb2_grpc.RegistryServiceStub(first)
        two = registry_pb2_grpc.RegistryServiceStub(second)
        for _ in range(3):
            await one.CreateRun(
                registry_pb2.CreateRunRequest(user_context=ctx(), agent="scripted", input_json="{}"),
                timeout=5,
            )
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await two.CreateRun(
                registry_pb2.CreateRunRequest(user_context=ctx(), agent="scripted", input_json="{}"),
                timeout=5,
            )
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        racing = await asyncio.gather(
            *(
                stub.CreateRun(
                    registry_pb2.CreateRunRequest(
                        user_context=attestor.mint(
                            context_pb2.UserContext(
                                user_id=f"{me}-b", thread_id=new_id("thread"), request_id=new_id("req")
                            ),
                            ttl_s=60,
                        ),
                        agent="scripted",
                        input_json="{}",
                    ),
                    timeout=10,
                )
                for stub in (one, two) * 5
            ),
            return_exceptions=True,
        )
        accepted = [r for r in racing if not isinstance(r, BaseException)]
        assert len(accepted) == 3
        assert all(
            isinstance(r, grpc.aio.AioRpcError) and r.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            for r in racing
            if isinstance(r, BaseException)
        )
