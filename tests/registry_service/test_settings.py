"""Registry settings: environment names, defaults and fail-fast URL checks (no database involved)."""

from __future__ import annotations

import pytest
from pydantic import SecretStr, ValidationError

from registry_service.settings import DatabaseSettings, RegistrySettings, normalize_database_url


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (
        "RUNWIRE_DATABASE_URL",
        "RUNWIRE_REGISTRY_DATABASE_URL",
        "RUNWIRE_REGISTRY_MAX_LIVE_RUNS_PER_USER",
        "RUNWIRE_REGISTRY_BRIDGE_TARGET",
        "RUNWIRE_REGISTRY_HEARTBEAT_TIMEOUT_S",
        "RUNWIRE_REGISTRY_DEATH_SWEEP_INTERVAL_S",
    ):
        monkeypatch.delenv(name, raising=False)


def test_the_defaults_are_a_local_sqlite_file_three_live_runs_and_migrating_on_start(
    attestation_key_spec: str,
) -> None:
    settings = RegistrySettings(attestation_keys=SecretStr(attestation_key_spec))

    assert settings.database_url.get_secret_value() == "sqlite+aiosqlite:///./.runwire/registry.db"
    assert settings.max_live_runs_per_user == 3
    assert settings.migrate_on_start is True


def test_the_prefixed_environment_configures_the_registry(
    monkeypatch: pytest.MonkeyPatch, attestation_key_spec: str
) -> None:
    monkeypatch.setenv("RUNWIRE_ATTESTATION_KEYS", attestation_key_spec)
    monkeypatch.setenv("RUNWIRE_REGISTRY_DATABASE_URL", "postgresql+asyncpg://db.internal/runs")
    monkeypatch.setenv("RUNWIRE_REGISTRY_MAX_LIVE_RUNS_PER_USER", "5")
    monkeypatch.setenv("RUNWIRE_REGISTRY_MIGRATE_ON_START", "false")

    settings = RegistrySettings()  # type: ignore[call-arg]

    assert settings.database_url.get_secret_value() == "postgresql+asyncpg://db.internal/runs"
    assert settings.max_live_runs_per_user == 5
    assert settings.migrate_on_start is False


def test_the_shared_database_variable_is_accepted_and_loses_to_the_prefixed_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("RUNWIRE_DATABASE_URL", "postgresql+asyncpg://shared/runs")
    assert DatabaseSettings().database_url.get_secret_value() == "postgresql+asyncpg://shared/runs"

    monkeypatch.setenv("RUNWIRE_REGISTRY_DATABASE_URL", "postgresql+asyncpg://own/runs")
    assert DatabaseSettings().database_url.get_secret_value() == "postgresql+asyncpg://own/runs"


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("postgresql://u:secret@h:5432/db", "postgresql+asyncpg://u:secret@h:5432/db"),
        ("postgres://h/db", "postgresql+asyncpg://h/db"),
        ("sqlite:///data/registry.db", "sqlite+aiosqlite:///data/registry.db"),
    ],
)
def test_plain_driver_names_are_upgraded_to_asyncio_drivers(given: str, expected: str) -> None:
    assert normalize_database_url(given) == expected


@pytest.mark.parametrize(
    "url",
    ["mysql://h/db", "postgresql+psycopg2://h/db", "sqlite://", "sqlite+aiosqlite:///:memory:", "nonsense"],
)
def test_an_unusable_database_url_fails_at_start_up(url: str, attestation_key_spec: str) -> None:
    with pytest.raises(ValidationError):
        RegistrySettings(attestation_keys=SecretStr(attestation_key_spec), database_url=url)


def test_a_quota_below_one_is_refused(attestation_key_spec: str) -> None:
    with pytest.raises(ValidationError):
        RegistrySettings(attestation_keys=SecretStr(attestation_key_spec), max_live_runs_per_user=0)


def test_death_detection_defaults_to_ten_seconds_of_silence_swept_every_second(
    attestation_key_spec: str,
) -> None:
    settings = RegistrySettings(attestation_keys=SecretStr(attestation_key_spec))

    assert (settings.heartbeat_timeout_s, settings.death_sweep_interval_s) == (10.0, 1.0)
    assert settings.bridge_target == ""
    assert settings.death_notice_lease_s > settings.call_timeout_s


def test_death_detection_is_configured_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, attestation_key_spec: str
) -> None:
    monkeypatch.setenv("RUNWIRE_ATTESTATION_KEYS", attestation_key_spec)
    monkeypatch.setenv("RUNWIRE_REGISTRY_BRIDGE_TARGET", " dns:///bridge:50051 ")
    monkeypatch.setenv("RUNWIRE_REGISTRY_HEARTBEAT_TIMEOUT_S", "30")
    monkeypatch.setenv("RUNWIRE_REGISTRY_DEATH_SWEEP_INTERVAL_S", "2.5")

    settings = RegistrySettings()  # type: ignore[call-arg]

    assert settings.bridge_target == "dns:///bridge:50051"
    assert (settings.heartbeat_timeout_s, settings.death_sweep_interval_s) == (30.0, 2.5)


@pytest.mark.parametrize(
    "changes",
    [
        {"heartbeat_timeout_s": 0},
        {"heartbeat_timeout_s": -1},
        {"death_sweep_interval_s": 0},
        {"heartbeat_timeout_s": 1, "death_sweep_interval_s": 2},
        {"death_sweep_batch": 0},
        {"death_notice_lease_s": 5, "call_timeout_s": 5},
    ],
    ids=str,
)
def test_inconsistent_death_detection_settings_fail_at_start_up(
    attestation_key_spec: str, changes: dict[str, float]
) -> None:
    with pytest.raises(ValidationError):
        RegistrySettings(attestation_keys=SecretStr(attestation_key_spec), **changes)  # type: ignore[arg-type]
