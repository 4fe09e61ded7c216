"""Secrets in settings: never printed, and the repository's known ones refused outside development.

The processes are started for real (``python -m <service>``) so the test sees
exactly what an operator would see on the terminal or in ``kubectl logs``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from bridge_service.settings import BridgeSettings
from execution_service.settings import ExecutionSettings
from gateway.settings import GatewaySettings
from registry_service.settings import DatabaseSettings, RegistrySettings
from runwire_common.attestation import generate_key_spec
from runwire_common.settings import SecretSettings

ROOT = Path(__file__).resolve().parents[2]
DEV_OVERLAY = ROOT / "k8s" / "overlays" / "dev" / "kustomization.yaml"
BASE_SECRET = ROOT / "k8s" / "base" / "secret.yaml"
PASSWORD = "hunter2xyzzy"  # short: pydantic would truncate a long input in the middle
START_TIMEOUT_S = 30


def _run(module: str, tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("RUNWIRE_", "OPENAI_"))}
    clean.update(
        PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH", "")])),
        RUNWIRE_ATTESTATION_KEYS=generate_key_spec("test"),
    )
    clean.update(env)
    # A process that passes validation would serve until the timeout (and fail the test).
    return subprocess.run(
        [sys.executable, "-m", module],
        env=clean,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=START_TIMEOUT_S,
        check=False,
    )


def _assert_refused_quietly(result: subprocess.CompletedProcess[str], *secrets: str) -> None:
    assert result.returncode == 2, result.stderr
    assert "invalid configuration" in result.stderr
    assert "Traceback" not in result.stderr
    for secret in secrets:
        assert secret not in result.stderr
        assert secret not in result.stdout


GATEWAY_TARGETS = {
    "RUNWIRE_GATEWAY_EXECUTION_TARGET": "127.0.0.1:1",
    "RUNWIRE_GATEWAY_REGISTRY_TARGET": "127.0.0.1:1",
    "RUNWIRE_GATEWAY_BRIDGE_TARGET": "127.0.0.1:1",
}


# --- invalid settings never print secret values ------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        f"mysql://u:{PASSWORD}@h/db",  # unsupported database
        f"postgresql://u:{PASSWORD}@h:x/db",  # unparseable port
    ],
)
def test_an_invalid_database_url_is_refused_without_printing_it(tmp_path: Path, url: str) -> None:
    result = _run("registry_service", tmp_path, RUNWIRE_REGISTRY_DATABASE_URL=url)
    _assert_refused_quietly(result, PASSWORD)
    assert "database_url" in result.stderr.lower()


def test_the_migration_job_refuses_an_invalid_database_url_without_printing_it(tmp_path: Path) -> None:
    url = f"mysql://u:{PASSWORD}@h/db"
    result = _run("registry_service.migrate", tmp_path, RUNWIRE_DATABASE_URL=url)
    _assert_refused_quietly(result, PASSWORD)


def test_an_invalid_redis_url_is_refused_without_printing_it(tmp_path: Path) -> None:
    url = f"http://:{PASSWORD}@h:6379/0"
    result = _run("bridge_service", tmp_path, RUNWIRE_BRIDGE_BACKEND="redis", RUNWIRE_BRIDGE_REDIS_URL=url)
    _assert_refused_quietly(result, PASSWORD)
    assert "redis_url" in result.stderr.lower()


def test_an_error_of_the_whole_model_does_not_echo_the_secrets_in_its_input(tmp_path: Path) -> None:
    # Too short for HS256: the check runs on the whole model, whose input is every setting.
    result = _run("gateway", tmp_path, RUNWIRE_GATEWAY_JWT_SECRET=PASSWORD, **GATEWAY_TARGETS)
    _assert_refused_quietly(result, PASSWORD)
    assert "jwt_secret must be at least 32 bytes" in result.stderr


def test_a_bad_attestation_key_is_a_configuration_error_not_a_crash(tmp_path: Path) -> None:
    material = "c2hvcnQtYnV0LXNlY3JldA"  # 18 bytes: too short
    result = _run("execution_service", tmp_path, RUNWIRE_ATTESTATION_KEYS=f"k1:{material}")
    _assert_refused_quietly(result, material)
    assert "attestation key 'k1' must be at least 32 bytes" in result.stderr


def test_database_and_redis_urls_are_typed_as_secrets_and_masked(tmp_path: Path) -> None:
    keys = generate_key_spec("test")
    registry = RegistrySettings(
        attestation_keys=keys,  # type: ignore[arg-type]
        database_url=f"postgresql://runwire:{PASSWORD}@db.example.com/runwire",  # type: ignore[arg-type]
    )
    bridge = BridgeSettings(
        attestation_keys=keys,  # type: ignore[arg-type]
        redis_url=f"redis://:{PASSWORD}@redis.example.com:6379/0",  # type: ignore[arg-type]
    )
    for settings in (registry, registry.database(), bridge):
        assert PASSWORD not in repr(settings)
        assert PASSWORD not in str(settings)
        assert PASSWORD not in settings.model_dump_json()
    # The services themselves still get the real value.
    assert PASSWORD in registry.database_url.get_secret_value()
    assert PASSWORD in bridge.redis_url.get_secret_value()


# --- known development secrets ------------------------------------------------------------------


def _dev_overlay_secrets() -> dict[str, str]:
    overlay = yaml.safe_load(DEV_OVERLAY.read_text())
    (generator,) = [g for g in overlay["secretGenerator"] if g["name"] == "runwire-secrets"]
    return dict(literal.split("=", 1) for literal in generator["literals"])


def _base_placeholders() -> dict[str, str]:
    values: dict[str, str] = yaml.safe_load(BASE_SECRET.read_text())["stringData"]
    return values


# (settings class, field, the Secret's key, extra settings that make the rest valid)
SECRET_SETTINGS: list[tuple[type[SecretSettings], str, str, dict[str, Any]]] = [
    (RegistrySettings, "attestation_keys", "attestation-keys", {}),
    (BridgeSettings, "attestation_keys", "attestation-keys", {}),
    (
        ExecutionSettings,
        "attestation_keys",
        "attestation-keys",
        {"registry_target": "r:1", "bridge_target": "b:1"},
    ),
    (GatewaySettings, "attestation_keys", "attestation-keys", {}),
    (GatewaySettings, "jwt_secret", "gateway-jwt-secret", {}),
    (RegistrySettings, "database_url", "database-url", {}),
    (DatabaseSettings, "database_url", "database-url", {}),
    (BridgeSettings, "redis_url", "redis-url", {"backend": "redis"}),
]


def _valid(cls: type[SecretSettings]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    if cls is not DatabaseSettings:
        values["attestation_keys"] = generate_key_spec("test")
    if cls is GatewaySettings:
        values.update(
            jwt_secret="a-real-and-long-enough-secret-0123456789",
            execution_target="e:1",
            registry_target="r:1",
            bridge_target="b:1",
        )
    return values


@pytest.fixture(autouse=True)
def _no_runwire_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [n for n in os.environ if n.upper().startswith("RUNWIRE_")]:
        monkeypatch.delenv(name)


@pytest.mark.parametrize(
    ("source", "known"), [("dev overlay", _dev_overlay_secrets), ("base", _base_placeholders)]
)
@pytest.mark.parametrize(("cls", "field", "key", "extra"), SECRET_SETTINGS)
def test_a_known_secret_of_the_repository_is_refused_outside_development_mode(
    cls: type[SecretSettings], field: str, key: str, extra: dict[str, Any], source: str, known: Any
) -> None:
    value = known()[key]
    values = {**_valid(cls), **extra, field: value}
    with pytest.raises(ValidationError) as refused:
        cls(**values)
    message = str(refused.value)
    assert "RUNWIRE_DEV_MODE" in message, message
    if source == "dev overlay":  # (the base's placeholders do not parse as keys in any mode)
        settings = cls(**values, dev_mode=True)
        assert settings.dev_mode is True


def test_a_service_started_with_the_dev_overlays_key_outside_development_mode_refuses_to_start(
    tmp_path: Path,
) -> None:
    overlay = _dev_overlay_secrets()
    result = _run(
        "registry_service",
        tmp_path,
        RUNWIRE_ATTESTATION_KEYS=overlay["attestation-keys"],
        RUNWIRE_REGISTRY_DATABASE_URL=f"sqlite:///{tmp_path / 'registry.db'}",
    )
    _assert_refused_quietly(result, overlay["attestation-keys"].partition(":")[2])
    assert "known development" in result.stderr
    assert "RUNWIRE_DEV_MODE" in result.stderr


def test_random_secrets_need_no_development_mode() -> None:
    for cls, _field, _key, extra in SECRET_SETTINGS:
        settings = cls(**_valid(cls), **extra)
        assert settings.dev_mode is False
