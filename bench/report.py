"""Results: targets, the Markdown table, the PNG chart, and the files on disk.

Layout: ``<out>/<UTC timestamp>/results.json``, ``results.md``, ``chart.png``
(plus ``profile-<service>.txt`` with ``--profile``), and copies
``<out>/latest.json``, ``latest.md``, ``latest.png`` of the newest run.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from bench.stats import ratio

KB_PER_MB = 1024
PROD = "Redis + PostgreSQL"


def _load_at(results: Mapping[str, Any], users: int) -> Mapping[str, Any] | None:
    return next((row for row in results.get("load", []) if row.get("users") == users), None)


def _target(name: str, met: bool | None, measured: str) -> dict[str, Any]:
    return {"target": name, "met": met, "measured": measured}


def targets(results: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Each target of the event-fabric issue: met (True), missed (False) or not measured (None)."""
    out: list[dict[str, Any]] = []
    for users in (100, 1000):
        row = _load_at(results, users)
        name = f"events/s >= 0.8x baseline at {users} users"
        if row is None or row["ratio"]["events_per_s"] is None:
            out.append(_target(name, None, "not measured"))
        else:
            r = row["ratio"]["events_per_s"]
            out.append(_target(name, r >= 0.8, f"{r:.2f}x ({row['runwire']['events_per_s']:.0f} events/s)"))
    out.append(_cpu_target(results))
    out.append(_one_user_target(results))
    paced = results.get("paced") or {}
    name = "paced delivery p99 <= 10 ms (100 users x 10 events/s, in the full suite)"
    if "runwire" in paced:
        p99 = paced["runwire"]["delivery_latency"]["p99_ms"]
        sized = paced["users"] == 100 and paced["events_per_s_per_user"] == 10
        out.append(_target(name, p99 <= 10 if sized else None, f"{p99:.1f} ms at {paced['users']} users"))
    else:
        out.append(_target(name, None, "not measured"))
    out += _idle_targets(results.get("idle") or {})
    out.append(_redis_target(results.get("prod_idle") or {}))
    return out


def _cpu_target(results: Mapping[str, Any]) -> dict[str, Any]:
    name = "service CPU per event <= 1.5x the baseline's (100 and 1,000 users)"
    rows = [row for row in (_load_at(results, u) for u in (100, 1000)) if row is not None]
    if not rows:
        return _target(name, None, "not measured")
    ratios = [
        row["runwire"]["service_cpu_ms_per_event"] / row["baseline"]["service_cpu_ms_per_event"]
        for row in rows
    ]
    detail = ", ".join(
        f"{row['runwire']['service_cpu_ms_per_event']:.3f} vs {row['baseline']['service_cpu_ms_per_event']:.3f} ms "
        f"({r:.1f}x) at {row['users']:,}"
        for row, r in zip(rows, ratios, strict=True)
    )
    return _target(name, max(ratios) <= 1.5, detail)


def _one_user_target(results: Mapping[str, Any]) -> dict[str, Any]:
    name = "one user's delivery p50 <= 2x the baseline's"
    row = _load_at(results, 1)
    if row is None:
        return _target(name, None, "not measured")
    mine, base = row["runwire"]["delivery_latency"]["p50_ms"], row["baseline"]["delivery_latency"]["p50_ms"]
    return _target(name, mine <= 2 * base, f"{mine:.2f} vs {base:.2f} ms ({mine / base:.1f}x)")


def _idle_targets(idle: Mapping[str, Any]) -> list[dict[str, Any]]:
    name = "gateway + bridge RSS per idle connection <= 20 KB at 10,000 connections"
    held_name = "50,000 idle connections held by one gateway, each answering ping"
    steps = idle.get("steps") or []
    if not steps:
        return [_target(name, None, "not measured"), _target(held_name, None, "not measured")]
    at_10k = [s for s in steps if s["connections"] >= 10000]
    detail = ", ".join(f"{s['total_kb_per_connection']:.1f} KB at {s['connections']:,}" for s in steps)
    out = [_target(name, all(s["total_kb_per_connection"] <= 20 for s in at_10k) if at_10k else None, detail)]
    held, alive = idle["held"], idle["alive_after_hold"]
    pinged = idle.get("pinged", held)
    sample = "" if pinged == held else f" (a sample of {pinged:,})"
    detail = f"{held:,} held; {alive:,} of {pinged:,} answered ping{sample}"
    not_measured = (idle.get("not_measured") or {}).get("50000")
    if held >= 50000:
        out.append(_target(held_name, alive == pinged > 0, detail))
    else:
        out.append(
            _target(
                held_name, None, detail + (f"; 50,000 not measured: {not_measured}" if not_measured else "")
            )
        )
    return out


def _redis_target(idle: Mapping[str, Any]) -> dict[str, Any]:
    name = "Redis: 10,000 idle connections through one bridge on <= 10 bridge Redis connections, and a late run completes"
    steps = [s for s in idle.get("steps") or [] if s["connections"] >= 10000]
    if not steps:
        return _target(name, None, "not measured")
    peak = (idle.get("redis") or {}).get("peak", {}).get("bridge_clients")
    clients = max([s.get("redis", {}).get("bridge_clients") or 0 for s in steps] + [peak or 0])
    late = idle.get("late_run") or {}
    detail = f"{clients} bridge Redis connections at {steps[-1]['connections']:,}; late run " + (
        f"completed ({late.get('events')} events in {late.get('seconds')} s)"
        if late.get("completed")
        else "did not complete"
    )
    return _target(name, clients <= 10 and bool(late.get("completed")), detail)


def _fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def _lat(block: Mapping[str, Any]) -> str:
    return f"{block['p50_ms']:.1f} / {block['p99_ms']:.1f} / {block['max_ms']:.0f}"


def _load_table(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    out = [
        "| users | runs | Runwire events/s | baseline events/s | ratio | accepted p50 / p99 / max ms (Runwire) "
        "| (baseline) | delivery p50 / p99 / max ms (Runwire) | (baseline) | delivery p99 ratio | failed runs R / B | missing / dup / stray / coalesced events R "
        "| driver CPU util (busiest) R / B |",
        "|---:|---:|---:|---:|---:|---|---|---|---|---:|---|---|---|",
    ]
    for row in rows:
        rw, base, ratio = row["runwire"], row["baseline"], row["ratio"]
        out.append(
            f"| {row['users']} | {rw['runs_ok']} | {rw['events_per_s']:,.0f} | {base['events_per_s']:,.0f} "
            f"| {_fmt(ratio['events_per_s'], 2)}x | {_lat(rw['accepted_latency'])} | {_lat(base['accepted_latency'])} "
            f"| {_lat(rw['delivery_latency'])} | {_lat(base['delivery_latency'])} "
            f"| {_fmt(ratio['delivery_latency.p99_ms'], 2)}x | {rw['runs_failed']} / {base['runs_failed']} "
            f"| {rw['missing_events']} / {rw['duplicate_events']} / {rw['stray_events']} / {rw.get('coalesced_events', 0)} "
            f"| {rw['driver_busiest_core_util']:.2f} / {base['driver_busiest_core_util']:.2f} |"
        )
    errors = [
        f"{row['users']} users: Runwire {row['runwire']['run_errors'] or '-'}, baseline {row['baseline']['run_errors'] or '-'}"
        for row in rows
        if row["runwire"]["run_errors"] or row["baseline"]["run_errors"]
    ]
    if errors:
        out += ["", "Failed runs by error code: " + "; ".join(errors)]
    return out


def _resource_table(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    names = sorted({n for row in rows for n in row["runwire"]["service_cpu_s"]})
    base_names = sorted({n for row in rows for n in row["baseline"]["service_cpu_s"]})
    head = " | ".join(f"{n} CPU s / peak MB" for n in names + base_names)
    out = [
        f"| users | {head} | CPU ms per event R / B |",
        "|---:|" + "---|" * (len(names) + len(base_names) + 1),
    ]
    for row in rows:
        cells = []
        for side, group in (("runwire", names), ("baseline", base_names)):
            for n in group:
                cpu = row[side]["service_cpu_s"].get(n, 0.0)
                peak = row[side]["service_peak_rss_kb"].get(n, 0) / KB_PER_MB
                cells.append(f"{cpu:.2f} / {peak:.0f}")
        per_event = f"{row['runwire']['service_cpu_ms_per_event']:.3f} / {row['baseline']['service_cpu_ms_per_event']:.3f}"
        out.append(f"| {row['users']} | " + " | ".join(cells) + f" | {per_event} |")
    return out


def annotate(results: dict[str, Any]) -> None:
    """Ratios of the production configuration to the in-memory one at the same size (``vs_memory``)."""
    memory_load = {row["users"]: row for row in results.get("load", []) if "runwire" in row}
    for row in _prod_rows(results):
        mem = memory_load.get(row["users"])
        if mem is None:
            continue
        prod_rw, mem_rw = row["runwire"], mem["runwire"]
        row["vs_memory"] = {
            "events_per_s": ratio(prod_rw["events_per_s"], mem_rw["events_per_s"]),
            "delivery_latency.p99_ms": ratio(
                prod_rw["delivery_latency"]["p99_ms"], mem_rw["delivery_latency"]["p99_ms"]
            ),
            "accepted_latency.p99_ms": ratio(
                prod_rw["accepted_latency"]["p99_ms"], mem_rw["accepted_latency"]["p99_ms"]
            ),
        }
    memory_idle = {s["wanted"]: s for s in (results.get("idle") or {}).get("steps", [])}
    for step in (results.get("prod_idle") or {}).get("steps", []):
        mem = memory_idle.get(step["wanted"])
        if mem is not None:
            step["vs_memory"] = {
                key: ratio(step[key], mem[key])
                for key in (
                    "gateway_kb_per_connection",
                    "bridge_kb_per_connection",
                    "total_kb_per_connection",
                )
                if key in mem
            }


def _prod_rows(results: Mapping[str, Any]) -> list[dict[str, Any]]:
    rows = results.get("prod_load")
    return [r for r in rows if "runwire" in r] if isinstance(rows, list) else []


def _three(block: Mapping[str, Any], key: str) -> str:
    """``before / peak / after`` of one Redis reading key."""
    return " / ".join(_fmt(block.get(phase, {}).get(key)) for phase in ("before", "peak", "after"))


def _kb_per_conn(step: Mapping[str, Any]) -> str:
    gateway, bridge = step["gateway_kb_per_connection"], step["bridge_kb_per_connection"]
    total = step.get("total_kb_per_connection", round(gateway + bridge, 2))
    return f"{gateway:.1f} | {bridge:.1f} | {total:.1f}"


def _not_measured(idle: Mapping[str, Any]) -> list[str]:
    return [
        f"**Not measured: {int(count):,} connections** — {reason}."
        for count, reason in (idle.get("not_measured") or {}).items()
    ]


def _idle_table(idle: Mapping[str, Any], *, redis: bool) -> list[str]:
    if not idle.get("steps"):
        return _not_measured(idle)
    head = "| connections | connect time s | gateway RSS MB | bridge RSS MB | gateway KB/conn | bridge KB/conn | sum KB/conn |"
    rule = "|---:|---:|---:|---:|---:|---:|---:|"
    if redis:
        head += " sum vs in-memory | Redis connected_clients | bridge's Redis clients |"
        rule += "---:|---:|---:|"
    out = [head + " failed |", rule + "---:|"]
    for s in idle["steps"]:
        line = (
            f"| {s['connections']:,} | {s['connect_s']} | {s['rss_kb']['gateway'] / KB_PER_MB:.1f} "
            f"| {s['rss_kb']['bridge'] / KB_PER_MB:.1f} | {_kb_per_conn(s)} |"
        )
        if redis:
            vs = (s.get("vs_memory") or {}).get("total_kb_per_connection")
            reading = s.get("redis", {})
            line += (
                f" {_fmt(vs, 2)}{'x' if vs is not None else ''} | {_fmt(reading.get('connected_clients'))} "
                f"| {_fmt(reading.get('bridge_clients'))} |"
            )
        out.append(line + f" {s['connect_failed']} |")
    pinged = idle.get("pinged", idle["held"])
    sample = (
        ""
        if pinged == idle["held"]
        else f" (a sample: every {idle.get('ping_every', 1)}th connection of each driver process)"
    )
    sources = idle.get("source_addresses") or {}
    out.append(
        f"\nRSS before: gateway {idle['rss_before_kb']['gateway'] / KB_PER_MB:.1f} MB, "
        f"bridge {idle['rss_before_kb']['bridge'] / KB_PER_MB:.1f} MB; peak: gateway "
        f"{idle.get('gateway_peak_rss_kb', 0) / KB_PER_MB:.1f} MB, bridge {idle.get('bridge_peak_rss_kb', 0) / KB_PER_MB:.1f} MB. "
        f"{idle['alive_after_hold']:,} of {pinged:,} pinged connections answered a ping after the hold{sample}."
        + (
            " Source addresses: " + ", ".join(f"{a} ({n:,})" for a, n in sources.items()) + "."
            if len(sources) > 1
            else ""
        )
    )
    late = idle.get("late_run") or {}
    if late:
        out.append(
            "A user arriving after them started a run: "
            + (
                f"completed with all {late['events']} events in {late['seconds']} s."
                if late.get("completed")
                else f"did NOT complete ({late.get('events', 0)} events; {late.get('error', 'seq broken')})."
            )
        )
    if idle.get("connect_errors"):
        out.append(f"Connect errors (first): {'; '.join(idle['connect_errors'])}")
    return out + [f"\n{line}" for line in _not_measured(idle)]


def _prod_sections(results: Mapping[str, Any]) -> list[str]:
    prod_meta = results["meta"].get("prod") or {}
    rows = _prod_rows(results)
    idle = results.get("prod_idle") or {}
    if not rows and not idle.get("steps") and not idle.get("not_measured") and not prod_meta.get("skipped"):
        return []
    if prod_meta.get("skipped"):
        return ["", f"## Production configuration: {PROD}", "", f"**Skipped: {prod_meta['skipped']}.**"]
    lines = [
        "",
        f"## Production configuration: {PROD}",
        "",
        f"`runwire up --redis-url {prod_meta.get('redis_url')} --database-url postgresql+asyncpg://…/"
        f"{prod_meta.get('postgres_database')}`: the bridge on Redis (key prefix "
        f"`{prod_meta.get('redis_key_prefix')}`), the registry on a PostgreSQL database created for each "
        "system and dropped after it. Redis `connected_clients` (INFO clients) counts every client of the "
        "server, this benchmark's probe included; *bridge's Redis clients* are the CLIENT LIST entries named "
        "`runwire-bridge.<prefix>.<bridge pid>`. Readings: before the clients connect / at the peak / after "
        "they closed.",
    ]
    if rows:
        lines += ["", f"### Load ({PROD}): events delivered to clients", "", *_load_table(rows)]
        lines += [
            "",
            f"### Load ({PROD}): against the in-memory configuration, and Redis",
            "",
            "| users | events/s | vs in-memory | delivery p99 ms | vs in-memory | accepted p99 ms | vs in-memory "
            "| Redis connected_clients before / peak / after | bridge's Redis clients before / peak / after "
            "| Redis CPU s | Redis used memory MB at the peak |",
            "|---:|---:|---:|---:|---:|---:|---:|---|---|---:|---:|",
        ]
        for row in rows:
            rw, vs, redis = row["runwire"], row.get("vs_memory") or {}, row["runwire"].get("redis") or {}
            peak_mem = (redis.get("peak") or {}).get("used_memory_kb")
            lines.append(
                f"| {row['users']} | {rw['events_per_s']:,.0f} | {_fmt(vs.get('events_per_s'), 2)}x "
                f"| {rw['delivery_latency']['p99_ms']:.1f} | {_fmt(vs.get('delivery_latency.p99_ms'), 2)}x "
                f"| {rw['accepted_latency']['p99_ms']:.1f} | {_fmt(vs.get('accepted_latency.p99_ms'), 2)}x "
                f"| {_three(redis, 'connected_clients')} | {_three(redis, 'bridge_clients')} "
                f"| {_fmt(rw.get('redis_cpu_s'), 2)} | {_fmt(peak_mem / KB_PER_MB if peak_mem else None)} |"
            )
        lines += [
            "",
            f"### CPU and peak RSS per process during each load ({PROD})",
            "",
            *_resource_table(rows),
        ]
    if idle.get("steps") or idle.get("not_measured"):
        redis = idle.get("redis") or {}
        lines += [
            "",
            f"## Idle authenticated connections ({PROD}, one gateway, one bridge)",
            "",
            *_idle_table(idle, redis=True),
            "",
            f"Redis connected_clients before / peak / after: {_three(redis, 'connected_clients')}; "
            f"the bridge's Redis clients: {_three(redis, 'bridge_clients')}.",
        ]
    return lines


def markdown(results: Mapping[str, Any], chart_name: str) -> str:
    meta = results["meta"]
    lines = [
        f"# Runwire benchmark — {meta['started_at']}",
        "",
        f"Command: `{meta['command']}`  ",
        f"Machine: {meta['machine']}  ",
        f"Load average at start: {meta['loadavg_start']}; at end: {meta.get('loadavg_end', '?')}",
        "",
        f"Script per run: `scripted` agent, {meta['events_per_run']} events per run "
        f"({meta['events_per_run'] - 2} partial results of {meta['payload_bytes']} characters), "
        "one run in flight per user, each user a separate WebSocket connection. Ratios are Runwire / baseline "
        "measured in the same run (baseline measured right before Runwire at each user count).",
        "",
        f"![throughput and p99 latency]({chart_name})",
        "",
    ]
    lines += [f"Note: {note}  " for note in meta.get("notes", [])]
    if meta.get("notes"):
        lines.append("")
    if meta.get("smoke"):
        lines += ["**Smoke run: tiny sizes, the figures are not meaningful.**", ""]
    lines += ["## Targets", "", "| target | status | measured |", "|---|---|---|"]
    for t in results.get("targets", []):
        status = {True: "met", False: "**missed**", None: "not measured"}[t["met"]]
        lines.append(f"| {t['target']} | {status} | {t['measured']} |")
    rows = [r for r in results.get("load", []) if "runwire" in r]
    if rows:
        lines += ["", "## Load: events delivered to clients", "", *_load_table(rows)]
        lines += ["", "### CPU and peak RSS per process during each load", "", *_resource_table(rows)]
    paced = results.get("paced") or {}
    if "runwire" in paced:
        lines += [
            "",
            f"## Paced: {paced['users']} users each receiving {paced['events_per_s_per_user']:g} events/s",
            "",
            f"Users' first runs start spread evenly over {paced.get('start_spread_s', 0):g} s (one run), "
            "so the load is steady rather than every run starting in one burst.",
            "",
            *_load_table([paced]),
        ]
    lines += _abuse_lines(results.get("abuse") or {})
    stab = results.get("stability") or {}
    if "delta_kb" in stab:
        lines += ["", f"## RSS stability: {stab['runs']} runs by {stab['users']} users", ""]
        lines += ["| service | warm RSS MB | after MB | delta MB | peak MB |", "|---|---:|---:|---:|---:|"]
        for name, delta in stab["delta_kb"].items():
            lines.append(
                f"| {name} | {stab['warm_rss_kb'][name] / KB_PER_MB:.1f} | {stab['after_rss_kb'][name] / KB_PER_MB:.1f} "
                f"| {delta / KB_PER_MB:+.1f} | {stab['peak_rss_kb'][name] / KB_PER_MB:.1f} |"
            )
    idle = results.get("idle") or {}
    if idle.get("steps") or idle.get("not_measured"):
        lines += ["", "## Idle authenticated connections (one gateway, in-memory bridge)", ""]
        lines += _idle_table(idle, redis=False)
    lines += _prod_sections(results)
    reg = results.get("registry") or {}
    if reg:
        lines += ["", "## Registry: CreateRun + 4 transitions per run, through gRPC", ""]
        lines += [
            "| database | callers | runs/s | RPCs/s | CreateRun p50 / p99 ms | TransitionRun p50 / p99 ms | registry CPU s | errors |",
            "|---|---:|---:|---:|---|---|---:|---|",
        ]
        for db, r in reg.items():
            if "runs_per_s" not in r:
                lines.append(f"| {db} | - | - | - | - | - | - | {r.get('error', r.get('skipped', ''))} |")
                continue
            c, t = r["create_latency"], r["transition_latency"]
            lines.append(
                f"| {db} | {r['callers']} | {r['runs_per_s']:,.0f} | {r['rpcs_per_s']:,.0f} "
                f"| {c['p50_ms']:.1f} / {c['p99_ms']:.1f} | {t['p50_ms']:.1f} / {t['p99_ms']:.1f} "
                f"| {r['registry_cpu_s']:.2f} | {r['errors'] or ''} |"
            )
    prof = results.get("profile") or {}
    if prof.get("services"):
        lines += [
            "",
            f"## Profiles (py-spy, {prof['users']} users; files `profile-<service>.txt`)",
            "",
            "Percentages are of busy samples. Without `--profile-native`, self time of `Runner.run` is "
            "time in uvloop's C event loop (socket I/O, C callbacks) and of `Thread.run` time in "
            "grpc's C polling thread or aiosqlite's worker thread (where SQLite itself runs).",
            "",
        ]
        for name, data in prof["services"].items():
            if "error" in data:
                lines.append(f"- **{name}** — profiler failed: {data['error'].strip()[:200]}")
                continue
            top = ", ".join(f"{label} {pct}%" for label, pct in data.get("self_top", [])[:5])
            libs = ", ".join(f"{label} {pct}%" for label, pct in data.get("packages_top", [])[:5])
            lines += [f"- **{name}** — self: {top}", f"  - by library: {libs}"]
    errors = results.get("errors") or {}
    if errors:
        lines += ["", "## Errors", ""] + [f"- {k}: {v}" for k, v in errors.items()]
    return "\n".join(lines) + "\n"


def _idle_chart(results: Mapping[str, Any], ax: Any) -> None:
    """Gateway + bridge KB per idle connection against the connection count, both configurations."""
    drawn = False
    for key, label, color in (("idle", "in-memory", "tab:blue"), ("prod_idle", PROD, "tab:green")):
        steps = (results.get(key) or {}).get("steps") or []
        if not steps:
            continue
        xs = [s["connections"] for s in steps]
        total = [s.get("total_kb_per_connection", 0.0) for s in steps]
        gateway = [s["gateway_kb_per_connection"] for s in steps]
        ax.plot(xs, total, marker="o", color=color, label=f"{label}: gateway + bridge")
        ax.plot(xs, gateway, marker="o", color=color, linestyle="--", alpha=0.6, label=f"{label}: gateway")
        drawn = True
    if not drawn:
        ax.text(0.5, 0.5, "idle not measured in this run", ha="center", va="center")
        ax.set_axis_off()
        return
    ax.set_xscale("log")
    ax.set_xlabel("idle connections held")
    ax.set_ylabel("KB RSS per connection")
    ax.set_title("Memory per idle connection")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)


def chart(results: Mapping[str, Any], path: Path) -> None:
    """Throughput and p99 latencies against user count (Runwire, baseline, Redis + PostgreSQL),
    and memory per idle connection."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in results.get("load", []) if "runwire" in r]
    users = [r["users"] for r in rows]
    fig, (left, right, idle_ax) = plt.subplots(1, 3, figsize=(16, 4.2))
    _idle_chart(results, idle_ax)
    if not rows:
        for ax in (left, right):
            ax.text(0.5, 0.5, "load not measured in this run", ha="center", va="center")
            ax.set_axis_off()
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        return
    prod = _prod_rows(results)
    series = [
        (rows, "runwire", "runwire", "tab:blue", "o"),
        (rows, "baseline", "baseline", "tab:orange", "s"),
    ]
    if prod:
        series.append((prod, "runwire", f"runwire ({PROD})", "tab:green", "^"))
    for group, side, label, color, marker in series:
        xs = [r["users"] for r in group]
        left.plot(xs, [r[side]["events_per_s"] for r in group], marker=marker, color=color, label=label)
        right.plot(
            xs,
            [r[side]["delivery_latency"]["p99_ms"] for r in group],
            marker=marker,
            color=color,
            label=f"{label}: event delivery p99",
        )
        right.plot(
            xs,
            [r[side]["accepted_latency"]["p99_ms"] for r in group],
            marker=marker,
            color=color,
            linestyle="--",
            alpha=0.6,
            label=f"{label}: run.accepted p99",
        )
    for ax, title, ylabel in (
        (left, "End-to-end events/s delivered to clients", "events/s"),
        (right, "p99 latency", "ms (log)"),
    ):
        ax.set_xscale("log")
        ax.set_xticks(users, [str(u) for u in users])
        ax.minorticks_off()
        ax.set_xlabel("concurrent users")
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    right.set_yscale("log")
    fig.suptitle(f"Runwire vs baseline — {results['meta']['started_at']}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write(results: dict[str, Any], out_root: Path, stamp: str) -> Path:
    """Write the run's folder and refresh the ``latest.*`` copies; return the folder."""
    folder = out_root / stamp
    folder.mkdir(parents=True, exist_ok=True)
    annotate(results)
    results["targets"] = targets(results)
    (folder / "results.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    (folder / "results.md").write_text(markdown(results, "chart.png"))
    chart(results, folder / "chart.png")
    shutil.copyfile(folder / "results.json", out_root / "latest.json")
    shutil.copyfile(folder / "chart.png", out_root / "latest.png")
    (out_root / "latest.md").write_text(
        markdown(results, "latest.png").replace("files `profile-", f"files `{stamp}/profile-")
    )
    return folder


def _abuse_lines(abuse: dict[str, Any]) -> list[str]:
    """The normal users' p99s without and with the two abusers, side by side."""
    quiet, noisy = abuse.get("without_abusers"), abuse.get("with_abusers")
    if not quiet or not noisy:
        return []
    abusers = noisy.get("abusers", {})
    closes = ", ".join(f"{k}: {v}" for k, v in sorted(abusers.get("closes", {}).items())) or "none"
    return [
        "",
        f"## Abuse: {abuse['users']} paced users next to a 64 KiB flooder and a client that never reads",
        "",
        "| normal users | without abusers | with abusers |",
        "|---|---:|---:|",
        f"| delivery p99 ms | {quiet['delivery_latency']['p99_ms']:.1f} | {noisy['delivery_latency']['p99_ms']:.1f} |",
        f"| ping p99 ms | {quiet['ping_latency']['p99_ms']:.1f} | {noisy['ping_latency']['p99_ms']:.1f} |",
        f"| pings answered | {quiet['pings']} | {noisy['pings']} |",
        f"| runs ok / failed | {quiet['runs_ok']} / {quiet['runs_failed']} | {noisy['runs_ok']} / {noisy['runs_failed']} |",
        "",
        f"Flood frames sent: {abusers.get('flood_frames_sent', 0)}; abusers' connections closed: {closes}.",
    ]
