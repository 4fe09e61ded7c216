"""Settings of the registry process (``RUNWIRE_REGISTRY_*``).

The database URL is also read from the unprefixed ``RUNWIRE_DATABASE_URL`` so
one Secret can serve the service and its migration Job. Plain driver names
(``postgresql://``, ``sqlite://``) are upgraded to their asyncio drivers, and
anything else fails at start-up rather than on the first call.
"""

from __future__ import annotations

from typing import Self

from pydantic import AliasChoices, Field, SecretStr, field_validator, model_validator
from pydantic_settings import SettingsConfigDict
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from runwire_common.settings import SecretSettings, ServerSettings

DEFAULT_DATABASE_URL = "sqlite+aiosqlite:///./.runwire/registry.db"
DATABASE_URL_ALIASES = ("RUNWIRE_REGISTRY_DATABASE_URL", "RUNWIRE_DATABASE_URL", "database_url")
ASYNC_DRIVERS = (
    ("postgresql", "asyncpg"),
    ("sqlite", "aiosqlite"),
)


def normalize_database_url(value: str) -> str:
    """Return ``value`` with an asyncio driver, or raise ``ValueError``."""
    try:
        url: URL = make_url(value)
    except (ArgumentError, ValueError):
        # The parser's own message quotes the URL, password included.
        raise ValueError("not a database URL: expected DRIVER://USER:PASSWORD@HOST:PORT/DATABASE") from None
    backend = "postgresql" if url.get_backend_name() in ("postgres", "postgresql") else url.get_backend_name()
    drivers = dict(ASYNC_DRIVERS)
    if backend not in drivers:
        raise ValueError(f"unsupported database {backend!r}; use PostgreSQL or SQLite")
    driver = drivers[backend]
    if url.drivername not in (backend, f"{backend}+{driver}", "postgres"):
        raise ValueError(f"use the asyncio driver {backend}+{driver}, not {url.drivername}")
    if backend == "sqlite" and url.database in (None, "", ":memory:"):
        raise ValueError("SQLite needs a file; an in-memory database is not shared between connections")
    return url.set(drivername=f"{backend}+{driver}").render_as_string(hide_password=False)


class DatabaseSettings(SecretSettings):
    """Just the database, for ``python -m registry_service.migrate`` (no attestation keys needed).

    ``database_url`` is a secret (it may carry the password): use ``get_secret_value()``.
    """

    model_config = SettingsConfigDict(env_prefix="RUNWIRE_REGISTRY_", populate_by_name=True, extra="ignore")

    database_url: SecretStr = Field(
        default=SecretStr(DEFAULT_DATABASE_URL), validation_alias=AliasChoices(*DATABASE_URL_ALIASES)
    )
    sqlite_busy_timeout_s: float = Field(
        default=30.0, gt=0, description="how long a SQLite writer waits for the file lock"
    )

    @field_validator("database_url")
    @classmethod
    def _async_url(cls, value: SecretStr) -> SecretStr:
        return SecretStr(normalize_database_url(value.get_secret_value()))


class RegistrySettings(ServerSettings, DatabaseSettings):
    """The registry service process: server settings, the database, the run limits and death detection.

    Death detection: a live run whose last heartbeat *and* last transition are
    both older than ``heartbeat_timeout_s`` is moved to ``dead`` by a sweep
    that runs every ``death_sweep_interval_s``; its owner is told through the
    bridge at ``bridge_target`` (empty: runs still die, nobody is told until
    a bridge is configured). A replica that claimed a notice holds it for
    ``death_notice_lease_s``; if it crashes meanwhile another replica sends
    the notice once the lease has expired.

    Run ends: a terminal transition that carries its caller's terminal event
    keeps it as an end notice, which the same sweep delivers once the run
    ended more than ``end_notice_delay_s`` ago, in case the caller's own
    publication never arrived (the bridge keeps one terminal event per run,
    so the delivery is a no-op when it did). The delay must exceed the
    executor's publish retry window (``RUNWIRE_EXECUTION_PUBLISH_RETRY_S``,
    20 s, per batch: a terminal event may queue behind one batch being
    retried) and stay well below the bridge's fencing retention
    (``RUNWIRE_BRIDGE_RUN_STATE_HOLD_S``, 600 s), past which a late copy
    could be taken for a first terminal event.

    Retention: runs that ended more than ``retention_days`` ago are deleted
    with their thread messages and input requests, ``retention_batch`` runs
    per transaction, on a pass every ``retention_interval_s``
    (:mod:`registry_service.retention`); 0 days keeps everything.
    """

    model_config = SettingsConfigDict(env_prefix="RUNWIRE_REGISTRY_", populate_by_name=True, extra="ignore")

    max_live_runs_per_user: int = Field(default=3, ge=1)
    migrate_on_start: bool = Field(
        default=True, description="upgrade the schema to head before serving (off when a Job migrates)"
    )
    bridge_target: str = Field(default="", description="the bridge for agent_death notices; empty = none")
    heartbeat_timeout_s: float = Field(
        default=10.0, gt=0, le=86_400, description="a live run silent for this long is dead"
    )
    death_sweep_interval_s: float = Field(
        default=1.0, gt=0, le=3_600, description="how often live runs are checked for death"
    )
    death_sweep_batch: int = Field(
        default=200, ge=1, le=10_000, description="runs marked dead, or notices sent, per sweep"
    )
    death_notice_lease_s: float = Field(
        default=30.0, gt=0, description="how long a claimed agent_death notice is reserved for its replica"
    )
    end_notice_delay_s: float = Field(
        default=60.0,
        gt=0,
        le=300,
        description="how long after a run's end the registry delivers its terminal event as a safety net",
    )

    retention_days: float = Field(
        default=30.0, ge=0, description="how long ended runs, their messages and inputs are kept; 0 = forever"
    )
    retention_interval_s: float = Field(
        default=3_600.0, gt=0, le=86_400, description="how often runs past the retention are purged"
    )
    retention_batch: int = Field(
        default=500, ge=1, le=10_000, description="runs deleted per transaction by the retention purge"
    )

    @field_validator("bridge_target")
    @classmethod
    def _strip_target(cls, value: str) -> str:
        return value.strip()

    @model_validator(mode="after")
    def _death_detection_is_consistent(self) -> Self:
        if self.death_sweep_interval_s > self.heartbeat_timeout_s:
            raise ValueError("death_sweep_interval_s must not exceed heartbeat_timeout_s")
        # A lease shorter than one Publish would let a second replica send the
        # same notice while the first is still sending it.
        if self.death_notice_lease_s <= self.call_timeout_s:
            raise ValueError("death_notice_lease_s must exceed call_timeout_s")
        return self

    def database(self) -> DatabaseSettings:
        return DatabaseSettings(
            database_url=self.database_url, sqlite_busy_timeout_s=self.sqlite_busy_timeout_s
        )
