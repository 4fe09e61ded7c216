"""One user id in two tenants (and in none) is three owners: three logs, three streams."""

from __future__ import annotations

import grpc
import pytest

from runwire_common.ids import new_id
from runwire_common.owners import key_of
from tests.bridge_service.harness import (
    Bridge,
    ContextFactory,
    event,
    read_events,
    read_until_replay_complete,
)


async def test_one_user_id_in_two_tenants_and_in_none_gets_three_separate_streams(
    bridge: Bridge, make_context: ContextFactory
) -> None:
    user = new_id("user")
    contexts = [make_context(user, tenant_id=tenant) for tenant in (new_id("tenant"), new_id("tenant"), "")]
    calls = [bridge.subscribe(ctx) for ctx in contexts]
    for call in calls:
        await read_until_replay_complete(call)

    published = []
    for index, ctx in enumerate(contexts):
        own = event(ctx, run_id=f"run_{index}_0123456789abcdef")
        own.tenant_id = ctx.tenant_id
        published.append(await bridge.publish(ctx, own))

    for ctx, call, ids in zip(contexts, calls, published, strict=True):
        [received] = await read_events(call, 1)
        assert ([received.event_id], received.tenant_id) == (ids, ctx.tenant_id)
        call.cancel()
        await bridge.wait_for_subscribers(key_of(ctx), 0)


async def test_an_event_of_another_tenant_is_refused(bridge: Bridge, make_context: ContextFactory) -> None:
    ctx = make_context(new_id("user"), tenant_id=new_id("tenant"))
    foreign = event(ctx)
    foreign.tenant_id = new_id("tenant")

    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await bridge.publish(ctx, foreign)

    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "tenant_id" in (refused.value.details() or "")
