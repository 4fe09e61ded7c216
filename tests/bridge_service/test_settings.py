"""Bridge settings come from RUNWIRE_BRIDGE_* and fail fast when inconsistent."""

from __future__ import annotations

import pytest
from pydantic import SecretStr, ValidationError

from bridge_service.settings import BridgeSettings


def test_settings_read_the_bridge_prefix_and_the_shared_keys(
    monkeypatch: pytest.MonkeyPatch, attestation_key_spec: str
) -> None:
    monkeypatch.setenv("RUNWIRE_ATTESTATION_KEYS", attestation_key_spec)
    monkeypatch.setenv("RUNWIRE_BRIDGE_LOG_CAPACITY", "77")
    monkeypatch.setenv("RUNWIRE_BRIDGE_SUBSCRIBER_QUEUE", "600")
    monkeypatch.setenv("RUNWIRE_BRIDGE_PORT", "0")
    monkeypatch.setenv("RUNWIRE_REGISTRY_LOG_CAPACITY", "5")  # another service's variable
    settings = BridgeSettings()  # type: ignore[call-arg]
    assert (settings.log_capacity, settings.subscriber_queue) == (77, 600)
    assert settings.attestation_keys.get_secret_value() == attestation_key_spec


def test_defaults_match_the_documented_limits(attestation_key_spec: str) -> None:
    settings = BridgeSettings(attestation_keys=SecretStr(attestation_key_spec))
    assert settings.backend == "memory"
    assert settings.log_capacity == 10_000
    assert settings.subscriber_queue == 1_000
    assert settings.max_events_per_publish == 500
    assert settings.max_payload_bytes == 64 * 1024


@pytest.mark.parametrize(
    "overrides",
    [
        {"backend": "kafka"},
        {"log_capacity": 0},
        {"subscriber_queue": 10, "max_events_per_publish": 11},
    ],
)
def test_bad_configuration_is_refused(attestation_key_spec: str, overrides: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        BridgeSettings.model_validate({"attestation_keys": attestation_key_spec, **overrides})


def test_redis_backend_settings_come_from_the_launchers_variables(
    monkeypatch: pytest.MonkeyPatch, attestation_key_spec: str
) -> None:
    monkeypatch.setenv("RUNWIRE_ATTESTATION_KEYS", attestation_key_spec)
    monkeypatch.setenv("RUNWIRE_BRIDGE_BACKEND", "redis")
    monkeypatch.setenv("RUNWIRE_BRIDGE_REDIS_URL", "redis://cache:6380/2")
    monkeypatch.setenv("RUNWIRE_BRIDGE_REDIS_KEY_PREFIX", "rw-prod")
    monkeypatch.setenv("RUNWIRE_BRIDGE_RETENTION_S", "3600")
    monkeypatch.setenv("RUNWIRE_BRIDGE_RUN_STATE_CAPACITY", "50")
    settings = BridgeSettings()  # type: ignore[call-arg]
    assert (settings.backend, settings.redis_url.get_secret_value(), settings.redis_key_prefix) == (
        "redis",
        "redis://cache:6380/2",
        "rw-prod",
    )
    assert (settings.retention_s, settings.run_state_capacity) == (3600, 50)


def test_redis_defaults(attestation_key_spec: str) -> None:
    settings = BridgeSettings(attestation_keys=SecretStr(attestation_key_spec))
    assert (settings.redis_key_prefix, settings.retention_s, settings.run_state_capacity) == (
        "runwire",
        86_400,
        1_000,
    )


@pytest.mark.parametrize("prefix", ["", "a{b}", "with space", "x" * 65])
def test_key_prefix_that_would_break_the_key_layout_is_refused(
    attestation_key_spec: str, prefix: str
) -> None:
    with pytest.raises(ValidationError, match="redis_key_prefix"):
        BridgeSettings.model_validate({"attestation_keys": attestation_key_spec, "redis_key_prefix": prefix})
