"""The owner is ``(tenant_id, user_id)``: equal user ids in two tenants are strangers to each other."""

from __future__ import annotations

import grpc

from runwire.common.v1 import run_pb2
from runwire.registry.v1 import registry_pb2
from runwire_common.ids import new_id
from tests.registry_service.support import CALL_TIMEOUT_S, Registry, rpc_error

S = run_pb2


async def _create(registry: Registry, user: str, tenant: str, *, thread_id: str = "") -> run_pb2.Run:
    ctx = registry.make_context(user, tenant_id=tenant, thread_id=thread_id or new_id("thread"))
    response = await registry.stub.CreateRun(
        registry_pb2.CreateRunRequest(user_context=ctx, agent="scripted", input_json='{"steps": []}'),
        timeout=CALL_TIMEOUT_S,
    )
    return response.run


def _as(run: run_pb2.Run, tenant: str) -> run_pb2.Run:
    """``run`` as the same user id of ``tenant`` would name it."""
    other = run_pb2.Run()
    other.CopyFrom(run)
    other.tenant_id = tenant
    return other


async def test_a_run_is_unknown_to_the_same_user_id_in_another_tenant_or_without_one(
    registry: Registry,
) -> None:
    user, tenant_a, tenant_b = new_id("user"), new_id("tenant"), new_id("tenant")
    run = await _create(registry, user, tenant_a)
    run = await registry.transition(run, S.RUN_STATE_STARTING)
    run = await registry.transition(run, S.RUN_STATE_RUNNING)
    run = await registry.request_input(run)

    for stranger in (_as(run, tenant_b), _as(run, "")):
        for call in (
            registry.get(stranger),
            registry.heartbeat(stranger),
            registry.transition(stranger, S.RUN_STATE_CANCELLED),
            registry.get_input(stranger),
            registry.answer_input(stranger),
        ):
            assert (await rpc_error(call)).code() == grpc.StatusCode.NOT_FOUND
        listed = await registry.stub.ListRuns(
            registry_pb2.ListRunsRequest(
                user_context=registry.make_context(user, tenant_id=stranger.tenant_id)
            ),
            timeout=CALL_TIMEOUT_S,
        )
        assert list(listed.runs) == []
    assert (await registry.get(run)).state == S.RUN_STATE_WAITING


async def test_each_tenant_has_its_own_quota_of_live_runs(registry: Registry) -> None:
    user, tenant_a, tenant_b = new_id("user"), new_id("tenant"), new_id("tenant")
    for _ in range(registry.settings.max_live_runs_per_user):
        await _create(registry, user, tenant_a)

    refused = await rpc_error(_create(registry, user, tenant_a))
    admitted = await _create(registry, user, tenant_b)

    assert refused.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert (admitted.tenant_id, admitted.state) == (tenant_b, S.RUN_STATE_PENDING)


async def test_one_thread_id_in_two_tenants_is_two_threads(registry: Registry) -> None:
    user, tenant_a, tenant_b, thread = new_id("user"), new_id("tenant"), new_id("tenant"), new_id("thread")
    run_a = await _create(registry, user, tenant_a, thread_id=thread)
    # Thread a is busy; thread b of the other tenant is not, so the default ``reject`` admits this run.
    run_b = await _create(registry, user, tenant_b, thread_id=thread)
    await registry.transition(run_b, S.RUN_STATE_CANCELLED)

    def ctx(tenant: str) -> registry_pb2.GetThreadRequest:
        return registry_pb2.GetThreadRequest(
            user_context=registry.make_context(user, tenant_id=tenant, thread_id=thread)
        )

    got_a = await registry.stub.GetThread(ctx(tenant_a), timeout=CALL_TIMEOUT_S)
    got_b = await registry.stub.GetThread(ctx(tenant_b), timeout=CALL_TIMEOUT_S)
    assert (got_a.thread.tenant_id, got_a.thread.last_run_state) == (tenant_a, S.RUN_STATE_PENDING)
    assert (got_b.thread.tenant_id, got_b.thread.last_run_state) == (tenant_b, S.RUN_STATE_CANCELLED)
    missing = await rpc_error(registry.stub.GetThread(ctx(""), timeout=CALL_TIMEOUT_S))
    assert missing.code() == grpc.StatusCode.NOT_FOUND

    deleted = await registry.stub.DeleteThread(
        registry_pb2.DeleteThreadRequest(user_context=ctx(tenant_b).user_context), timeout=CALL_TIMEOUT_S
    )
    assert deleted.deleted_runs == 1
    assert (await registry.get(run_a)).state == S.RUN_STATE_PENDING
