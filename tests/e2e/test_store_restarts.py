"""The stores restarted for real under a running cluster: Redis killed and started empty, PostgreSQL's
connections terminated.

Each test starts its own cluster of service processes (as ``runwire up``
does) and streams several users' ``scripted`` runs through it while the
fault happens. What must hold: every started run ends with exactly one
terminal event for its owner, per run the seqs only go up (a hole only
after an explicit ``gap`` frame), nobody receives anyone else's events,
nothing waits longer than a bound, and a run started after the fault
completes normally.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import pytest

from tests.bridge_service.own_redis import RedisServer, own_redis
from tests.e2e.conftest import Launch, System
from tests.e2e.test_faults import assert_one_clean_run
from tests.e2e.wsclient import TERMINAL, Frame, WsClient

pytestmark = pytest.mark.e2e

USERS = 4
CHUNKS = 40  # one partial_result every PAUSE_MS: about 4 s of steady stream per run
PAUSE_MS = 100
END_NOTICE_DELAY_S = 4.0  # the registry's copy of each terminal event comes this long after the end
FOLLOW_TIMEOUT_S = 40.0


def _streaming(marker: str) -> dict[str, Any]:
    steps: list[dict[str, Any]] = [{"think": marker}]
    for i in range(CHUNKS):
        steps += [{"partial": f"{marker}-{i}"}, {"sleep_ms": PAUSE_MS}]
    return {"steps": steps, "result": marker}


@dataclass
class Owner:
    """One user's connection, opened again with its cursor whenever the gateway closes it."""

    system: System
    user_id: str
    client: WsClient
    frames: list[Frame] = field(default_factory=list)  # every connection's frames, in order
    runs: list[str] = field(default_factory=list)

    @classmethod
    async def open(cls, system: System, user_id: str) -> Owner:
        return cls(system, user_id, await WsClient.open(system.url, system.token(user_id)))

    def all_frames(self) -> list[Frame]:
        return self.frames + self.client.frames

    def events(self, run_id: str | None = None) -> list[Frame]:
        return [
            f
            for f in self.all_frames()
            if "seq" in f and "event_id" in f and (run_id is None or f.get("run_id") == run_id)
        ]

    async def start(self, script: dict[str, Any]) -> str:
        reply = await self.client.start_run("scripted", script)
        assert reply["type"] == "run.accepted", reply
        run_id: str = reply["run"]["run_id"]
        self.runs.append(run_id)
        return run_id

    async def reconnect(self) -> None:
        events = self.events()
        self.frames += self.client.frames
        await self.client.close()
        cursor = events[-1]["event_id"] if events else None
        self.client = await WsClient.open(self.system.url, self.system.token(self.user_id), after=cursor)

    async def wait_terminal(self, run_id: str, timeout: float = FOLLOW_TIMEOUT_S) -> Frame:
        """The run's terminal event, resuming from the cursor when the connection is closed on us."""
        deadline = time.monotonic() + timeout
        while True:
            for frame in self.events(run_id):
                if frame["type"] in TERMINAL:
                    return frame
            try:
                return await self.client.wait_terminal(run_id, timeout=max(0.1, deadline - time.monotonic()))
            except AssertionError:
                if not self.client.closed.is_set() or time.monotonic() >= deadline:
                    raise
            await self.reconnect()

    def check(self) -> None:
        """Only own events; per run seqs increasing, a hole only after a gap; one terminal event each."""
        gap_seen = False
        last_seq: dict[str, int] = {}
        for frame in self.all_frames():
            if frame.get("type") == "gap":
                gap_seen = True
                continue
            if "seq" not in frame or "event_id" not in frame:
                continue
            assert frame["user_id"] == self.user_id and frame["run_id"] in self.runs, frame
            run_id, seq = frame["run_id"], frame["seq"]
            before = last_seq.get(run_id, 0)
            assert seq > before, f"seq {seq} after {before} in {run_id}"
            first = int(frame.get("merged_from") or seq)
            assert first == before + 1 or gap_seen, (
                f"seqs {before + 1}..{first - 1} of {run_id} lost silently"
            )
            last_seq[run_id] = seq
        for run_id in self.runs:
            terminals = [e["type"] for e in self.events(run_id) if e["type"] in TERMINAL]
            assert len(terminals) == 1, (run_id, terminals)

    def gaps(self) -> list[Frame]:
        return [f for f in self.all_frames() if f.get("type") == "gap"]

    async def close(self) -> None:
        await self.client.close()


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    with own_redis(tmp_path) as server:
        yield server


async def _owners(system: System, user: Callable[[], str]) -> list[Owner]:
    return [await Owner.open(system, user()) for _ in range(USERS)]


async def _streaming_runs(owners: list[Owner]) -> list[str]:
    """Each owner: one run that ends at once (before the fault), one streaming through it."""
    streaming: list[str] = []
    for owner in owners:
        quick = await owner.start({"steps": [{"think": "quick"}], "result": "quick"})
        assert (await owner.wait_terminal(quick, timeout=15))["type"] == "agent_completed"
        streaming.append(await owner.start(_streaming(owner.user_id)))
    for owner, run_id in zip(owners, streaming, strict=True):

        def under_way(frame: Frame, run_id: str = run_id) -> bool:
            return bool(frame.get("run_id") == run_id and frame.get("seq", 0) >= 5)

        await owner.client.wait_for(under_way)
    return streaming


async def _after_the_fault(owners: list[Owner], streaming: list[str]) -> None:
    """Every run ends, every copy of a terminal event has had time to arrive, a new run completes."""
    ends = await asyncio.gather(
        *(owner.wait_terminal(run_id) for owner, run_id in zip(owners, streaming, strict=True))
    )
    for end in ends:
        assert end["type"] in TERMINAL
    for owner in owners:
        fresh = await owner.start({"steps": [{"think": "after"}, {"partial": "again"}], "result": "again"})
        end = await owner.wait_terminal(fresh, timeout=20)
        assert end["type"] == "agent_completed" and end["payload"]["final_response"] == "again", end
        assert_one_clean_run(owner.events(fresh))
    # The registry delivers its copy of every terminal event after its delay: none may add a second.
    await asyncio.sleep(END_NOTICE_DELAY_S + 3.0)
    for owner in owners:
        owner.check()
        for run_id in owner.runs:
            state = await owner.client.call({"type": "run.get", "run_id": run_id})
            assert state["run"]["state"] in {"completed", "failed", "timeout", "cancelled", "dead"}, state


async def test_redis_killed_and_started_empty_mid_stream(
    redis_server: RedisServer, launch: Launch, user: Callable[[], str]
) -> None:
    # (launch last: its cluster stops before the Redis server does)
    system = launch(
        grace_period_s=2.0,
        redis_url=redis_server.url,
        service_env={"registry": {"RUNWIRE_REGISTRY_END_NOTICE_DELAY_S": str(END_NOTICE_DELAY_S)}},
    )
    owners = await _owners(system, user)
    try:
        streaming = await _streaming_runs(owners)
        await asyncio.to_thread(redis_server.kill)
        await asyncio.sleep(1.0)
        await asyncio.to_thread(redis_server.start)  # same port, no persistence: every log is gone

        await _after_the_fault(owners, streaming)
        for owner, run_id in zip(owners, streaming, strict=True):
            # The log each subscriber was following was lost: it is told so.
            assert owner.gaps(), f"no gap frame for {owner.user_id}: {owner.all_frames()[-5:]}"
            end = owner.events(run_id)[-1]
            assert end["type"] == "agent_completed", end
    finally:
        for owner in owners:
            await owner.close()


@pytest.fixture
async def terminate_backends(fresh_database: str) -> AsyncIterator[Callable[[], Any]]:
    """``pg_terminate_backend`` for every connection to the test's database but the caller's."""
    name = fresh_database.rsplit("/", 1)[1]
    admin_dsn = fresh_database.replace("+asyncpg", "").rsplit("/", 1)[0] + "/postgres"
    admin = await asyncpg.connect(admin_dsn)

    async def terminate() -> int:
        rows = await admin.fetch(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = $1 AND pid <> pg_backend_pid()",
            name,
        )
        return sum(1 for row in rows if row[0])

    try:
        yield terminate
    finally:
        await admin.close()


async def _read_concurrently(owners: list[Owner], calls: int) -> list[Frame]:
    """``calls`` run.get and runs.list requests per owner at once (so the registry uses many connections)."""
    requests = []
    for owner in owners:
        for i in range(calls):
            frame = {"type": "runs.list"} if i % 2 else {"type": "run.get", "run_id": owner.runs[-1]}
            requests.append(owner.client.call(frame))
    return list(await asyncio.gather(*requests))


async def test_postgres_connections_terminated_mid_stream(
    fresh_database: str, terminate_backends: Callable[[], Any], launch: Launch, user: Callable[[], str]
) -> None:
    # (launch last: its cluster stops before the database is dropped)
    system = launch(
        grace_period_s=2.0,
        database_url=fresh_database,
        service_env={"registry": {"RUNWIRE_REGISTRY_END_NOTICE_DELAY_S": str(END_NOTICE_DELAY_S)}},
    )
    owners = await _owners(system, user)
    try:
        streaming = await _streaming_runs(owners)
        await _read_concurrently(owners, 6)  # the registry's pool holds a dozen connections or more
        for _ in range(3):  # the registry's connections, again as it reconnects
            # Terminated while reads are in flight, and under the reads that follow:
            # no user's request may fail for a connection the server closed.
            reading = asyncio.ensure_future(_read_concurrently(owners, 6))
            assert await terminate_backends() > 0
            replies = await reading + await _read_concurrently(owners, 6)
            assert all(reply["type"] in {"run", "runs"} for reply in replies), [
                reply for reply in replies if reply["type"] not in {"run", "runs"}
            ]
            await asyncio.sleep(0.5)

        await _after_the_fault(owners, streaming)
        for owner, run_id in zip(owners, streaming, strict=True):
            end = owner.events(run_id)[-1]
            assert end["type"] in TERMINAL, end
    finally:
        for owner in owners:
            await owner.close()
