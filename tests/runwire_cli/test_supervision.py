"""``runwire up`` keeps the system up: killed services come back, crash loops are given up.

Every test runs ``runwire up`` as a process and kills its services for real.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from typing import Any

import pytest
from websockets.exceptions import InvalidHandshake

from runwire_common.ids import new_id
from tests.e2e.test_faults import LONG_SLEEP, _streaming_script, assert_one_clean_run
from tests.e2e.wsclient import Frame, WsClient
from tests.runwire_cli.conftest import RunwireUp, assert_all_stopped, services_json, wait_until

pytestmark = pytest.mark.e2e

Start = Callable[..., RunwireUp]


async def _reopen(url: str, token: str, *, after: str, timeout: float = 20) -> WsClient:
    """Connect again (the gateway may still be starting), resuming after ``after``."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        try:
            return await WsClient.open(url, token, after=after)
        except (OSError, InvalidHandshake, TimeoutError):
            if asyncio.get_running_loop().time() > deadline:
                raise
            await asyncio.sleep(0.2)


async def _serves_new_runs_cancels_and_resumes(up: RunwireUp, url: str) -> None:
    me = new_id("user")
    client = await WsClient.open(url, up.token(me))
    try:
        done = (await client.start_run("scripted", _streaming_script(3, pause_ms=0)))["run"]["run_id"]
        assert (await client.wait_terminal(done))["type"] == "agent_completed"

        busy = (await client.start_run("scripted", LONG_SLEEP))["run"]["run_id"]
        await client.wait_for(lambda f: f.get("run_id") == busy and f.get("type") == "agent_thinking")
        assert (await client.call({"type": "run.cancel", "run_id": busy}))["type"] == "run.cancelling"
        assert (await client.wait_terminal(busy))["type"] == "agent_cancelled"

        events = client.events()
        resumed = await client.call({"type": "resume", "after": events[0]["event_id"]})
        assert (resumed["type"], resumed["replayed"]) == ("resumed", len(events) - 1)
    finally:
        await client.close()


async def test_a_killed_execution_service_is_restarted_and_its_run_ends_in_agent_death(
    runwire_up: Start,
) -> None:
    up = runwire_up()
    url = up.wait_ready()
    owner = await WsClient.open(url, up.token(new_id("user")))
    try:
        run_id = (await owner.start_run("scripted", LONG_SLEEP))["run"]["run_id"]
        await owner.wait_for(lambda f: f.get("run_id") == run_id and f.get("type") == "agent_thinking")
        killed = up.kill("execution-0")

        await asyncio.to_thread(up.wait_serving_after_restarts, "execution-0", 1)
        assert up.services()["execution-0"].pid not in (killed, None)
        assert re.search(
            r"execution-0 exited unexpectedly \(killed by SIGKILL\); restarting it now", up.output
        )
        death = await owner.wait_for(lambda f: f.get("type") == "agent_death", timeout=20)
        assert death["run_id"] == run_id and death["payload"]["death_cause"] == "no_heartbeat"
        assert_one_clean_run(owner.events(run_id))
        await _serves_new_runs_cancels_and_resumes(up, url)
    finally:
        await owner.close()
    assert await asyncio.to_thread(up.interrupt) == 0, up.output
    assert_all_stopped(up)


async def _kill_mid_run(up: RunwireUp, kind: str, *, lossless: bool = True) -> None:
    """Kill ``kind`` while a run streams: its owner gets every event once; then all works again.

    Not ``lossless``: events of the run may be missing (announced by a ``gap``), never duplicated.
    """
    url = up.wait_ready()
    address = up.services()[f"{kind}-0"].address
    token = up.token(new_id("user"))
    client = await WsClient.open(url, token)
    seen: list[Frame] = []
    try:
        run_id = (await client.start_run("scripted", _streaming_script(30)))["run"]["run_id"]
        await client.wait_for(lambda f: f.get("run_id") == run_id and f.get("seq", 0) >= 5)
        up.kill(f"{kind}-0")

        if kind == "gateway":
            await asyncio.wait_for(client.closed.wait(), 10)
            seen += client.events(run_id)
            client = await _reopen(url, token, after=seen[-1]["event_id"])
        await asyncio.to_thread(up.wait_serving_after_restarts, f"{kind}-0", 1)
        assert up.services()[f"{kind}-0"].address == address
        terminal = await client.wait_terminal(run_id, timeout=60)
        seen += client.events(run_id)
        if lossless:
            assert assert_one_clean_run(seen) is terminal and terminal["type"] == "agent_completed"
            assert sum(e["type"] == "partial_result" for e in seen) == 30
        else:
            seqs = [e["seq"] for e in seen]
            assert seqs == sorted(set(seqs)) and seen[-1] is terminal, seqs
            assert [e["type"] for e in seen].count("agent_completed") == 1
        await _serves_new_runs_cancels_and_resumes(up, url)
    finally:
        await client.close()
    assert await asyncio.to_thread(up.interrupt) == 0, up.output
    assert_all_stopped(up)


@pytest.mark.parametrize("kind", ["registry", "gateway"])
async def test_a_killed_service_is_restarted_on_its_address_and_a_run_in_flight_loses_nothing(
    runwire_up: Start, kind: str
) -> None:
    await _kill_mid_run(runwire_up(), kind)


async def test_a_killed_memory_bridge_is_restarted_and_the_run_in_flight_still_ends_once(
    runwire_up: Start,
) -> None:
    await _kill_mid_run(runwire_up(), "bridge", lossless=False)


async def test_a_killed_redis_bridge_is_restarted_on_its_address_and_a_run_in_flight_loses_nothing(
    runwire_up: Start, redis_url: str, redis_prefix: str
) -> None:
    # The memory bridge keeps its log in its process: only Redis keeps events across a SIGKILL.
    up = runwire_up(
        "--redis-url", redis_url, "--service-env", f"bridge:RUNWIRE_BRIDGE_REDIS_KEY_PREFIX={redis_prefix}"
    )
    await _kill_mid_run(up, "bridge")


def test_a_service_that_exits_at_every_start_is_given_up_and_runwire_up_exits_non_zero(
    runwire_up: Start,
) -> None:
    up = runwire_up(
        "--service-env",
        "execution:RUNWIRE_EXECUTION_HEARTBEAT_INTERVAL_S=not-a-number",
        "--max-restarts",
        "2",
        "--restart-backoff",
        "0.1",
    )
    code = up.wait(timeout=90)
    log = up.folder / "logs" / "execution-0.log"
    assert code == 1, up.output
    assert re.search(r"execution-0 exited 3 time\(s\) within 60s \(exit code 2\); giving up on it", up.output)
    assert f"See its log: {log}" in up.output
    assert "invalid configuration" in up.output  # the end of its log, shown with the message
    assert "restarting it now (restart 1)" in up.output and "restarting it in 0.1s (restart 2)" in up.output
    assert "no execution process is left, so Runwire cannot serve" in up.output
    assert "ws://" not in up.output  # never announced as ready
    assert_all_stopped(up)


def test_a_service_that_keeps_crashing_once_up_is_given_up_and_runwire_up_exits_non_zero(
    runwire_up: Start,
) -> None:
    up = runwire_up("--max-restarts", "1")
    up.wait_ready()
    up.kill("bridge-0")
    up.wait_serving_after_restarts("bridge-0", 1)
    up.kill("bridge-0")
    assert up.wait(timeout=60) == 1, up.output
    log = up.folder / "logs" / "bridge-0.log"
    assert re.search(r"bridge-0 exited 2 time\(s\) within 60s \(killed by SIGKILL\); giving up", up.output)
    assert f"See its log: {log}" in up.output
    assert "no bridge process is left, so Runwire cannot serve" in up.output
    assert_all_stopped(up)


def test_ctrl_c_during_a_restart_backoff_stops_everything_and_restarts_nothing(runwire_up: Start) -> None:
    up = runwire_up("--restart-backoff", "30")
    up.wait_ready()
    up.kill("execution-0")
    up.wait_serving_after_restarts("execution-0", 1)
    up.kill("execution-0")
    up.wait_for_output(r"execution-0 exited unexpectedly \(killed by SIGKILL\); restarting it in 30s")

    waiting = wait_until(
        lambda: _record(up, "execution-0").get("state") == "restarting" or None,
        timeout=10,
        what="execution-0 waiting to restart",
    )
    assert waiting and _record(up, "execution-0")["pid"] is None
    status = up.status()
    assert status.returncode == 1, status.stdout
    assert re.search(r"(?m)^execution-0\s+down\s+-\s+127\.0\.0\.1:\d+\s+-\s+1\s+restarting$", status.stdout)
    assert re.search(r"(?m)^gateway-0\s+SERVING\s", status.stdout)

    assert up.interrupt(timeout=30) == 0, up.output
    assert_all_stopped(up)
    assert up.output.count("execution-0 is serving again") == 1  # the first restart, none after Ctrl-C


def _record(up: RunwireUp, name: str) -> dict[str, Any]:
    [record] = [r for r in services_json(up.folder)["services"] if r["name"] == name]
    return record
