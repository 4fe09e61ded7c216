"""Per-user edge limits on the whole system: two gateway replicas sharing Redis, as deployed."""

from __future__ import annotations

from collections.abc import Callable

from tests.e2e.conftest import Launch
from tests.e2e.test_faults import redis_prefix  # noqa: F401 - a fixture
from tests.e2e.wsclient import WsClient

SCRIPT = {"steps": [{"think": "a step"}], "result": "done"}


async def test_run_creation_beyond_the_users_rate_is_rate_limited_on_either_gateway(
    launch: Launch,
    user: Callable[[], str],
    redis_url: str,
    redis_prefix: str,  # noqa: F811
) -> None:
    system = launch(
        replicas=2,
        redis_url=redis_url,
        service_env={
            "bridge": {"RUNWIRE_BRIDGE_REDIS_KEY_PREFIX": redis_prefix},
            "gateway": {
                "RUNWIRE_GATEWAY_REDIS_KEY_PREFIX": redis_prefix,
                "RUNWIRE_GATEWAY_RUN_START_RATE_LIMIT": "2",
            },
        },
    )
    first_url, second_url = system.cluster.gateway_urls()
    alice, bob = user(), user()
    on_first = await WsClient.open(first_url, system.token(alice))
    on_second = await WsClient.open(second_url, system.token(alice))
    other = await WsClient.open(second_url, system.token(bob))
    try:
        for client in (on_first, on_second):
            accepted = await client.start_run("scripted", SCRIPT)
            assert accepted["type"] == "run.accepted", accepted
            await client.wait_terminal(accepted["run"]["run_id"])
        refused = await on_first.call(
            {"type": "run.start", "id": "third", "agent": "scripted", "input": SCRIPT}
        )
        assert (refused["type"], refused["id"], refused["code"]) == ("error", "third", "rate_limited")
        refused = await on_second.call(
            {"type": "run.start", "id": "fourth", "agent": "scripted", "input": SCRIPT}
        )
        assert refused["code"] == "rate_limited"
        assert (await other.start_run("scripted", SCRIPT))["type"] == "run.accepted"  # bob's own budget
    finally:
        for client in (on_first, on_second, other):
            await client.close()
