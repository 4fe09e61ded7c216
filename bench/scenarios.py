"""The WebSocket measurements: load against Runwire and the baseline, paced
delivery latency, RSS stability and idle-connection memory.

Every function takes running systems and returns a JSON-ready dict. CPU seconds
of each service are the difference of ``/proc/<pid>/stat`` readings taken when
every client is connected and when the last one finished; RSS figures are
``VmRSS`` (now) and ``VmHWM`` (peak since start) in KiB.

On the production configuration (Redis bridge backend) a :class:`RedisProbe`
adds Redis readings — ``connected_clients`` and the bridge's own connections —
before, at the peak and after each measurement (see :mod:`bench.redisstats`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import sys
import time
from collections import Counter
from collections.abc import Iterator, Mapping
from typing import Any

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from bench import procstats
from bench.clients import TERMINAL, ClientSpec
from bench.config import BenchConfig, scripted_input
from bench.driver import Fleet, run_load
from bench.redisstats import Peak, RedisProbe, phases
from bench.stats import ratio
from runwire_common.ids import new_id

FD_RESERVE = 1024  # descriptors a gateway needs besides its WebSocket connections


def _users(count: int) -> tuple[str, ...]:
    return tuple(new_id("user") for _ in range(count))


def measure_load(
    url: str,
    jwt_secret: str | None,
    pids: Mapping[str, int],
    *,
    users: int,
    runs_per_user: int,
    input_json: str,
    expected_events: int,
    drivers: int,
    start_spread_s: float = 0.0,
    redis: RedisProbe | None = None,
    settle_s: float = 0.0,
) -> dict[str, Any]:
    """``users`` clients each doing ``runs_per_user`` runs back to back.

    ``events_per_s`` is every event frame clients received divided by the time
    from the common start to the last event's arrival. With ``redis``: Redis
    readings before the clients connect, at the peak (polled during connect and
    load) and ``settle_s`` after they closed; ``redis_cpu_s`` is the Redis
    server's CPU over the same span as ``service_cpu_s``.
    """
    spec = ClientSpec(
        url=url,
        users=_users(users),
        jwt_secret=jwt_secret,
        mode="load",
        input_json=input_json,
        runs_per_user=runs_per_user,
        expected_events=expected_events,
        start_spread_s=start_spread_s,
    )
    before: list[procstats.Sample] = []
    redis_at_go: list[dict[str, Any]] = []
    hooks = [lambda: before.append(procstats.sample(pids))]
    if redis is not None:
        hooks.append(lambda: redis_at_go.append(redis.reading()))
    redis_before = redis.reading() if redis is not None else {}
    with _polling(redis) as peak:
        result = run_load(spec, drivers, on_ready=hooks)
        after = procstats.sample(pids)
        redis_at_end = redis.reading() if redis is not None else {}
    summary = result.summary()
    cpu = procstats.cpu_delta(before[0], after)
    summary["runs_per_user"] = runs_per_user
    summary["service_cpu_s"] = cpu
    summary["service_cpu_ms_per_event"] = (
        round(sum(cpu.values()) * 1000 / result.events, 4) if result.events else 0
    )
    summary["service_rss_kb"] = dict(after.rss_kb)
    summary["service_peak_rss_kb"] = {name: procstats.peak_rss_kb(pid) for name, pid in pids.items()}
    if redis is not None:
        _settle(settle_s)
        summary["redis"] = phases(redis_before, peak, redis.reading())
        summary["redis_cpu_s"] = round(redis_at_end["cpu_s"] - redis_at_go[0]["cpu_s"], 3)
    return summary


@contextlib.contextmanager
def _polling(redis: RedisProbe | None) -> Iterator[Peak]:
    if redis is None:
        yield Peak()
        return
    with redis.polling() as peak:
        yield peak


def compare(runwire: Mapping[str, Any], baseline: Mapping[str, Any]) -> dict[str, Any]:
    """Runwire / baseline for throughput and latency figures (``None`` where undefined)."""
    out: dict[str, Any] = {"events_per_s": ratio(runwire["events_per_s"], baseline["events_per_s"])}
    for kind in ("accepted_latency", "delivery_latency"):
        for stat in ("p50_ms", "p99_ms", "max_ms"):
            out[f"{kind}.{stat}"] = ratio(runwire[kind][stat], baseline[kind][stat])
    return out


def load_pair(
    cfg: BenchConfig,
    users: int,
    rw: tuple[str, str, Mapping[str, int]],
    base: tuple[str, Mapping[str, int]],
    *,
    redis: RedisProbe | None = None,
) -> dict[str, Any]:
    """The baseline, then Runwire, at the same client count and the same script."""
    input_json = scripted_input(cfg.events_per_run, cfg.payload_bytes)
    common: dict[str, Any] = {
        "users": users,
        "runs_per_user": cfg.runs_for(users),
        "input_json": input_json,
        "expected_events": cfg.events_per_run,
        "drivers": cfg.drivers_for(users),
    }
    baseline = measure_load(base[0], None, base[1], **common)
    runwire = measure_load(rw[0], rw[1], rw[2], **common, redis=redis, settle_s=cfg.settle_s)
    return {"users": users, "runwire": runwire, "baseline": baseline, "ratio": compare(runwire, baseline)}


def paced(
    cfg: BenchConfig, rw: tuple[str, str, Mapping[str, int]], base: tuple[str, Mapping[str, int]]
) -> dict[str, Any]:
    """``paced_users`` users each receiving ``paced_rate`` events/s (partials with ``sleep_ms`` between).

    The figure that matters is delivery latency p99 under a steady, moderate
    load rather than a saturating one. So that the load is steady, the users'
    first runs start spread evenly over one run's duration instead of all at
    once (which would make every run start in one burst, run after run).
    """
    sleep_ms = round(1000 / cfg.paced_rate)
    input_json = scripted_input(cfg.events_per_run, cfg.payload_bytes, sleep_ms=sleep_ms)
    run_s = max(0, cfg.events_per_run - 3) * sleep_ms / 1000  # the sleeps between partials
    common: dict[str, Any] = {
        "users": cfg.paced_users,
        "runs_per_user": cfg.paced_runs,
        "input_json": input_json,
        "expected_events": cfg.events_per_run,
        "drivers": 1,
        "start_spread_s": run_s,
    }
    baseline = measure_load(base[0], None, base[1], **common)
    runwire = measure_load(rw[0], rw[1], rw[2], **common)
    return {
        "users": cfg.paced_users,
        "events_per_s_per_user": cfg.paced_rate,
        "sleep_ms": sleep_ms,
        "start_spread_s": run_s,
        "runwire": runwire,
        "baseline": baseline,
        "ratio": compare(runwire, baseline),
    }


def _settle(seconds: float) -> None:
    time.sleep(seconds)


def stability(cfg: BenchConfig, url: str, jwt_secret: str, pids: Mapping[str, int]) -> dict[str, Any]:
    """RSS of every service after warm-up, then after ``stability_runs`` runs by ``stability_users`` users.

    Warm-up: the same users, a tenth of the runs (at least one per user), so
    every code path, pool and cache has been touched. The delta is what the
    services kept after the load: retained event logs, leaks, fragmentation.
    """
    users = _users(cfg.stability_users)
    input_json = scripted_input(cfg.events_per_run, cfg.payload_bytes)
    per_user = max(1, cfg.stability_runs // cfg.stability_users)

    def drive(runs: int) -> dict[str, Any]:
        spec = ClientSpec(
            url=url,
            users=users,
            jwt_secret=jwt_secret,
            mode="load",
            input_json=input_json,
            runs_per_user=runs,
            expected_events=cfg.events_per_run,
        )
        return run_load(spec, cfg.drivers_for(len(users))).summary()

    warm = drive(max(1, per_user // 10))
    _settle(cfg.settle_s)
    warm_rss = procstats.sample(pids).rss_kb
    loaded = drive(per_user)
    _settle(cfg.settle_s)
    after_rss = procstats.sample(pids).rss_kb
    return {
        "users": cfg.stability_users,
        "runs": per_user * cfg.stability_users,
        "runs_ok": loaded["runs_ok"],
        "warmup_runs_ok": warm["runs_ok"],
        "warm_rss_kb": dict(warm_rss),
        "after_rss_kb": dict(after_rss),
        "delta_kb": {name: after_rss[name] - warm_rss[name] for name in warm_rss},
        "peak_rss_kb": {name: procstats.peak_rss_kb(pid) for name, pid in pids.items()},
    }


def _sources(extra: int, used: Counter[str], per_source: int) -> tuple[str, ...]:
    """Loopback source addresses for ``extra`` more connections, at most ``per_source`` on each.

    ``used`` (connections already held per address) is updated. Each driver
    process takes every n-th user, so it gets its share of every address.
    """
    plan: list[str] = []
    for octet in range(1, 255):
        address = f"127.0.0.{octet}"
        take = min(per_source - used[address], extra - len(plan))
        if take > 0:
            plan += [address] * take
            used[address] += take
        if len(plan) == extra:
            return tuple(plan)
    raise ValueError(f"{extra} more connections need more than 254 source addresses")


def _progress(step: Mapping[str, Any]) -> None:
    """One line on stderr per idle step (the large ones take minutes)."""
    redis = step.get("redis")
    tail = (
        f"; Redis connected_clients {redis['connected_clients']:,}, bridge's {redis['bridge_clients']:,}"
        if redis
        else ""
    )
    print(
        f"[bench]   idle: {step['connections']:,} of {step['wanted']:,} held in {step['connect_s']} s, "
        f"gateway + bridge {step['total_kb_per_connection']:.1f} KB per connection{tail}",
        file=sys.stderr,
        flush=True,
    )


def idle_drivers(extra: int) -> int:
    """Driver processes for ``extra`` idle connections: about 10,000 each, 4 from 2,000 on."""
    return 1 if extra < 2000 else max(4, math.ceil(extra / 10_000))


def idle(
    cfg: BenchConfig,
    url: str,
    jwt_secret: str,
    pids: Mapping[str, int],
    *,
    counts: tuple[int, ...] | None = None,
    redis: RedisProbe | None = None,
) -> dict[str, Any]:
    """Gateway and bridge memory per idle authenticated connection, cumulatively at each count.

    ``counts`` defaults to ``cfg.idle_counts``. Each connection is a distinct
    user (so the per-user connection limit does not apply) that completed the
    handshake with a JWT and received ``connected``; the gateway holds one
    bridge subscription for each. KiB per connection = (RSS with N
    connections - RSS before) / N, for the gateway, the bridge and both.
    Connections come from loopback source addresses 127.0.0.1, 127.0.0.2, …,
    at most ``cfg.idle_per_source`` each (one address has ~28k ports towards
    the gateway's port). At the end every connection sends one ``ping`` and
    must get its ``pong`` — or, above ``cfg.idle_ping_all_max`` connections,
    about ``cfg.idle_ping_sample`` connections spread evenly over all of them.
    With ``redis``: Redis readings before, at every step, at the peak and after
    every connection closed.
    """
    wanted = tuple(sorted(counts or cfg.idle_counts))
    # The gateway inherits this process's RLIMIT_NOFILE: one descriptor per connection, plus its own.
    nofile = procstats.nofile_limit()
    counts = tuple(c for c in wanted if c + FD_RESERVE <= nofile)
    not_measured = {
        str(c): f"needs RLIMIT_NOFILE >= {c + FD_RESERVE} for the gateway; the limit here is {nofile} "
        "(raise the hard limit: ulimit -Hn, LimitNOFILE=, docker --ulimit nofile=…)"
        for c in wanted
        if c not in counts
    }
    if not counts:
        return {"steps": [], "held": 0, "not_measured": not_measured}
    ping_every = 1 if counts[-1] <= cfg.idle_ping_all_max else math.ceil(counts[-1] / cfg.idle_ping_sample)
    _settle(cfg.settle_s)
    before = procstats.sample(pids).rss_kb
    redis_before = redis.reading() if redis is not None else {}
    fleets: list[Fleet] = []
    steps: list[dict[str, Any]] = []
    used: Counter[str] = Counter()
    held = 0
    results = []
    late: dict[str, Any] = {}
    with _polling(redis) as peak:
        try:
            for count in counts:
                extra = count - held
                spec = ClientSpec(
                    url=url,
                    users=_users(extra),
                    jwt_secret=jwt_secret,
                    mode="idle",
                    sources=_sources(extra, used, cfg.idle_per_source),
                    ping_every=ping_every,
                )
                fleet = Fleet(spec, idle_drivers(extra))
                fleets.append(fleet)
                started = time.monotonic()
                fleet.start()
                connect_s = time.monotonic() - started
                held += fleet.connected
                _settle(cfg.settle_s)
                rss = procstats.sample(pids).rss_kb
                per_conn = {
                    name: round((rss[name] - before[name]) / max(1, held), 2)
                    for name in ("gateway", "bridge")
                }
                step: dict[str, Any] = {
                    "connections": held,
                    "wanted": count,
                    "connect_failed": fleet.connect_failed,
                    "connect_s": round(connect_s, 2),
                    "rss_kb": dict(rss),
                    "gateway_kb_per_connection": per_conn["gateway"],
                    "bridge_kb_per_connection": per_conn["bridge"],
                    "total_kb_per_connection": round(per_conn["gateway"] + per_conn["bridge"], 2),
                }
                if redis is not None:
                    step["redis"] = redis.reading()
                steps.append(step)
                _progress(step)
            late = late_run(url, jwt_secret, events=cfg.events_per_run)
            for fleet in fleets:
                fleet.go()
            results = [fleet.finish() for fleet in fleets]
        finally:
            for fleet in fleets:
                fleet.close()
    out: dict[str, Any] = {
        "rss_before_kb": dict(before),
        "late_run": late if steps else {},
        "steps": steps,
        "held": held,
        "ping_every": ping_every,
        "pinged": sum(r.pinged for r in results),
        "alive_after_hold": sum(r.alive for r in results),
        "source_addresses": dict(sorted(used.items())),
        "connect_errors": [e for r in results for e in r.connect_errors][:3],
        "gateway_peak_rss_kb": procstats.peak_rss_kb(pids["gateway"]),
        "bridge_peak_rss_kb": procstats.peak_rss_kb(pids["bridge"]),
    }
    if not_measured:
        out["not_measured"] = not_measured
    if redis is not None:
        _settle(cfg.settle_s)
        out["redis"] = phases(redis_before, peak, redis.reading())
    return out


def late_run(url: str, jwt_secret: str, *, events: int, timeout_s: float = 60.0) -> dict[str, Any]:
    """A user arriving while every idle connection is held starts one ``scripted`` run.

    Returns whether it completed with every seq once, how many events came,
    and seconds from the handshake to the terminal event (or the error).
    """
    return asyncio.run(_late_run(url, jwt_secret, events=events, timeout_s=timeout_s))


async def _late_run(url: str, jwt_secret: str, *, events: int, timeout_s: float) -> dict[str, Any]:
    from runwire_cli.tokens import mint_token

    user = new_id("late")
    started = time.monotonic()
    seqs: list[int] = []
    try:
        async with asyncio.timeout(timeout_s):
            async with connect(
                url,
                additional_headers={"Authorization": f"Bearer {mint_token(jwt_secret, user, ttl_s=600)}"},
                compression=None,
                open_timeout=timeout_s,
            ) as ws:
                await ws.send(
                    json.dumps(
                        {
                            "type": "run.start",
                            "id": "late",
                            "agent": "scripted",
                            "input": json.loads(scripted_input(events, 64)),
                        }
                    )
                )
                async for message in ws:
                    frame = json.loads(message)
                    if frame.get("type") == "error":
                        return {"completed": False, "error": str(frame.get("message"))[:200]}
                    if "seq" in frame and frame.get("user_id") == user:
                        seqs.append(int(frame["seq"]))
                        if frame["type"] in TERMINAL:
                            return {
                                "completed": frame["type"] == "agent_completed"
                                and seqs == list(range(1, len(seqs) + 1)),
                                "events": len(seqs),
                                "seconds": round(time.monotonic() - started, 3),
                            }
    except (TimeoutError, OSError, ConnectionClosed, InvalidHandshake) as exc:
        return {"completed": False, "events": len(seqs), "error": f"{type(exc).__name__}: {exc}"[:200]}
    return {"completed": False, "events": len(seqs), "error": "the connection closed before the run ended"}
