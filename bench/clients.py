"""What one driver process does: many real WebSocket clients on one uvloop loop.

Each client is one user with one connection. In ``load`` mode it sends
``run.start`` frames one after another (one run in flight per user, the next
as soon as the previous run's terminal event arrived) and records:

* **accepted latency** — from sending ``run.start`` to receiving ``run.accepted``
  (monotonic clock of the driver);
* **delivery latency** — for every event frame, arrival time (wall clock) minus
  the event's ``timestamp``, which the execution service (or the baseline's
  gRPC server) stamped when it created the event; both run on this host, so
  they share the clock;
* events received, bytes of event frames, run errors by code.

In ``idle`` mode the clients only connect and authenticate, wait until the
coordinator releases them, and then prove the connection is still usable with
one application ``ping`` → ``pong`` — every connection, or every
``ping_every``-th one (a sample spread over all of them) when very many are held.
Idle clients may each connect from a given loopback source address
(``sources``): one address has only about 28k ephemeral ports towards one
gateway port, so 50,000 connections need two or more (127.0.0.2, … are on
loopback too).

The coordinator (:mod:`bench.driver`) runs this in separate processes and merges
the results; this module runs inside such a process.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import resource
import socket
import time
from array import array
from collections import Counter
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlparse

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from bench.stats import parse_rfc3339

TERMINAL = frozenset({"agent_completed", "agent_error", "agent_cancelled", "agent_death"})
# Linux: pick the source port at connect() (unique per 4-tuple), not at bind() (unique per address).
IP_BIND_ADDRESS_NO_PORT = int(getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24))


@dataclass(frozen=True)
class ClientSpec:
    """What the clients of one driver process do (picklable, sent to the process)."""

    url: str
    users: tuple[str, ...]
    jwt_secret: str | None  # None: no Authorization header (the baseline chain)
    mode: str  # "load" or "idle"
    input_json: str = "{}"
    agent: str = "scripted"
    runs_per_user: int = 1
    expected_events: int = 0
    run_timeout_s: float = 60.0
    # Client i of n waits start_spread_s * i / n before its first run (a steady load
    # instead of every client starting at once).
    start_spread_s: float = 0.0
    connect_concurrency: int = 100
    connect_timeout_s: float = 60.0
    # Source address of each user's connection (same order as ``users``); empty: the default.
    sources: tuple[str, ...] = ()
    # Idle mode: every ``ping_every``-th connection of this process sends the final ping.
    ping_every: int = 1


@dataclass
class ClientResult:
    """What one driver process measured; merged by the coordinator."""

    connected: int = 0
    connect_failed: int = 0
    connect_errors: list[str] = field(default_factory=list)
    runs_ok: int = 0
    runs_failed: int = 0
    run_errors: dict[str, int] = field(default_factory=dict)
    events: int = 0
    event_bytes: int = 0
    missing_events: int = 0
    duplicate_events: int = 0
    stray_events: int = 0
    # seqs that arrived inside coalesced partial_result frames (counted in ``events`` too)
    coalesced_events: int = 0
    accepted_s: array[float] = field(default_factory=lambda: array("d"))
    delivery_s: array[float] = field(default_factory=lambda: array("d"))
    t_first_send: float = 0.0
    t_last_event: float = 0.0
    cpu_s: float = 0.0
    pinged: int = 0
    alive: int = 0


def _cpu_now() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def _socket_from(source: str, url: str, timeout_s: float) -> socket.socket:
    """A TCP connection to ``url``'s host and port from the address ``source``."""
    parsed = urlparse(url)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_IP, IP_BIND_ADDRESS_NO_PORT, 1)
        sock.bind((source, 0))
        sock.setblocking(False)
        target = (parsed.hostname or "127.0.0.1", parsed.port or 80)
        await asyncio.wait_for(asyncio.get_running_loop().sock_connect(sock, target), timeout_s)
    except BaseException:
        sock.close()
        raise
    return sock


async def _open(
    spec: ClientSpec, user: str, gate: asyncio.Semaphore, source: str | None = None
) -> ClientConnection:
    headers: dict[str, str] = {}
    if spec.jwt_secret is not None:
        from runwire_cli.tokens import mint_token

        headers["Authorization"] = f"Bearer {mint_token(spec.jwt_secret, user, ttl_s=24 * 3600)}"
    last: Exception | None = None
    for attempt in range(4):
        async with gate:
            try:
                extra: dict[str, Any] = {}
                if source is not None:
                    extra["sock"] = await _socket_from(source, spec.url, spec.connect_timeout_s)
                conn = await connect(
                    spec.url,
                    additional_headers=headers,
                    compression=None,
                    open_timeout=spec.connect_timeout_s,
                    ping_interval=None,
                    max_size=1 << 22,
                    **extra,
                )
            except (OSError, InvalidHandshake, TimeoutError) as exc:
                last = exc
            else:
                hello = json.loads(await asyncio.wait_for(conn.recv(), spec.connect_timeout_s))
                if hello.get("type") != "connected":
                    await conn.close()
                    raise RuntimeError(f"unexpected first frame {hello!r}")
                return conn
        if isinstance(last, InvalidStatus) and last.response.status_code in (401, 404):
            break
        await asyncio.sleep(0.2 * (attempt + 1))
    assert last is not None
    raise last


class _Recorder:
    """Per-process accumulator the clients write into (owned by one run of :func:`drive`)."""

    def __init__(self) -> None:
        self.result = ClientResult()
        self.errors: Counter[str] = Counter()


async def _client_load(spec: ClientSpec, index: int, conn: ClientConnection, rec: _Recorder) -> None:
    """Run after run on one connection; see the module docstring for what is recorded.

    Events are grouped by ``run_id``: a coalesced ``partial_result`` frame counts
    as every seq it stands for (``merged_from``..``seq``); a completed run with
    fewer distinct ``seq`` than expected counts ``missing_events``, a repeated ``seq`` counts
    ``duplicate_events``, and an event of an earlier run arriving during this one
    counts ``stray_events`` (it came after its own run's terminal event).
    """
    result = rec.result
    head = f'{{"type":"run.start","agent":"{spec.agent}","input":{spec.input_json},"id":"'
    if spec.start_spread_s:
        await asyncio.sleep(spec.start_spread_s * index / max(1, len(spec.users)))
    for run in range(spec.runs_per_user):
        frame = f'{head}u{index}r{run}"}}'
        accepted = done = False
        run_id = ""
        seqs: dict[str, set[int]] = {}
        received = 0
        sent = time.monotonic()
        try:
            await conn.send(frame)
            async with asyncio.timeout(spec.run_timeout_s):
                while not (accepted and done):
                    message = await conn.recv()
                    now = time.time()
                    parsed: dict[str, Any] = json.loads(message)
                    kind = parsed.get("type")
                    if "seq" in parsed:
                        # A coalesced partial_result frame stands for the seqs merged_from..seq.
                        covered = range(parsed.get("merged_from", parsed["seq"]), parsed["seq"] + 1)
                        received += len(covered)
                        if len(covered) > 1:
                            result.coalesced_events += len(covered)
                        result.event_bytes += len(message)
                        result.delivery_s.append(now - parse_rfc3339(parsed["timestamp"]))
                        result.t_last_event = max(result.t_last_event, now)
                        seen = seqs.setdefault(parsed["run_id"], set())
                        result.duplicate_events += sum(seq in seen for seq in covered)
                        seen.update(covered)
                        done = done or (kind in TERMINAL and (not run_id or parsed["run_id"] == run_id))
                    elif kind == "run.accepted":
                        result.accepted_s.append(time.monotonic() - sent)
                        run_id = parsed["run"]["run_id"]
                        accepted = True
                        # A terminal event of another run that arrived first must not end this one.
                        done = done and bool(seqs.get(run_id))
                    elif kind == "error":
                        rec.errors[str(parsed.get("code"))] += 1
                        break
        except TimeoutError:
            rec.errors["timeout"] += 1
        except ConnectionClosed:
            rec.errors["connection_closed"] += 1
            result.events += received
            result.runs_failed += spec.runs_per_user - run
            return
        result.events += received
        result.stray_events += sum(len(v) for k, v in seqs.items() if k != run_id) if run_id else 0
        if accepted and done:
            result.runs_ok += 1
            result.missing_events += max(0, spec.expected_events - len(seqs.get(run_id, ())))
        else:
            result.runs_failed += 1


async def _client_ping(conn: ClientConnection) -> bool:
    try:
        await conn.send('{"type":"ping","id":"idle"}')
        async with asyncio.timeout(30):
            while True:
                if json.loads(await conn.recv()).get("type") == "pong":
                    return True
    except (TimeoutError, ConnectionClosed):
        return False


async def connect_all(spec: ClientSpec, rec: _Recorder) -> list[tuple[int, ClientConnection]]:
    """Open one connection per user; failures are counted, not raised."""
    gate = asyncio.Semaphore(spec.connect_concurrency)
    sources: tuple[str | None, ...] = spec.sources or (None,) * len(spec.users)
    outcomes = await asyncio.gather(
        *(_open(spec, user, gate, source) for user, source in zip(spec.users, sources, strict=True)),
        return_exceptions=True,
    )
    conns: list[tuple[int, ClientConnection]] = []
    for index, outcome in enumerate(outcomes):
        if isinstance(outcome, BaseException):
            rec.result.connect_failed += 1
            if len(rec.result.connect_errors) < 5:
                rec.result.connect_errors.append(f"{type(outcome).__name__}: {outcome}")
        else:
            conns.append((index, outcome))
    rec.result.connected = len(conns)
    return conns


async def drive(spec: ClientSpec, wait_for_go: Any, report_ready: Any) -> ClientResult:
    """Connect, report ready, wait for the go signal, run the mode, close; return the result.

    ``report_ready(connected, failed)`` and the blocking ``wait_for_go()`` are the
    coordinator's hooks (a queue put and an event wait across processes).
    """
    rec = _Recorder()
    conns = await connect_all(spec, rec)
    report_ready(rec.result.connected, rec.result.connect_failed)
    await asyncio.get_running_loop().run_in_executor(None, wait_for_go)
    cpu0 = _cpu_now()
    rec.result.t_first_send = time.time()
    if spec.mode == "load":
        await asyncio.gather(*(_client_load(spec, i, conn, rec) for i, conn in conns))
    else:
        sampled = conns[:: max(1, spec.ping_every)]
        alive = await asyncio.gather(*(_client_ping(conn) for _, conn in sampled))
        rec.result.pinged = len(sampled)
        rec.result.alive = sum(alive)
    rec.result.cpu_s = _cpu_now() - cpu0
    rec.result.run_errors = dict(rec.errors)
    gate = asyncio.Semaphore(500)

    async def close(conn: ClientConnection) -> None:
        async with gate:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.close(), 10)

    await asyncio.gather(*(close(conn) for _, conn in conns))
    return rec.result
