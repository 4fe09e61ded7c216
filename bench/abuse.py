"""The abuse measurement: normal users' delivery and ping latency with and without two abusers.

The normal users are the paced load (``abuse_users`` users, each receiving
``paced_rate`` events/s) plus ``abuse_pingers`` extra connections that each
send a ``ping`` every ``abuse_ping_interval_s`` and time each ``pong``. It runs
on a Runwire of its own with the gateway's default limits (the other
measurements raise the rate limits for their load clients), twice: alone, then
next to two abusive clients started in a thread of their own —

* a **flooder** that sends 64 KiB frames as fast as its socket takes them
  (the gateway refuses them unparsed past the rate limit and closes it with
  1008); it reconnects and floods again until the load ends;
* a **non-reader** that starts a run of large events and never reads (the
  gateway closes it once a write waits longer than its send timeout); it
  reconnects the same way.

Reported per pass: the normal users' delivery p99 and the pings' p99, side
by side, with what happened to the abusers (frames sent, closes by code).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any
from urllib.parse import urlsplit

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from bench import systems
from bench.config import BenchConfig, scripted_input
from bench.scenarios import measure_load
from bench.stats import latency_summary_ms
from runwire_cli.tokens import mint_token
from runwire_common.ids import new_id

FLOOD_FRAME_BYTES = 64 * 1024
# The gateway's defaults, which the benchmark otherwise raises for its load clients.
DEFAULT_LIMITS: Mapping[str, str] = MappingProxyType(
    {
        "RUNWIRE_GATEWAY_RATE_LIMIT_MESSAGES": "30",
        "RUNWIRE_GATEWAY_RUN_START_RATE_LIMIT": "60",
    }
)


def flood_frame() -> str:
    """A ``ping`` frame padded to :data:`FLOOD_FRAME_BYTES`."""
    return json.dumps({"type": "ping", "pad": "x" * (FLOOD_FRAME_BYTES - 64)})


BIG_EVENTS = 200  # the non-reader's run: 200 partials of ~60 KB, far more than socket buffers hold


class _Abusers:
    """The flooder and the non-reader, on an event loop in a thread of their own."""

    def __init__(self, url: str, jwt_secret: str) -> None:
        self.url = url
        self.jwt_secret = jwt_secret
        self.stop = threading.Event()
        self.frames_sent = 0
        self.closes: Counter[str] = Counter()
        self.errors: list[str] = []

    def _headers(self, user: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {mint_token(self.jwt_secret, user)}"}

    def _closed(self, who: str, exc: ConnectionClosed) -> None:
        code = exc.rcvd.code if exc.rcvd is not None else 1006
        self.closes[f"{who} {code}"] += 1

    async def flood(self) -> None:
        user = new_id("flooder")
        frame = flood_frame()
        while not self.stop.is_set():
            try:
                async with connect(self.url, additional_headers=self._headers(user), compression=None) as ws:
                    # Its replies are read (and dropped) so that the close frame is seen.
                    replies = asyncio.create_task(_drain(ws))
                    try:
                        while not self.stop.is_set():
                            await ws.send(frame)
                            self.frames_sent += 1
                        return
                    except ConnectionClosed as exc:
                        self._closed("flooder", exc)
                    finally:
                        replies.cancel()
            except (OSError, InvalidHandshake) as exc:
                self.errors.append(f"flooder: {exc}"[:200])
                await asyncio.sleep(0.2)

    async def never_read(self) -> None:
        user = new_id("nonreader")
        host = urlsplit(self.url)
        steps = [{"partial": "p" * 60_000} for _ in range(BIG_EVENTS)]
        start = json.dumps({"type": "run.start", "id": 1, "agent": "scripted", "input": {"steps": steps}})
        while not self.stop.is_set():
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.setblocking(False)
            try:
                await asyncio.get_running_loop().sock_connect(sock, (host.hostname, host.port))
                async with connect(
                    self.url, additional_headers=self._headers(user), sock=sock, max_queue=1, compression=None
                ) as ws:
                    await ws.send(start)
                    # Never read: only watch, without reading, whether the gateway cut the socket.
                    while not self.stop.is_set() and not ws.transport.is_closing():  # noqa: ASYNC110 - a thread's stop flag
                        await asyncio.sleep(0.1)
                    if ws.transport.is_closing():
                        self.closes["non-reader closed"] += 1
            except (OSError, InvalidHandshake, ConnectionClosed) as exc:
                self.errors.append(f"non-reader: {exc}"[:200])
                await asyncio.sleep(0.2)

    def run(self) -> None:
        async def both() -> None:
            await asyncio.gather(self.flood(), self.never_read())

        asyncio.run(both())

    def summary(self) -> dict[str, Any]:
        return {"flood_frames_sent": self.frames_sent, "closes": dict(self.closes), "errors": self.errors[:3]}


async def _drain(ws: ClientConnection) -> None:
    with contextlib.suppress(ConnectionClosed):
        async for _ in ws:
            pass


class _Pinger:
    """``count`` normal connections that each ping every ``interval_s`` and time the pongs."""

    def __init__(self, url: str, jwt_secret: str, *, count: int, interval_s: float) -> None:
        self.url = url
        self.jwt_secret = jwt_secret
        self.count = count
        self.interval_s = interval_s
        self.stop = threading.Event()
        self.rtt_s: list[float] = []
        self.errors: list[str] = []

    async def _ping(self, ws: ClientConnection, n: int) -> None:
        sent = time.perf_counter()
        await ws.send(json.dumps({"type": "ping", "id": n}))
        while True:
            frame = json.loads(await ws.recv())
            if frame.get("type") == "pong" and frame.get("id") == n:
                self.rtt_s.append(time.perf_counter() - sent)
                return

    async def _main(self) -> None:
        await asyncio.gather(*(self._one() for _ in range(self.count)))

    async def _one(self) -> None:
        headers = {"Authorization": f"Bearer {mint_token(self.jwt_secret, new_id('pinger'))}"}
        async with connect(self.url, additional_headers=headers, compression=None) as ws:
            await ws.recv()  # connected
            n = 0
            while not self.stop.is_set():
                n += 1
                await self._ping(ws, n)
                await asyncio.sleep(self.interval_s)

    def run(self) -> None:
        try:
            asyncio.run(self._main())
        except Exception as exc:  # noqa: BLE001 - reported, not raised from a thread
            self.errors.append(f"{type(exc).__name__}: {exc}"[:200])


@contextlib.contextmanager
def _in_thread(worker: _Abusers | _Pinger) -> Iterator[None]:
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    try:
        yield
    finally:
        worker.stop.set()
        thread.join(timeout=30)


def _pass(
    cfg: BenchConfig, rw: tuple[str, str, Mapping[str, int]], abusers: _Abusers | None
) -> dict[str, Any]:
    url, jwt_secret, pids = rw
    sleep_ms = round(1000 / cfg.paced_rate)
    pinger = _Pinger(url, jwt_secret, count=cfg.abuse_pingers, interval_s=cfg.abuse_ping_interval_s)
    with contextlib.ExitStack() as stack:
        if abusers is not None:
            stack.enter_context(_in_thread(abusers))
            time.sleep(1.0)  # the abusers are at it before the load starts
        stack.enter_context(_in_thread(pinger))
        load = measure_load(
            url,
            jwt_secret,
            pids,
            users=cfg.abuse_users,
            runs_per_user=cfg.paced_runs,
            input_json=scripted_input(cfg.events_per_run, cfg.payload_bytes, sleep_ms=sleep_ms),
            expected_events=cfg.events_per_run,
            drivers=1,
            start_spread_s=max(0, cfg.events_per_run - 3) * sleep_ms / 1000,
        )
    out: dict[str, Any] = {
        "runs_ok": load["runs_ok"],
        "runs_failed": load["runs_failed"],
        "missing_events": load["missing_events"],
        "delivery_latency": load["delivery_latency"],
        "ping_latency": latency_summary_ms(pinger.rtt_s),
        "pings": len(pinger.rtt_s),
        "ping_errors": pinger.errors,
    }
    if abusers is not None:
        out["abusers"] = abusers.summary()
    return out


def abuse(cfg: BenchConfig, data_dir: Path) -> dict[str, Any]:
    """The normal users alone, then next to a flooder and a non-reader (same system, same load)."""
    with systems.runwire(data_dir, gateway_env=DEFAULT_LIMITS) as rw:
        target = (rw.url, rw.jwt_secret, rw.pids())
        without = _pass(cfg, target, None)
        with_abusers = _pass(cfg, target, _Abusers(rw.url, rw.jwt_secret))
    return {
        "gateway_limits": dict(DEFAULT_LIMITS),
        "users": cfg.abuse_users,
        "events_per_s_per_user": cfg.paced_rate,
        "without_abusers": without,
        "with_abusers": with_abusers,
    }
