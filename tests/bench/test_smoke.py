"""The benchmark runs end to end at a tiny size (``python -m bench --smoke``).

This checks the measuring machinery, not performance: every measurement is
present with sane, positive figures, and the Markdown table and the chart are
written. One smoke run (module fixture) serves both tests: the in-memory
configuration and the registry, and the Redis + PostgreSQL configuration, which
is checked only where both servers are reachable (the ``redis_url`` and
``postgres_url`` fixtures skip otherwise, or fail under
``RUNWIRE_REQUIRE_SERVICES=1``).

The smoke run gets a PostgreSQL database and a Redis key prefix of its own
(random names), so it never touches the tests' ``test`` database or a
benchmark running at the same time.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import pytest
import redis

ROOT = Path(__file__).resolve().parents[2]
SERVICES = {"registry", "bridge", "execution", "gateway"}
# As tests/conftest.py: where the suite finds its servers.
POSTGRES_URL = os.environ.get(
    "RUNWIRE_TEST_POSTGRES_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
)
REDIS_URL = os.environ.get("RUNWIRE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
BENCH_REDIS_DB = 14  # the benchmark's own Redis database number (the tests use 0)


def _with_path(url: str, path: str) -> str:
    return url.rsplit("/", 1)[0] + "/" + path


class Smoke:
    """One ``python -m bench --smoke`` run: where it wrote, what it used, how long it took."""

    def __init__(self, out: Path) -> None:
        suffix = secrets.token_hex(4)
        self.out = out
        self.database = f"runwire_bench_smoke_{suffix}"
        self.key_prefix = f"runwire-bench-smoke-{suffix}"
        self.admin_url = _with_path(POSTGRES_URL, "postgres")
        self.redis_url = _with_path(REDIS_URL, str(BENCH_REDIS_DB))
        started = time.monotonic()
        self.proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "bench",
                "--smoke",
                "--out",
                str(out),
                "--postgres-url",
                self.admin_url,
                "--postgres-database",
                self.database,
                "--redis-url",
                self.redis_url,
                "--redis-key-prefix",
                self.key_prefix,
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=110,
        )
        self.duration_s = time.monotonic() - started

    def results(self) -> dict[str, Any]:
        assert self.proc.returncode == 0, self.proc.stdout[-3000:] + self.proc.stderr[-3000:]
        results: dict[str, Any] = json.loads((self.out / "latest.json").read_text())
        return results


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> Smoke:
    return Smoke(tmp_path_factory.mktemp("bench") / "results")


def _positive_latency(block: dict[str, Any]) -> None:
    assert block["count"] > 0
    assert 0 < block["p50_ms"] <= block["p99_ms"] <= block["max_ms"] < 60_000


def _check_load(row: dict[str, Any], side: str) -> None:
    figures = row[side]
    # The machinery, not the system's health: every run is accounted for, most succeed.
    assert figures["runs_ok"] + figures["runs_failed"] == figures["users"] * figures["runs_per_user"]
    assert figures["runs_ok"] > figures["runs_failed"], figures
    for counter in ("missing_events", "duplicate_events", "stray_events"):
        assert isinstance(figures[counter], int) and figures[counter] >= 0
    assert figures["events"] > 0 and figures["events_per_s"] > 0
    _positive_latency(figures["accepted_latency"])
    _positive_latency(figures["delivery_latency"])
    assert all(v >= 0 for v in figures["service_cpu_s"].values())
    assert all(v > 0 for v in figures["service_peak_rss_kb"].values())


def _check_idle(idle: dict[str, Any]) -> None:
    assert idle["held"] == max(s["wanted"] for s in idle["steps"])
    assert 0 < idle["pinged"] <= idle["held"] and idle["alive_after_hold"] == idle["pinged"]
    assert sum(idle["source_addresses"].values()) == idle["held"]
    # A user arriving while every idle connection is held gets a whole run.
    assert idle["late_run"]["completed"], idle["late_run"]
    assert idle["late_run"]["events"] > 2
    for step in idle["steps"]:
        assert step["connect_failed"] == 0 and step["rss_kb"]["gateway"] > 0
        assert step["total_kb_per_connection"] == pytest.approx(
            step["gateway_kb_per_connection"] + step["bridge_kb_per_connection"], abs=0.02
        )


def _check_redis_phases(block: dict[str, Any]) -> None:
    """Readings before / at the peak / after; the probe itself is a client, the bridge's are named."""
    assert block["errors"] == 0 and block["samples"] > 0
    before, peak, after = block["before"], block["peak"], block["after"]
    for reading in (before, peak, after):
        assert reading["connected_clients"] >= 1 + reading["bridge_clients"]
    assert peak["bridge_clients"] >= max(1, before["bridge_clients"], after["bridge_clients"])


def test_bench_smoke_runs_every_measurement(smoke: Smoke) -> None:
    results = smoke.results()
    assert not results.get("errors")
    print(f"python -m bench --smoke took {smoke.duration_s:.1f}s")
    assert smoke.duration_s < 60

    assert [row["users"] for row in results["load"]] == results["meta"]["users"]
    for row in results["load"]:
        _check_load(row, "runwire")
        _check_load(row, "baseline")
        assert row["ratio"]["events_per_s"] > 0
        assert set(row["runwire"]["service_cpu_s"]) == SERVICES
    _check_load(results["paced"], "runwire")
    _check_load(results["paced"], "baseline")

    # The normal users' p99s without and with a flooder and a non-reader, side by side.
    abuse = results["abuse"]
    for side in ("without_abusers", "with_abusers"):
        assert abuse[side]["runs_ok"] > 0 and abuse[side]["pings"] > 0
        assert abuse[side]["delivery_latency"]["p99_ms"] > 0 and abuse[side]["ping_latency"]["p99_ms"] > 0
    assert abuse["with_abusers"]["abusers"]["flood_frames_sent"] > 0

    stability = results["stability"]
    assert 0 < stability["runs_ok"] <= stability["runs"]
    assert set(stability["delta_kb"]) == SERVICES
    assert all(v > 0 for v in stability["after_rss_kb"].values())

    idle = results["idle"]
    _check_idle(idle)
    # The smoke sizes exercise the sampled ping check and a second source address.
    assert idle["pinged"] < idle["held"] and len(idle["source_addresses"]) == 2

    sqlite = results["registry"]["sqlite"]
    assert sqlite["runs"] > 0 and sqlite["runs_per_s"] > 0 and not sqlite["errors"]
    postgres = results["registry"]["postgresql"]
    assert "skipped" in postgres or (postgres["runs_per_s"] > 0 and not postgres["errors"])

    # The event-fabric issue's targets, each met, missed or not measured at these sizes.
    names = [t["target"] for t in results["targets"]]
    assert len(names) == 8 and any("CPU per event" in n for n in names) and any("Redis" in n for n in names)
    folders = [p for p in smoke.out.iterdir() if p.is_dir()]
    assert len(folders) == 1
    for name in ("results.json", "results.md", "chart.png"):
        assert (folders[0] / name).stat().st_size > 0
    assert (smoke.out / "latest.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = (smoke.out / "latest.md").read_text()
    assert "## Targets" in table and "| users |" in table and "latest.png" in table
    assert "## Abuse:" in table and "| ping p99 ms |" in table
    prod = results["meta"]["prod"]
    assert prod["skipped"] or "## Production configuration: Redis + PostgreSQL" in table


async def _database_exists(admin_url: str, name: str) -> bool:
    conn = await asyncpg.connect(admin_url.replace("+asyncpg", ""), timeout=5)
    try:
        return bool(await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name))
    finally:
        await conn.close()


def test_bench_smoke_measures_the_redis_postgres_configuration(
    redis_url: str, postgres_url: str, smoke: Smoke
) -> None:
    results = smoke.results()
    assert not results.get("errors")
    prod = results["meta"]["prod"]
    assert prod["skipped"] is None and prod["postgres_database"] == smoke.database

    rows = results["prod_load"]
    assert [row["users"] for row in rows] == prod["users"]
    for row in rows:
        _check_load(row, "runwire")
        _check_load(row, "baseline")
        assert row["ratio"]["events_per_s"] > 0 and row["vs_memory"]["events_per_s"] > 0
        assert set(row["runwire"]["service_cpu_s"]) == SERVICES
        assert row["runwire"]["redis_cpu_s"] >= 0
        _check_redis_phases(row["runwire"]["redis"])

    idle = results["prod_idle"]
    _check_idle(idle)
    _check_redis_phases(idle["redis"])
    for step in idle["steps"]:
        # Every held connection has a subscription, so the bridge has at least one Redis client.
        assert step["redis"]["bridge_clients"] >= 1
        assert step["vs_memory"]["total_kb_per_connection"] is not None

    table = (smoke.out / "latest.md").read_text()
    assert "bridge's Redis clients" in table and "sum KB/conn" in table

    # The run cleaned up after itself: its database is gone, its keys too.
    assert not asyncio.run(_database_exists(smoke.admin_url, smoke.database))
    client = redis.Redis.from_url(smoke.redis_url)
    try:
        assert not list(client.scan_iter(match=f"{smoke.key_prefix}:*", count=1000))
    finally:
        client.close()
