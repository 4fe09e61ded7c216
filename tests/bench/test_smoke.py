"""The benchmark runs end to end at a tiny size (``python -m bench --smoke``).

This checks the measuring machinery, not performance: every measurement is
present with sane, positive figures, and the Markdown table and the chart are
written.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


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


def test_bench_smoke_runs_every_measurement(tmp_path: Path) -> None:
    out = tmp_path / "results"
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--smoke", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=110,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads((out / "latest.json").read_text())
    assert not results.get("errors")

    assert [row["users"] for row in results["load"]] == results["meta"]["users"]
    for row in results["load"]:
        _check_load(row, "runwire")
        _check_load(row, "baseline")
        assert row["ratio"]["events_per_s"] > 0
        assert set(row["runwire"]["service_cpu_s"]) == {"registry", "bridge", "execution", "gateway"}
    _check_load(results["paced"], "runwire")
    _check_load(results["paced"], "baseline")

    stability = results["stability"]
    assert 0 < stability["runs_ok"] <= stability["runs"]
    assert set(stability["delta_kb"]) == {"registry", "bridge", "execution", "gateway"}
    assert all(v > 0 for v in stability["after_rss_kb"].values())

    idle = results["idle"]
    assert idle["held"] == idle["alive_after_hold"] == max(s["wanted"] for s in idle["steps"])
    assert all(s["connect_failed"] == 0 and s["rss_kb"]["gateway"] > 0 for s in idle["steps"])

    sqlite = results["registry"]["sqlite"]
    assert sqlite["runs"] > 0 and sqlite["runs_per_s"] > 0 and not sqlite["errors"]
    postgres = results["registry"]["postgresql"]
    assert "skipped" in postgres or (postgres["runs_per_s"] > 0 and not postgres["errors"])

    assert len(results["targets"]) == 6
    folders = [p for p in out.iterdir() if p.is_dir()]
    assert len(folders) == 1
    for name in ("results.json", "results.md", "chart.png"):
        assert (folders[0] / name).stat().st_size > 0
    assert (out / "latest.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = (out / "latest.md").read_text()
    assert "## Targets" in table and "| users |" in table and "latest.png" in table
