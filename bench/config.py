"""The benchmark's settings (what ``python -m bench`` parses) and the scripted inputs."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

SECTIONS = ("load", "paced", "abuse", "stability", "idle", "registry", "prod")


@dataclass(frozen=True)
class BenchConfig:
    """Every knob of one benchmark run; the defaults are the full run."""

    users: tuple[int, ...] = (1, 100, 1000, 2000)
    events_per_run: int = 20
    payload_bytes: int = 64
    runs_per_user: int | None = None  # None: about `total_runs` runs per user count
    total_runs: int = 2000
    drivers: int | None = None  # None: 1 driver process below 500 users, else 2
    paced_users: int = 100
    paced_rate: float = 10.0  # events per second each paced user receives
    paced_runs: int = 3
    abuse_users: int = 100  # normal users (paced) measured with and without a flooder and a non-reader
    abuse_pingers: int = 10  # extra normal connections timing pings (2.5 per second each:
    abuse_ping_interval_s: float = 0.4  # within the default 30 frames per 10 s)
    stability_users: int = 100
    stability_runs: int = 1000
    idle_counts: tuple[int, ...] = (1000, 10000)
    # Idle pings: every held connection answers one when at most this many are held in all,
    # otherwise `idle_ping_sample` connections spread evenly over all of them.
    idle_ping_all_max: int = 10_000
    idle_ping_sample: int = 300
    # Each loopback source address (127.0.0.1, 127.0.0.2, …) has about 28k ephemeral ports
    # towards one gateway port; idle connections are spread so none carries more than this.
    idle_per_source: int = 20_000
    registry_callers: int = 32
    registry_duration_s: float = 5.0
    postgres_url: str = "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"
    postgres_database: str = "runwire_bench"  # created and dropped by every run; never `test`
    # The production configuration (`prod`): Redis bridge backend + PostgreSQL registry.
    prod_users: tuple[int, ...] = (100, 1000)
    prod_idle_counts: tuple[int, ...] = (1000, 10000)
    redis_url: str = "redis://127.0.0.1:6379/14"  # a DB number of its own; tests use 0
    redis_key_prefix: str = "runwire-bench"  # every key and Pub/Sub channel of the bridge
    redis_poll_s: float = 1.0  # CLIENT LIST / INFO readings while a measurement runs
    out: Path = Path("bench/results")
    skip: frozenset[str] = frozenset()
    profile: bool = False
    profile_users: int = 100
    profile_runs_per_user: int = 5
    profile_rate: int = 100
    profile_services: tuple[str, ...] = ("gateway", "execution", "bridge", "registry")
    profile_native: bool = False  # py-spy --native: C frames too, but it pauses the process per sample
    smoke: bool = False
    keep_logs: bool = False
    fresh_systems: bool = True  # stability and idle each on a freshly started Runwire
    settle_s: float = 2.0  # pause before an RSS reading, so freed memory and queues settle

    @classmethod
    def smoke_sized(cls, **overrides: object) -> BenchConfig:
        """Every measurement at a tiny size: the whole run takes well under a minute."""
        base: dict[str, object] = {
            "users": (1, 4),
            "events_per_run": 6,
            "runs_per_user": 3,
            "paced_users": 2,
            "paced_rate": 50.0,
            "paced_runs": 1,
            "abuse_users": 2,
            "abuse_pingers": 2,
            "stability_users": 4,
            "stability_runs": 8,
            "idle_counts": (10, 30),
            "idle_ping_all_max": 20,  # 30 held: the sampled ping check runs too
            "idle_ping_sample": 7,
            "idle_per_source": 16,  # 30 held: two source addresses
            "prod_users": (4,),
            "prod_idle_counts": (10,),
            "redis_poll_s": 0.2,
            "registry_callers": 4,
            "registry_duration_s": 1.0,
            "smoke": True,
            "fresh_systems": False,
            "settle_s": 0.2,
        }
        base.update(overrides)
        return cls(**base)  # type: ignore[arg-type]

    def runs_for(self, users: int) -> int:
        if self.runs_per_user is not None:
            return self.runs_per_user
        return max(2, min(100, math.ceil(self.total_runs / users)))

    def drivers_for(self, users: int) -> int:
        if self.drivers is not None:
            return self.drivers
        return 1 if users < 500 else 2


def scripted_input(events: int, payload_bytes: int, *, sleep_ms: int = 0) -> str:
    """A ``scripted`` input producing exactly ``events`` events.

    ``agent_started`` + ``events - 2`` partial results of ``payload_bytes``
    characters + ``agent_completed``; with ``sleep_ms`` a pause between partials.
    """
    text = ("runwire bench " * (payload_bytes // 14 + 1))[:payload_bytes]
    steps: list[dict[str, object]] = []
    for index in range(max(0, events - 2)):
        if sleep_ms and index:
            steps.append({"sleep_ms": sleep_ms})
        steps.append({"partial": text})
    return json.dumps({"steps": steps, "result": text}, separators=(",", ":"))
