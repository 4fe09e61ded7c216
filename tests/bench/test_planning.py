"""The benchmark's planning and reporting helpers, without starting anything."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest

from bench import report
from bench.__main__ import parse
from bench.redisstats import Peak, bridge_client_name, phases
from bench.scenarios import _sources, idle_drivers


def test_idle_connections_are_spread_over_source_addresses_without_exceeding_the_cap() -> None:
    used: Counter[str] = Counter()
    first = _sources(1_000, used, 20_000)
    assert set(first) == {"127.0.0.1"}
    more = _sources(9_000, used, 20_000)
    assert set(more) == {"127.0.0.1"} and used["127.0.0.1"] == 10_000
    last = _sources(40_000, used, 20_000)
    assert Counter(last) == {"127.0.0.1": 10_000, "127.0.0.2": 20_000, "127.0.0.3": 10_000}
    assert max(used.values()) <= 20_000 and sum(used.values()) == 50_000
    # Each driver process takes every n-th user, so each gets a share of every address.
    for index in range(idle_drivers(40_000)):
        assert set(last[index :: idle_drivers(40_000)]) == set(last)


def test_idle_driver_processes_hold_about_ten_thousand_connections_each() -> None:
    assert [idle_drivers(n) for n in (10, 1_999, 2_000, 9_000, 40_000, 50_000)] == [1, 1, 4, 4, 4, 5]


def test_the_options_of_the_production_configuration_and_of_50k_idle_parse() -> None:
    cfg = parse(["--idle", "1000,10000,50000", "--prod-users", "100", "--redis-url", "redis://h:1/9"])
    assert cfg.idle_counts == (1000, 10000, 50000) and cfg.prod_users == (100,)
    assert cfg.redis_url == "redis://h:1/9" and cfg.postgres_database == "runwire_bench"
    assert "prod" in parse(["--skip-prod"]).skip
    with pytest.raises(SystemExit):
        parse(["--postgres-database", "test"])


def test_redis_phases_and_the_bridge_client_name() -> None:
    assert bridge_client_name("runwire-bench", 42) == "runwire-bridge.runwire-bench.42"
    peak = Peak(reading={"connected_clients": 9, "bridge_clients": 8}, samples=3)
    block = phases({"connected_clients": 1, "bridge_clients": 0}, peak, {"connected_clients": 2})
    assert block["peak"]["bridge_clients"] == 8 and block["samples"] == 3 and block["errors"] == 0


def _latency(p99: float) -> dict[str, float]:
    return {"count": 1, "p50_ms": p99 / 2, "p99_ms": p99, "max_ms": p99}


def _side(events_per_s: float, p99: float) -> dict[str, Any]:
    return {
        "events_per_s": events_per_s,
        "delivery_latency": _latency(p99),
        "accepted_latency": _latency(p99),
    }


def test_production_figures_get_ratios_to_the_in_memory_configuration() -> None:
    step = {"wanted": 10, "gateway_kb_per_connection": 10.0, "bridge_kb_per_connection": 10.0}
    results: dict[str, Any] = {
        "load": [{"users": 100, "runwire": _side(1000, 10), "baseline": _side(2000, 5)}],
        "prod_load": [{"users": 100, "runwire": _side(500, 40), "baseline": _side(2000, 5)}],
        "idle": {"steps": [{**step, "total_kb_per_connection": 20.0}]},
        "prod_idle": {"steps": [{**step, "total_kb_per_connection": 30.0}]},
    }
    report.annotate(results)
    assert results["prod_load"][0]["vs_memory"] == {
        "events_per_s": 0.5,
        "delivery_latency.p99_ms": 4.0,
        "accepted_latency.p99_ms": 4.0,
    }
    assert results["prod_idle"]["steps"][0]["vs_memory"]["total_kb_per_connection"] == 1.5


def test_idle_counts_beyond_the_descriptor_limit_are_reported_as_not_measured() -> None:
    idle = {"steps": [], "held": 0, "not_measured": {"50000": "needs RLIMIT_NOFILE >= 51024"}}
    lines = report._idle_table(idle, redis=False)
    assert lines == ["**Not measured: 50,000 connections** — needs RLIMIT_NOFILE >= 51024."]
