"""``python -m bench`` — run the benchmark suite (``make bench BENCH_ARGS="..."``).

Examples::

    python -m bench                              # the full run: 1, 100, 1000, 2000 users, …
    python -m bench --idle 1000,10000,50000      # up to 50,000 idle connections on one gateway
    python -m bench --skip-prod                  # without the Redis + PostgreSQL configuration
    python -m bench --users 1,100,1000,5000      # choose the user counts
    python -m bench --smoke --out /tmp/bench     # every measurement at a tiny size (< 1 min)
    python -m bench --skip-idle --skip-registry  # only some measurements
    python -m bench --profile                    # also py-spy profiles under the 100-user load

Results go to ``<out>/<timestamp>/`` (results.json, results.md, chart.png) and
``<out>/latest.*``. The exit status is 1 when a measurement failed to run.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from bench.config import SECTIONS, BenchConfig


def _ints(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from exc
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError("expected positive integers")
    return values


def parse(argv: list[str]) -> BenchConfig:
    defaults = BenchConfig()
    parser = argparse.ArgumentParser(
        prog="python -m bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--users", type=_ints, help="user counts of the load measurement (default 1,100,1000,2000)"
    )
    parser.add_argument("--events-per-run", type=int, help="events per run, terminal included (default 20)")
    parser.add_argument("--payload-bytes", type=int, help="characters per partial result (default 64)")
    parser.add_argument(
        "--runs-per-user", type=int, help="runs per user (default: about --total-runs in all)"
    )
    parser.add_argument(
        "--total-runs", type=int, help="runs per user count when --runs-per-user is not set (2000)"
    )
    parser.add_argument("--drivers", type=int, help="driver processes (default 1 below 500 users, else 2)")
    parser.add_argument("--paced-users", type=int, help="users of the paced measurement (100)")
    parser.add_argument("--paced-rate", type=float, help="events per second per paced user (10)")
    parser.add_argument("--stability-runs", type=int, help="runs of the RSS stability measurement (1000)")
    parser.add_argument("--idle", type=_ints, dest="idle_counts", help="idle connection counts (1000,10000)")
    parser.add_argument(
        "--idle-ping-all-max",
        type=int,
        help=f"every idle connection pings up to this many held, else a sample ({defaults.idle_ping_all_max})",
    )
    parser.add_argument(
        "--idle-ping-sample",
        type=int,
        help=f"idle connections sampled for a ping ({defaults.idle_ping_sample})",
    )
    parser.add_argument(
        "--idle-per-source",
        type=int,
        help=f"idle connections per loopback source address 127.0.0.N ({defaults.idle_per_source})",
    )
    parser.add_argument("--registry-seconds", type=float, dest="registry_duration_s", help="per database (5)")
    parser.add_argument("--registry-callers", type=int, help="concurrent registry callers (32)")
    parser.add_argument("--postgres-url", help=f"admin URL of PostgreSQL (default {defaults.postgres_url})")
    parser.add_argument(
        "--postgres-database",
        help=f"database created and dropped by the run ({defaults.postgres_database}; never the tests' `test`)",
    )
    prod = parser.add_argument_group("production configuration (Redis bridge + PostgreSQL registry)")
    prod.add_argument(
        "--prod-users",
        type=_ints,
        help="user counts of its load measurement (default {})".format(
            ",".join(map(str, defaults.prod_users))
        ),
    )
    prod.add_argument(
        "--prod-idle",
        type=_ints,
        dest="prod_idle_counts",
        help="its idle connection counts (default {})".format(",".join(map(str, defaults.prod_idle_counts))),
    )
    prod.add_argument(
        "--redis-url", help=f"Redis server and database number of the run ({defaults.redis_url})"
    )
    prod.add_argument("--redis-key-prefix", help=f"the bridge's key prefix ({defaults.redis_key_prefix})")
    prod.add_argument(
        "--redis-poll", type=float, dest="redis_poll_s", help="seconds between Redis readings (1)"
    )
    parser.add_argument("--out", type=Path, help="results folder (default bench/results)")
    for section in SECTIONS:
        what = "Redis + PostgreSQL configuration (its load and idle)" if section == "prod" else section
        parser.add_argument(f"--skip-{section}", action="store_true", help=f"skip the {what} measurement")
    parser.add_argument("--profile", action="store_true", help="py-spy profiles of services under load")
    parser.add_argument("--profile-users", type=int, help="users of the profiled load (100)")
    parser.add_argument(
        "--profile-runs",
        type=int,
        dest="profile_runs_per_user",
        help="runs per user of the profiled load (5)",
    )
    parser.add_argument(
        "--profile-rate", type=int, help="py-spy samples per second (100; 500 resolves sub-millisecond costs)"
    )
    parser.add_argument(
        "--profile-native",
        action="store_true",
        help="py-spy --native: C frames too (pauses the services per sample: far slower under load)",
    )
    parser.add_argument("--smoke", action="store_true", help="every measurement at a tiny size (< 1 minute)")
    parser.add_argument("--keep-logs", action="store_true", help="keep the services' logs and data folder")
    args = parser.parse_args(argv)
    if args.postgres_database in ("test", "postgres", "template0", "template1"):
        parser.error(
            f"--postgres-database {args.postgres_database} would be dropped: choose a database of its own"
        )
    overrides = {
        key: value
        for key, value in vars(args).items()
        if value is not None
        and not key.startswith("skip_")
        and key not in ("smoke", "profile", "profile_native", "keep_logs")
    }
    overrides["skip"] = frozenset(s for s in SECTIONS if getattr(args, f"skip_{s}"))
    overrides["profile"] = args.profile
    overrides["profile_native"] = args.profile_native
    overrides["keep_logs"] = args.keep_logs
    return BenchConfig.smoke_sized(**overrides) if args.smoke else BenchConfig(**overrides)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    cfg = parse(argv)
    from bench.suite import run

    folder, results = run(cfg, shlex.join(["python", "-m", "bench", *argv]))
    print((folder / "results.md").read_text())
    print(f"results: {folder} (and {cfg.out}/latest.*)")
    return 1 if results.get("errors") else 0


if __name__ == "__main__":
    raise SystemExit(main())
