"""Rotating the attestation key in a running cluster, one process at a time, refuses nothing.

Two replicas of every service (Redis event fabric, PostgreSQL registry), and
owners running short runs all along. The key set moves through the three
steps of docs/deployment.md — add the new key as verify-only, switch signing
to it, remove the old one — and each step is rolled out one process at a
time, so every step runs as a mixed cluster: processes on the previous spec
next to processes on the new one, signing with either key. Every run must
complete with all of its events delivered to its owner, and nothing may be
refused as ``UNAUTHENTICATED`` anywhere: not to a client, not between
services (the services' logs are searched too).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import signal
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from runwire_cli.cluster import Cluster, ServiceProcess
from runwire_common.attestation import generate_key_spec
from tests.e2e.conftest import Launch, System
from tests.e2e.test_faults import assert_one_clean_run, redis_prefix  # noqa: F401 - a fixture
from tests.e2e.wsclient import TERMINAL, Frame, WsClient

pytestmark = pytest.mark.e2e

SCRIPT = {"steps": [{"think": "rotating"}, {"sleep_ms": 800}, {"partial": "still here"}], "result": "done"}
OWNERS = 3
# Refusals of an attestation, as services and clients word them.
REFUSALS = ("unauthenticated", "attested with an unknown key", "attestation does not match", "not attested")
# Rolled one at a time, alternating kinds, so peers of every kind run on both specs meanwhile.
ROLL_ORDER = ("registry", "bridge", "execution", "gateway")


def rotation_steps(old: str, new: str) -> list[tuple[str, str]]:
    """docs/deployment.md's steps as (name, key spec); ``old`` and ``new`` are one-key specs."""
    return [
        ("add the new key as verify-only", f"{old},{new}:verify-only"),
        ("switch signing to the new key", f"{old}:verify-only,{new}"),
        ("remove the old key", new),
    ]


class RunningOwner:
    """One user starting runs one after another through any gateway, resuming across restarts."""

    def __init__(self, system: System, user: str) -> None:
        self._system = system
        self._token = system.token(user)
        self.user = user
        self.events: dict[str, list[Frame]] = {}
        self.event_ids: set[str] = set()
        self.cursor = ""
        self.refusals: list[Frame | str] = []
        self.errors: list[Frame] = []
        self.gaps: list[Frame] = []
        self.completed = 0
        self._urls = itertools.cycle(range(len(system.cluster.processes["gateway"])))

    async def connect(self) -> WsClient:
        for _ in range(200):
            url = self._system.cluster.gateway_urls()[next(self._urls)]
            with contextlib.suppress(OSError, InvalidHandshake, TimeoutError):
                return await WsClient.open(url, self._token, after=self.cursor or None)
            await asyncio.sleep(0.1)
        raise AssertionError(f"{self.user} found no gateway to connect to")

    def absorb(self, client: WsClient) -> None:
        """Keep the frames of a finished connection: events once each, the cursor, refusals."""
        for frame in client.frames:
            if "seq" in frame and "event_id" in frame:
                if frame["event_id"] not in self.event_ids:
                    self.event_ids.add(frame["event_id"])
                    self.events.setdefault(frame["run_id"], []).append(frame)
                self.cursor = frame["event_id"]
            elif frame.get("type") == "gap":
                self.gaps.append(frame)
            elif frame.get("type") == "error":
                self.errors.append(frame)
                if frame.get("code") == "unauthenticated":
                    self.refusals.append(frame)
        reason = client.connection.close_reason or ""
        if any(refusal in reason.lower() for refusal in REFUSALS):
            self.refusals.append(f"closed {client.connection.close_code}: {reason}")

    async def run_until(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            client = await self.connect()
            try:
                while not stop.is_set():
                    reply = await client.start_run("scripted", SCRIPT)
                    if reply["type"] != "run.accepted":
                        await asyncio.sleep(0.2)  # recorded by absorb; a restart may refuse a call
                        continue
                    await client.wait_terminal(reply["run"]["run_id"], timeout=60)
                    self.completed += 1
            except (AssertionError, ConnectionClosed):
                if not client.closed.is_set():
                    raise  # a timeout on an open connection: something is stuck
            finally:
                await client.close()
                self.absorb(client)

    async def collect(self) -> list[Frame]:
        """Resume once more, until every run of this owner has its terminal event; return the runs."""
        client = await self.connect()
        try:
            runs: list[Frame] = []
            page: Frame = {"type": "runs.list", "limit": 100}
            while True:
                listed = await client.call(page)
                assert listed["type"] == "runs", listed
                runs += listed["runs"]
                if not listed.get("next_page_token"):
                    break
                page = {**page, "page_token": listed["next_page_token"]}
            for run in runs:
                done = [e for e in self.events.get(run["run_id"], []) if e["type"] in TERMINAL]
                if not done:
                    await client.wait_terminal(run["run_id"], timeout=60)
            return runs
        finally:
            await client.close()
            self.absorb(client)


async def roll(
    cluster: Cluster, procs: Sequence[ServiceProcess], spec: str, owners: Sequence[RunningOwner]
) -> None:
    """Restart ``procs`` one at a time (SIGTERM, drain, start on the same port) with ``spec``.

    Runs go on while each process drains and restarts, and every owner completes
    one more run in each mix of specs before the next process is restarted.
    """
    for proc in procs:
        proc.signal(signal.SIGTERM)
        code = await asyncio.to_thread(proc.wait, cluster.config.grace_period_s + 10)
        assert code == 0, f"{proc.name} exited with {code}:\n{proc.log_tail()}"
        proc.env["RUNWIRE_ATTESTATION_KEYS"] = spec
        await asyncio.to_thread(cluster.restart, proc)
        await progress(owners)


async def progress(owners: Sequence[RunningOwner], *, timeout_s: float = 60) -> None:
    """Wait until every owner completed one more run (runs go on in the current mix of specs)."""
    before = [owner.completed for owner in owners]
    async with asyncio.timeout(timeout_s):
        while any(owner.completed <= seen for owner, seen in zip(owners, before, strict=True)):
            await asyncio.sleep(0.1)


def refusals_logged(logs: Sequence[Path]) -> list[str]:
    lines = []
    for path in logs:
        for line in path.read_text(errors="replace").splitlines():
            if any(refusal in line.lower() for refusal in REFUSALS):
                lines.append(f"{path.name}: {line[:300]}")
    return lines


async def test_a_key_rotation_rolled_one_process_at_a_time_refuses_nothing_and_loses_no_run(
    launch: Launch,
    fresh_database: str,
    redis_url: str,
    redis_prefix: str,  # noqa: F811
    attestation_key_spec: str,
    user: Callable[[], str],
) -> None:
    system = launch(
        replicas=2,
        grace_period_s=10,
        database_url=fresh_database,
        redis_url=redis_url,
        service_env={"bridge": {"RUNWIRE_BRIDGE_REDIS_KEY_PREFIX": redis_prefix}},
    )
    cluster = system.cluster
    order = [cluster.processes[kind][index] for index in range(2) for kind in ROLL_ORDER]
    owners = [RunningOwner(system, user()) for _ in range(OWNERS)]
    stop = asyncio.Event()
    workers = [asyncio.create_task(owner.run_until(stop)) for owner in owners]
    try:
        await progress(owners)
        for name, spec in rotation_steps(attestation_key_spec, generate_key_spec("rotated")):
            await roll(cluster, order, spec, owners)
            logged = refusals_logged([proc.log_path for proc in order])
            refused = [refusal for owner in owners for refusal in owner.refusals]
            assert not refused and not logged, (name, refused, logged)
    finally:
        stop.set()
        await asyncio.gather(*workers)

    for owner in owners:
        runs = await owner.collect()
        assert owner.refusals == [] and owner.gaps == [], (owner.refusals, owner.gaps)
        assert len(runs) >= owner.completed >= 4
        for run in runs:
            events = sorted(owner.events[run["run_id"]], key=lambda e: e["seq"])
            terminal = assert_one_clean_run(events)
            assert terminal["type"] == "agent_completed", (run, [e["type"] for e in events])
            assert {e["user_id"] for e in events} == {owner.user}
    assert refusals_logged([proc.log_path for proc in order]) == []
