"""One benchmark run: every measurement in order, each on the right system.

1. ``load`` — Runwire (as ``runwire up`` starts it) and the baseline chain are
   both running; at each user count the baseline is measured, then Runwire.
2. ``paced`` — the same two systems, a steady 10 events/s per user.
3. ``--profile`` — one more Runwire load with py-spy attached (not in the table).
4. ``stability`` — a fresh Runwire: warm-up, RSS, 1,000 runs, RSS.
5. ``idle`` — a fresh Runwire: gateway RSS with 1,000 and 10,000 idle connections.
   (``--smoke`` runs 4 and 5 on the first Runwire instead, to save start-up time.)
6. ``registry`` — the registry alone on SQLite, then on a dedicated PostgreSQL database.

The production configuration (``prod``: Redis bridge backend, PostgreSQL
registry; see :func:`bench.systems.runwire_production`) is measured in the same
run: ``prod_load`` right after 1-3, against the same still-running baseline
chain (baseline, then Runwire, at each of ``prod_users``), and ``prod_idle``
on a fresh production system after 5 (``--smoke``: on the ``prod_load`` system).
Each production system gets a freshly created PostgreSQL database and a
cleared Redis key prefix.

A failing section is recorded under ``errors`` and the run goes on.
"""

from __future__ import annotations

import contextlib
import os
import platform
import shutil
import socket
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from bench import abuse, profiling, report, scenarios, systems
from bench.baseline import BaselineChain
from bench.config import BenchConfig
from bench.procstats import raise_nofile_limit

REPO_ROOT = Path(__file__).resolve().parents[1]


def _machine() -> str:
    model = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as handle:
            model = next((ln.split(":", 1)[1].strip() for ln in handle if ln.startswith("model name")), model)
    except OSError:
        pass
    mem_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (
        f"{os.cpu_count()} x {model}, {mem_gb:.0f} GiB RAM, {platform.system()} {platform.release()}, "
        f"Python {platform.python_version()}"
    )


def _loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def _brief(exc: BaseException) -> str:
    """One line for the results: the exception type and the first line of its message."""
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {first[:300]}"


def _section(results: dict[str, Any], name: str, body: Callable[[], Any]) -> None:
    started = time.monotonic()
    print(f"[bench] {name} …", file=sys.stderr, flush=True)
    try:
        results[name] = body()
    except Exception as exc:  # noqa: BLE001 - one failed measurement must not stop the others
        results.setdefault("errors", {})[name] = _brief(exc)
        traceback.print_exc()
    print(f"[bench] {name} done in {time.monotonic() - started:.1f}s", file=sys.stderr, flush=True)


def _reachable(url: str, default_port: int = 5432) -> bool:
    parsed = urlparse(url.replace("+asyncpg", ""))
    try:
        with socket.create_connection(
            (parsed.hostname or "127.0.0.1", parsed.port or default_port), timeout=1
        ):
            return True
    except OSError:
        return False


def _main_system(cfg: BenchConfig, work: Path, results: dict[str, Any], out_folder: Path) -> None:
    chain = BaselineChain(work / "baseline")
    try:
        with ThreadPoolExecutor(1) as pool:
            baseline_started = pool.submit(chain.start)  # in parallel with Runwire's start-up
            with systems.runwire(work / "runwire") as rw:
                baseline_started.result()
                _measure_main(cfg, rw, chain, results, out_folder)
            if _prod_wanted(cfg, results, "load") or (
                not cfg.fresh_systems and _prod_wanted(cfg, results, "idle")
            ):
                _section(results, "prod_load", lambda: _prod_main(cfg, work, chain, results))
                if results.get("prod_load") is None:
                    results.pop("prod_load", None)
    finally:
        chain.stop()


def _prod_unavailable(cfg: BenchConfig) -> str | None:
    """Why the production configuration cannot be measured here, or ``None``."""
    missing = [
        f"{name} not reachable at {url}"
        for name, url, port in (("Redis", cfg.redis_url, 6379), ("PostgreSQL", cfg.postgres_url, 5432))
        if not _reachable(url, port)
    ]
    return "; ".join(missing) or None


def _prod_wanted(cfg: BenchConfig, results: dict[str, Any], part: str) -> bool:
    """Whether ``part`` (load or idle) of the production configuration runs; records a skip reason."""
    if "prod" in cfg.skip or part in cfg.skip:
        return False
    prod = results["meta"]["prod"]
    if "skipped" not in prod:
        reason = _prod_unavailable(cfg)
        prod["skipped"] = reason
        if reason:
            print(f"[bench] production configuration skipped: {reason}", file=sys.stderr, flush=True)
    return prod["skipped"] is None


def _production(cfg: BenchConfig, data_dir: Path) -> contextlib.AbstractContextManager[systems.Production]:
    return systems.runwire_production(
        data_dir,
        admin_url=cfg.postgres_url,
        database=cfg.postgres_database,
        redis_url=cfg.redis_url,
        key_prefix=cfg.redis_key_prefix,
        poll_s=cfg.redis_poll_s,
    )


def _prod_main(
    cfg: BenchConfig, work: Path, chain: BaselineChain, results: dict[str, Any]
) -> list[dict[str, Any]] | None:
    """Load on the production configuration (baseline, then Runwire, at each of ``prod_users``).

    In smoke runs the production idle measurement runs on this system too.
    """
    with _production(cfg, work / "prod") as prod:
        rw = prod.runwire
        rows: list[dict[str, Any]] | None = None
        if "load" not in cfg.skip:
            rows = []
            for users in cfg.prod_users:
                print(f"[bench]   production load at {users} users", file=sys.stderr, flush=True)
                rows.append(
                    scenarios.load_pair(
                        cfg,
                        users,
                        (rw.url, rw.jwt_secret, rw.pids()),
                        (chain.url, chain.pids),
                        redis=prod.redis,
                    )
                )
        if not cfg.fresh_systems and "idle" not in cfg.skip:
            _section(results, "prod_idle", lambda: _prod_idle_on(cfg, prod, results))
    return rows


def _prod_idle_on(cfg: BenchConfig, prod: systems.Production, results: dict[str, Any]) -> dict[str, Any]:
    rw = prod.runwire
    out = scenarios.idle(cfg, rw.url, rw.jwt_secret, rw.pids(), counts=cfg.prod_idle_counts, redis=prod.redis)
    return _idle_checked("prod_idle", out, results)


def _idle_checked(name: str, out: dict[str, Any], results: dict[str, Any]) -> dict[str, Any]:
    """Connection counts the file-descriptor limit did not allow are an error of the run."""
    for count, reason in (out.get("not_measured") or {}).items():
        print(
            f"[bench]   {name}: {int(count):,} connections not measured: {reason}",
            file=sys.stderr,
            flush=True,
        )
        results.setdefault("errors", {})[f"{name} {int(count):,}"] = reason
    return out


def _measure_main(
    cfg: BenchConfig, rw: systems.Runwire, chain: BaselineChain, results: dict[str, Any], out_folder: Path
) -> None:
    """Load and paced (baseline, then Runwire), the optional profile, and in smoke runs the rest."""
    rw_target = (rw.url, rw.jwt_secret, rw.pids())
    base_target = (chain.url, chain.pids)
    if "load" not in cfg.skip:

        def load() -> list[dict[str, Any]]:
            rows = []
            for users in cfg.users:
                print(f"[bench]   load at {users} users", file=sys.stderr, flush=True)
                rows.append(scenarios.load_pair(cfg, users, rw_target, base_target))
            return rows

        _section(results, "load", load)
    if "paced" not in cfg.skip:
        _section(results, "paced", lambda: scenarios.paced(cfg, rw_target, base_target))
    if cfg.profile:
        _section(results, "profile", lambda: _profile(cfg, rw, out_folder))
    if not cfg.fresh_systems:
        _on_system(cfg, rw, results)


def _on_system(cfg: BenchConfig, rw: systems.Runwire, results: dict[str, Any]) -> None:
    """The stability and idle measurements on an already running Runwire."""
    if "stability" not in cfg.skip:
        _section(results, "stability", lambda: scenarios.stability(cfg, rw.url, rw.jwt_secret, rw.pids()))
    if "idle" not in cfg.skip:
        _section(
            results,
            "idle",
            lambda: _idle_checked("idle", scenarios.idle(cfg, rw.url, rw.jwt_secret, rw.pids()), results),
        )


def _profile(cfg: BenchConfig, rw: systems.Runwire, out_folder: Path) -> dict[str, Any]:
    from bench.config import scripted_input

    pids = {name: pid for name, pid in rw.pids().items() if name in cfg.profile_services}
    raw_dir = out_folder / "raw-profiles"
    recorder = profiling.Recorder(pids, raw_dir, rate=cfg.profile_rate, native=cfg.profile_native)
    try:
        load = scenarios.measure_load(
            rw.url,
            rw.jwt_secret,
            rw.pids(),
            users=cfg.profile_users,
            runs_per_user=cfg.profile_runs_per_user,
            input_json=scripted_input(cfg.events_per_run, cfg.payload_bytes),
            expected_events=cfg.events_per_run,
            drivers=cfg.drivers_for(cfg.profile_users),
        )
    finally:
        failures = recorder.stop()
    services: dict[str, Any] = {}
    for name, raw in recorder.raw.items():
        if name in failures:
            services[name] = {"error": failures[name]}
            continue
        text, data = profiling.summarise(name, raw.read_text().splitlines())
        (out_folder / f"profile-{name}.txt").write_text(text)
        services[name] = data
    shutil.rmtree(raw_dir, ignore_errors=True)
    return {
        "users": cfg.profile_users,
        "events_per_s_under_profiler": load["events_per_s"],
        "service_cpu_s": load["service_cpu_s"],
        "services": services,
    }


def _registry(cfg: BenchConfig, work: Path) -> dict[str, Any]:
    """Registry throughput on SQLite and on a dedicated PostgreSQL database.

    Both registries start at once (start-up is mostly imports, so this saves
    time) and are measured one after the other; the idle one does nothing.
    """
    import uvloop

    from bench.config import scripted_input
    from bench.registry_load import measure_registry

    input_json = scripted_input(cfg.events_per_run, cfg.payload_bytes)
    out: dict[str, Any] = {}
    urls = {"sqlite": f"sqlite+aiosqlite:///{work / 'registry-bench.db'}"}
    with contextlib.ExitStack() as stack:
        if not _reachable(cfg.postgres_url):
            out["postgresql"] = {"skipped": f"PostgreSQL not reachable at {cfg.postgres_url}"}
        else:
            try:
                urls["postgresql"] = stack.enter_context(
                    systems.postgres_database(cfg.postgres_url, cfg.postgres_database)
                )
            except Exception as exc:  # noqa: BLE001 - one failed measurement must not stop the others
                out["postgresql"] = {"error": _brief(exc)}
        # The launcher ties each service to the thread that started it (PR_SET_PDEATHSIG), so the
        # starting threads must outlive the measurement: the pool closes after the clusters stop.
        pool = stack.enter_context(ThreadPoolExecutor(len(urls)))
        starting = {
            label: pool.submit(systems.start_registry_only, work / f"registry-{label}", url)
            for label, url in urls.items()
        }
        started: dict[str, systems.Runwire] = {}
        for label, future in starting.items():
            try:
                started[label] = future.result()
            except Exception as exc:  # noqa: BLE001 - one failed measurement must not stop the others
                out[label] = {"error": _brief(exc)}
            else:
                stack.callback(started[label].cluster.stop)
        for label, reg in started.items():
            try:
                out[label] = uvloop.run(
                    measure_registry(
                        reg.address("registry"),
                        reg.attestation_keys,
                        reg.pids()["registry"],
                        callers=cfg.registry_callers,
                        duration_s=cfg.registry_duration_s,
                        input_json=input_json,
                    )
                )
            except Exception as exc:  # noqa: BLE001 - one failed measurement must not stop the others
                out[label] = {"error": _brief(exc)}
    return out


def run(cfg: BenchConfig, command: str) -> tuple[Path, dict[str, Any]]:
    """Run every measurement not skipped; write the results; return the folder and the data."""
    os.environ["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p
    )
    # Every idle connection is a socket in the gateway and one in a driver process; leave room.
    most_idle = max((*cfg.idle_counts, *cfg.prod_idle_counts))
    nofile = raise_nofile_limit(max(65536, most_idle + 16384))
    started = datetime.now(UTC)
    stamp = started.strftime("%Y%m%dT%H%M%SZ")
    out_folder = cfg.out / stamp
    out_folder.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {
        "meta": {
            "started_at": started.isoformat(timespec="seconds"),
            "command": command,
            "machine": _machine(),
            "loadavg_start": _loadavg(),
            "nofile_limit": nofile,
            "smoke": cfg.smoke,
            "users": list(cfg.users),
            "events_per_run": cfg.events_per_run,
            "payload_bytes": cfg.payload_bytes,
            "skipped": sorted(cfg.skip),
            "prod": {
                "redis_url": cfg.redis_url,
                "redis_key_prefix": cfg.redis_key_prefix,
                "postgres_database": cfg.postgres_database,
                "users": list(cfg.prod_users),
                "idle_counts": list(cfg.prod_idle_counts),
                **({"skipped": "--skip-prod"} if "prod" in cfg.skip else {}),
            },
        }
    }
    work = Path(tempfile.mkdtemp(prefix="runwire-bench-"))
    try:
        shared = not cfg.fresh_systems and not {"stability", "idle"} <= cfg.skip
        if not {"load", "paced"} <= cfg.skip or cfg.profile or shared:
            _section(results, "main system", lambda: _main_system(cfg, work, results, out_folder))
            results.pop("main system", None)
        if cfg.fresh_systems and "stability" not in cfg.skip:

            def stability() -> dict[str, Any]:
                with systems.runwire(work / "stability") as rw:
                    return scenarios.stability(cfg, rw.url, rw.jwt_secret, rw.pids())

            _section(results, "stability", stability)
        if cfg.fresh_systems and "idle" not in cfg.skip:

            def idle() -> dict[str, Any]:
                with systems.runwire(work / "idle") as rw:
                    return _idle_checked(
                        "idle", scenarios.idle(cfg, rw.url, rw.jwt_secret, rw.pids()), results
                    )

            _section(results, "idle", idle)
        if cfg.fresh_systems and _prod_wanted(cfg, results, "idle"):

            def prod_idle() -> dict[str, Any]:
                with _production(cfg, work / "prod-idle") as prod:
                    return _prod_idle_on(cfg, prod, results)

            _section(results, "prod_idle", prod_idle)
        if "abuse" not in cfg.skip:
            print("[bench] abuse: normal users with and without two abusers", file=sys.stderr, flush=True)
            _section(results, "abuse", lambda: abuse.abuse(cfg, work / "abuse"))
        if "registry" not in cfg.skip:
            _section(results, "registry", lambda: _registry(cfg, work))
    finally:
        results["meta"]["loadavg_end"] = _loadavg()
        results["meta"]["finished_at"] = datetime.now(UTC).isoformat(timespec="seconds")
        if cfg.keep_logs or results.get("errors"):
            results["meta"]["logs"] = str(work)
        else:
            shutil.rmtree(work, ignore_errors=True)
    folder = report.write(results, cfg.out, stamp)
    return folder, results
