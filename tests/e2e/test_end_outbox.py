"""A run's terminal event survives a bridge outage longer than the executor's publish retry window.

The executor records the run's end in the registry, then publishes the
terminal event; with the bridge down past ``publish_retry_s`` it gives up.
The registry keeps the end as a notice (the run-end outbox) and delivers it
once the bridge is back; the bridge keeps one terminal event per run, so the
owner sees exactly one either way.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Callable

import pytest

from tests.e2e.conftest import Launch
from tests.e2e.test_faults import assert_one_clean_run, redis_prefix  # noqa: F401 - a fixture
from tests.e2e.wsclient import Frame, WsClient

pytestmark = pytest.mark.e2e

PUBLISH_RETRY_S = 3.0
END_NOTICE_DELAY_S = 5.0
BRIDGE_DOWN_S = 8.0  # past the executor's publish retry window, with the run ending meanwhile


def _env(prefix: str) -> dict[str, dict[str, str]]:
    return {
        "bridge": {"RUNWIRE_BRIDGE_REDIS_KEY_PREFIX": prefix},
        "execution": {"RUNWIRE_EXECUTION_PUBLISH_RETRY_S": str(PUBLISH_RETRY_S)},
        "registry": {"RUNWIRE_REGISTRY_END_NOTICE_DELAY_S": str(END_NOTICE_DELAY_S)},
    }


async def test_a_run_ending_while_the_bridge_is_down_reaches_its_owner_exactly_once(
    launch: Launch,
    user: Callable[[], str],
    redis_url: str,
    redis_prefix: str,  # noqa: F811
) -> None:
    system = launch(grace_period_s=2.0, redis_url=redis_url, service_env=_env(redis_prefix))
    me = user()
    client = await WsClient.open(system.url, system.token(me))
    try:
        script = {"steps": [{"think": "working"}, {"sleep_ms": 2_000}, {"partial": "late"}], "result": "done"}
        run_id = (await client.start_run("scripted", script))["run"]["run_id"]
        await client.wait_for(lambda f: f.get("run_id") == run_id and f.get("type") == "agent_thinking")

        bridge = system.cluster.processes["bridge"][0]
        stopped_at = time.monotonic()
        bridge.signal(signal.SIGTERM)
        assert await asyncio.to_thread(bridge.wait, 10) == 0, bridge.log_tail()
        # The run ends (about 2 s in) and its executor gives up on the terminal event meanwhile.
        await asyncio.sleep(max(0.0, BRIDGE_DOWN_S - (time.monotonic() - stopped_at)))
        await asyncio.to_thread(system.cluster.restart, bridge)

        # The gateway may give up on the stream meanwhile: the owner then resumes from its cursor.
        seen: list[Frame] = []
        deadline = time.monotonic() + 40
        while True:
            try:
                terminal = await client.wait_terminal(run_id, timeout=deadline - time.monotonic())
                break
            except AssertionError:
                if not client.closed.is_set() or time.monotonic() >= deadline:
                    raise
            seen += client.events(run_id)
            cursor = client.events()[-1]["event_id"]
            await client.close()
            client = await WsClient.open(system.url, system.token(me), after=cursor)
        assert terminal["type"] == "agent_completed", terminal
        assert terminal["payload"]["status"] == "completed"
        assert terminal["payload"]["final_response"] == "done"
        # Longer than any further delivery would take: nothing else arrives for the run.
        await asyncio.sleep(END_NOTICE_DELAY_S + 3.0)
        terminal = assert_one_clean_run(seen + client.events(run_id))
        assert terminal["type"] == "agent_completed"
        state = await client.call({"type": "run.get", "run_id": run_id})
        assert state["run"]["state"] == "completed"
    finally:
        await client.close()


async def test_a_run_whose_terminal_event_was_published_is_not_announced_twice(
    launch: Launch,
    user: Callable[[], str],
    redis_url: str,
    redis_prefix: str,  # noqa: F811
) -> None:
    system = launch(redis_url=redis_url, service_env=_env(redis_prefix))
    me = user()
    client = await WsClient.open(system.url, system.token(me))
    try:
        run_ids = [
            (await client.start_run("scripted", {"steps": [{"think": "quick"}], "result": f"r{i}"}))["run"][
                "run_id"
            ]
            for i in range(3)
        ]
        for run_id in run_ids:
            await client.wait_terminal(run_id, timeout=20)
        # The registry delivers every end notice after its delay; the bridge drops these copies.
        await asyncio.sleep(END_NOTICE_DELAY_S + 3.0)
        for i, run_id in enumerate(run_ids):
            terminal = assert_one_clean_run(client.events(run_id))
            assert terminal["type"] == "agent_completed"
            assert terminal["payload"]["final_response"] == f"r{i}"
    finally:
        await client.close()
