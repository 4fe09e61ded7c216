"""Launching the systems under test: Runwire as ``make run`` does, and parts of it.

Runwire runs as its four service processes through :class:`runwire_cli.cluster.Cluster`
(the launcher behind ``runwire up``), with fresh development secrets, a
throw-away data folder and two benchmark settings: the per-connection rate
limit is raised (a load client sends many ``run.start`` frames) and so, for the
idle-connection measurement, is the connections-per-user limit where asked.

The production configuration (:func:`runwire_production`) is the same launcher
with ``--redis-url`` and ``--database-url`` (what ``runwire up --redis-url …
--database-url postgresql+asyncpg://…`` does): the bridge keeps its logs in a
Redis database of the benchmark's own under a key prefix of its own, and the
registry uses a PostgreSQL database created for this system and dropped after it.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

import redis

from bench.redisstats import RedisProbe
from runwire_cli.cluster import Cluster, ClusterConfig, ServiceProcess
from runwire_common.attestation import generate_key_spec

BENCH_GATEWAY_ENV: Mapping[str, str] = MappingProxyType(
    {"RUNWIRE_GATEWAY_RATE_LIMIT_MESSAGES": "100000000", "RUNWIRE_GATEWAY_RUN_START_RATE_LIMIT": "100000000"}
)


@dataclass(frozen=True)
class Runwire:
    """A running cluster plus what a client needs to use it."""

    cluster: Cluster
    jwt_secret: str
    attestation_keys: str

    @property
    def url(self) -> str:
        return self.cluster.gateway_urls()[0]

    def pids(self) -> dict[str, int]:
        return {proc.kind: proc.pid for proc in self.cluster.all()}

    def address(self, kind: str) -> str:
        return self.cluster.processes[kind][0].address


def _config(
    data_dir: Path,
    database_url: str | None,
    service_env: Mapping[str, Mapping[str, str]],
    redis_url: str | None = None,
) -> ClusterConfig:
    return ClusterConfig(
        data_dir=data_dir,
        attestation_keys=generate_key_spec("bench"),
        jwt_secret=secrets.token_urlsafe(48),
        gateway_port=0,
        database_url=database_url,
        redis_url=redis_url,
        grace_period_s=5,
        service_env=service_env,
    )


@contextmanager
def runwire(
    data_dir: Path,
    *,
    gateway_env: Mapping[str, str] | None = None,
    database_url: str | None = None,
    redis_url: str | None = None,
    bridge_env: Mapping[str, str] | None = None,
) -> Iterator[Runwire]:
    """The whole system as processes, exactly as ``runwire up`` starts it."""
    service_env = {"gateway": {**BENCH_GATEWAY_ENV, **(gateway_env or {})}, "bridge": dict(bridge_env or {})}
    config = _config(data_dir, database_url, service_env, redis_url)
    cluster = Cluster(config)
    cluster.start()
    try:
        yield Runwire(cluster, config.jwt_secret, config.attestation_keys)
    finally:
        cluster.stop()


def start_registry_only(data_dir: Path, database_url: str) -> Runwire:
    """Start just the registry (and the bridge it reports deaths to) on ``database_url``."""
    config = _config(data_dir, database_url, {})
    cluster = Cluster(config)
    try:
        for kind in ("bridge", "registry"):
            proc = ServiceProcess(
                kind=kind,
                index=0,
                env={},
                log_path=data_dir / "logs" / f"{kind}-0.log",
                ready_path=data_dir / "run" / f"{kind}-0.json",
            )
            cluster.processes[kind].append(proc)
            # The launcher's own environment recipe, so the registry is configured as in `runwire up`.
            proc.env = cluster._env(kind, 0)
            proc.start()
            proc.wait_ready(60)
    except BaseException:
        cluster.stop()
        raise
    return Runwire(cluster, config.jwt_secret, config.attestation_keys)


@contextmanager
def registry_only(data_dir: Path, database_url: str) -> Iterator[Runwire]:
    """:func:`start_registry_only` as a context: stopped on exit."""
    system = start_registry_only(data_dir, database_url)
    try:
        yield system
    finally:
        system.cluster.stop()


def _plain_dsn(url: str) -> str:
    return url.replace("postgresql+asyncpg://", "postgresql://", 1)


async def _admin(admin_url: str, *statements: str) -> None:
    import asyncpg  # type: ignore[import-untyped]

    conn = await asyncpg.connect(_plain_dsn(admin_url), timeout=5)
    try:
        for statement in statements:
            await conn.execute(statement)
    finally:
        await conn.close()


@contextmanager
def postgres_database(admin_url: str, name: str = "runwire_bench") -> Iterator[str]:
    """Create a dedicated database for the benchmark and drop it afterwards; yield its URL."""
    drop = f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'
    asyncio.run(_admin(admin_url, drop, f'CREATE DATABASE "{name}"'))
    base = admin_url.rsplit("/", 1)[0]
    try:
        yield f"{base}/{name}"
    finally:
        asyncio.run(_admin(admin_url, drop))


@dataclass(frozen=True)
class Production:
    """Runwire on Redis + PostgreSQL, and a probe of its Redis server."""

    runwire: Runwire
    redis: RedisProbe
    database_url: str


@contextmanager
def runwire_production(
    data_dir: Path,
    *,
    admin_url: str,
    database: str,
    redis_url: str,
    key_prefix: str,
    poll_s: float = 1.0,
) -> Iterator[Production]:
    """Runwire with the Redis bridge backend and a fresh PostgreSQL registry database.

    The database ``database`` is dropped and created before the start and
    dropped after the stop; the Redis keys under ``key_prefix`` in
    ``redis_url``'s database are deleted before and after.
    """
    _clear_keys(redis_url, key_prefix)
    try:
        with (
            postgres_database(admin_url, database) as database_url,
            runwire(
                data_dir,
                database_url=database_url,
                redis_url=redis_url,
                bridge_env={"RUNWIRE_BRIDGE_REDIS_KEY_PREFIX": key_prefix},
            ) as rw,
        ):
            probe = RedisProbe(redis_url, [rw.pids()["bridge"]], poll_s=poll_s)
            try:
                yield Production(rw, probe, database_url)
            finally:
                probe.close()
    finally:
        with contextlib.suppress(redis.RedisError):
            _clear_keys(redis_url, key_prefix)


def _clear_keys(redis_url: str, key_prefix: str) -> None:
    """Delete the benchmark's keys (``key_prefix:*``) in ``redis_url``'s database only."""
    cleaner = RedisProbe(redis_url, ())
    try:
        cleaner.delete_keys(key_prefix)
    finally:
        cleaner.close()
