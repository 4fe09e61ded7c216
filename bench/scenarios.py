"""The WebSocket measurements: load against Runwire and the baseline, paced
delivery latency, RSS stability and idle-connection memory.

Every function takes running systems and returns a JSON-ready dict. CPU seconds
of each service are the difference of ``/proc/<pid>/stat`` readings taken when
every client is connected and when the last one finished; RSS figures are
``VmRSS`` (now) and ``VmHWM`` (peak since start) in KiB.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from bench import procstats
from bench.clients import ClientSpec
from bench.config import BenchConfig, scripted_input
from bench.driver import Fleet, run_load
from bench.stats import ratio
from runwire_common.ids import new_id


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
) -> dict[str, Any]:
    """``users`` clients each doing ``runs_per_user`` runs back to back.

    ``events_per_s`` is every event frame clients received divided by the time
    from the common start to the last event's arrival.
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
    result = run_load(spec, drivers, on_ready=[lambda: before.append(procstats.sample(pids))])
    after = procstats.sample(pids)
    summary = result.summary()
    cpu = procstats.cpu_delta(before[0], after)
    summary["runs_per_user"] = runs_per_user
    summary["service_cpu_s"] = cpu
    summary["service_cpu_ms_per_event"] = (
        round(sum(cpu.values()) * 1000 / result.events, 4) if result.events else 0
    )
    summary["service_rss_kb"] = dict(after.rss_kb)
    summary["service_peak_rss_kb"] = {name: procstats.peak_rss_kb(pid) for name, pid in pids.items()}
    return summary


def compare(runwire: Mapping[str, Any], baseline: Mapping[str, Any]) -> dict[str, Any]:
    """Runwire / baseline for throughput and latency figures (``None`` where undefined)."""
    out: dict[str, Any] = {"events_per_s": ratio(runwire["events_per_s"], baseline["events_per_s"])}
    for kind in ("accepted_latency", "delivery_latency"):
        for stat in ("p50_ms", "p99_ms", "max_ms"):
            out[f"{kind}.{stat}"] = ratio(runwire[kind][stat], baseline[kind][stat])
    return out


def load_pair(
    cfg: BenchConfig, users: int, rw: tuple[str, str, Mapping[str, int]], base: tuple[str, Mapping[str, int]]
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
    runwire = measure_load(rw[0], rw[1], rw[2], **common)
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


def idle(cfg: BenchConfig, url: str, jwt_secret: str, pids: Mapping[str, int]) -> dict[str, Any]:
    """Gateway memory per idle authenticated connection, cumulatively at each count of ``idle_counts``.

    Each connection is a distinct user (so the per-user connection limit does
    not apply) that completed the handshake with a JWT and received
    ``connected``; the gateway holds one bridge ``Subscribe`` stream for each.
    KiB per connection = (gateway RSS with N connections - RSS before) / N.
    At the end every connection sends one ``ping`` and must get its ``pong``.
    """
    _settle(cfg.settle_s)
    before = procstats.sample(pids).rss_kb
    fleets: list[Fleet] = []
    steps: list[dict[str, Any]] = []
    held = 0
    try:
        for count in sorted(cfg.idle_counts):
            extra = count - held
            spec = ClientSpec(url=url, users=_users(extra), jwt_secret=jwt_secret, mode="idle")
            fleet = Fleet(spec, 1 if extra < 2000 else 4)
            fleets.append(fleet)
            started = time.monotonic()
            fleet.start()
            connect_s = time.monotonic() - started
            held += fleet.connected
            _settle(cfg.settle_s)
            rss = procstats.sample(pids).rss_kb
            steps.append(
                {
                    "connections": held,
                    "wanted": count,
                    "connect_failed": fleet.connect_failed,
                    "connect_s": round(connect_s, 2),
                    "rss_kb": dict(rss),
                    "gateway_kb_per_connection": round(
                        (rss["gateway"] - before["gateway"]) / max(1, held), 2
                    ),
                    "bridge_kb_per_connection": round((rss["bridge"] - before["bridge"]) / max(1, held), 2),
                }
            )
        for fleet in fleets:
            fleet.go()
        results = [fleet.finish() for fleet in fleets]
    finally:
        for fleet in fleets:
            fleet.close()
    alive = sum(r.alive for r in results)
    return {
        "rss_before_kb": dict(before),
        "steps": steps,
        "held": held,
        "alive_after_hold": alive,
        "connect_errors": [e for r in results for e in r.connect_errors][:3],
        "gateway_peak_rss_kb": procstats.peak_rss_kb(pids["gateway"]),
    }
