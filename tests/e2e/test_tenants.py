"""Two tenants, one ``sub``: the owner is ``(tenant_id, user_id)``, end to end.

Tokens of two tenants with the same subject must behave like two strangers:
each sees only its own runs, threads and events, whether listing, getting,
cancelling, answering, resuming or subscribing, on the embedded backends and
on Redis with PostgreSQL.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from runwire_common.ids import new_id
from tests.e2e.conftest import Launch, System
from tests.e2e.test_faults import assert_one_clean_run, redis_prefix  # noqa: F401 - a fixture
from tests.e2e.wsclient import Frame, WsClient

pytestmark = pytest.mark.e2e

ASKING = {"steps": [{"think": "secret of tenant a"}, {"ask": "Your name?"}, {"partial": "!"}], "result": "a"}
QUICK = {"steps": [{"think": "secret of tenant b"}, {"partial": "b"}], "result": "b"}


def _foreign(client: WsClient, run_ids: set[str]) -> list[Frame]:
    return [frame for frame in client.frames if frame.get("run_id") in run_ids]


async def _two_tenants_one_sub(system: System, sub: str) -> None:
    tenant_a, tenant_b = new_id("tenant_a"), new_id("tenant_b")
    a = await WsClient.open(system.url, system.token(sub, tenant_id=tenant_a))
    b = await WsClient.open(system.url, system.token(sub, tenant_id=tenant_b))
    plain = await WsClient.open(system.url, system.token(sub))  # no tenant: a third owner
    try:
        started_a = await a.start_run("scripted", ASKING)
        assert started_a["type"] == "run.accepted", started_a
        run_a, thread_a = started_a["run"]["run_id"], started_a["run"]["thread_id"]
        asked = await a.wait_for(lambda f: f.get("run_id") == run_a and f.get("type") == "input_required")
        request_id = asked["payload"]["request_id"]

        started_b = await b.start_run("scripted", QUICK)
        assert started_b["type"] == "run.accepted", started_b
        run_b, thread_b = started_b["run"]["run_id"], started_b["run"]["thread_id"]
        assert_one_clean_run_of(await b.wait_terminal(run_b), b, run_b)

        # Lists: each tenant's own run and thread only.
        for client, mine in ((a, run_a), (b, run_b)):
            listed = await client.call({"type": "runs.list"})
            assert listed["type"] == "runs", listed
            assert [run["run_id"] for run in listed["runs"]] == [mine]
        for client, mine in ((a, thread_a), (b, thread_b)):
            threads = await client.call({"type": "threads.list"})
            assert threads["type"] == "threads", threads
            assert [thread["thread_id"] for thread in threads["threads"]] == [mine]
        assert (await plain.call({"type": "runs.list"}))["runs"] == []
        assert (await plain.call({"type": "threads.list"}))["threads"] == []

        # Every id of the other tenant is unknown: get, thread, answer, cancel, delete.
        for client, run_id, thread_id in (
            (b, run_a, thread_a),
            (a, run_b, thread_b),
            (plain, run_a, thread_a),
        ):
            for frame in (
                {"type": "run.get", "run_id": run_id},
                {"type": "thread.get", "thread_id": thread_id},
                {
                    "type": "run.respond",
                    "run_id": run_id,
                    "request_id": request_id,
                    "response": {"text": "Eve"},
                },
                {"type": "run.cancel", "run_id": run_id},
                {"type": "thread.delete", "thread_id": thread_id},
            ):
                reply = await client.call(frame)
                assert (reply["type"], reply.get("code")) == ("error", "not_found"), (frame, reply)
        still = await a.call({"type": "run.get", "run_id": run_a})
        assert still["run"]["state"] == "waiting", still

        # Resume from the very start, on the open connection and on a new one.
        for client in (b, plain):
            replayed = await client.call({"type": "resume", "after": "0-0"})
            assert replayed["type"] in ("resumed", "gap"), replayed
        late_b = await WsClient.open(system.url, system.token(sub, tenant_id=tenant_b), after="0-0")
        try:
            await late_b.wait_terminal(run_b)
            answered = await a.call(
                {
                    "type": "run.respond",
                    "run_id": run_a,
                    "request_id": request_id,
                    "response": {"text": "Ada"},
                }
            )
            assert answered["type"] == "run.responded", answered
            assert_one_clean_run_of(await a.wait_terminal(run_a), a, run_a)
            # Live events of the answered run reached no one else (the stream is per owner).
            await asyncio.sleep(0.5)
            assert _foreign(late_b, {run_a}) == []
        finally:
            await late_b.close()
        assert _foreign(b, {run_a}) == [] and _foreign(plain, {run_a, run_b}) == []
        assert [f for f in _foreign(a, {run_b}) if "seq" in f] == []
        assert {e["run_id"] for e in a.events()} == {run_a}
        assert {e["run_id"] for e in b.events()} == {run_b}

        # The other tenants' cancels and answers did not touch the run.
        final_a = await a.call({"type": "run.get", "run_id": run_a})
        assert final_a["run"]["state"] == "completed", final_a
    finally:
        await asyncio.gather(a.close(), b.close(), plain.close())


def assert_one_clean_run_of(terminal: Frame, client: WsClient, run_id: str) -> None:
    assert terminal["type"] == "agent_completed", terminal
    assert_one_clean_run(client.events(run_id))


async def test_equal_subs_in_two_tenants_never_share_runs_threads_or_events(
    system: System, user: Callable[[], str]
) -> None:
    await _two_tenants_one_sub(system, user())


async def test_equal_subs_in_two_tenants_never_share_anything_on_redis_and_postgresql(
    launch: Launch,
    fresh_database: str,
    redis_url: str,
    redis_prefix: str,  # noqa: F811
    user: Callable[[], str],
) -> None:
    system = launch(
        database_url=fresh_database,
        redis_url=redis_url,
        service_env={"bridge": {"RUNWIRE_BRIDGE_REDIS_KEY_PREFIX": redis_prefix}},
    )
    await _two_tenants_one_sub(system, user())
