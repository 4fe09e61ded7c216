"""Configuration in the manifests: service targets, setting names and values, secrets."""

from __future__ import annotations

import base64
import contextlib
import os
import re

import pytest
from pydantic import ValidationError

from bridge_service.settings import BridgeSettings
from gateway.settings import GatewaySettings
from tests.k8s.conftest import TARGETS, Docs, target_namespace
from tests.k8s.render import containers, named, of_kind, workloads
from tests.k8s.workload import (
    SETTINGS_BY_MODULE,
    container_env,
    env_names,
    module_of,
    runwire_containers,
    secret_values,
    settings_env_names,
)

PLACEHOLDER_MARKERS = ("REPLACE_ME", "dev-only")
TARGET_PATTERN = re.compile(
    r"^dns:///(?P<service>[a-z0-9-]+)\.(?P<namespace>[a-z0-9-]+)\.svc\.cluster\.local:(?P<port>\d+)$"
)


@pytest.mark.parametrize("target", TARGETS)
def test_service_targets_name_headless_services_of_the_same_namespace(
    rendered: dict[str, Docs], target: str
) -> None:
    docs = rendered[target]
    services = {s["metadata"]["name"]: s["spec"] for s in of_kind(docs, "Service")}
    targets = {
        key: value
        for cm in of_kind(docs, "ConfigMap")
        for key, value in cm["data"].items()
        if key.endswith("_TARGET")
    }
    assert len(targets) == 6
    for key, value in targets.items():
        match = TARGET_PATTERN.fullmatch(value)
        assert match, f"{key}={value}"
        assert match["namespace"] == target_namespace(target), f"{key}={value}"
        service = services[match["service"]]
        assert service["clusterIP"] == "None"
        assert int(match["port"]) in {p["port"] for p in service["ports"]}


# --- configuration and secrets ---------------------------------------------------------------


@pytest.mark.parametrize("target", TARGETS)
def test_every_environment_variable_is_a_real_setting_of_its_service(
    rendered: dict[str, Docs], target: str
) -> None:
    docs = rendered[target]
    unknown = []
    for workload, container in runwire_containers(docs):
        known = settings_env_names(SETTINGS_BY_MODULE[module_of(container)])
        unknown += [
            f"{workload['metadata']['name']}: {name}"
            for name in sorted(env_names(container, docs))
            if name.upper() not in known
        ]
    assert not unknown, "not read by the service:\n" + "\n".join(unknown)


@pytest.mark.parametrize("module", sorted(SETTINGS_BY_MODULE))
def test_the_dev_environment_loads_the_settings_of_every_process(
    rendered: dict[str, Docs], module: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    docs = rendered["dev"]
    (container,) = [c for _, c in runwire_containers(docs) if module_of(c) == module]
    for name in [n for n in os.environ if n.upper().startswith("RUNWIRE_")]:
        monkeypatch.delenv(name)
    for name, value in container_env(container, docs).items():
        monkeypatch.setenv(name, value)
    settings = SETTINGS_BY_MODULE[module]()  # raises ValidationError on a bad value
    if module == "bridge_service":
        assert isinstance(settings, BridgeSettings)
        assert settings.backend == "redis"
    if module == "gateway":
        assert isinstance(settings, GatewaySettings)
        assert settings.jwt_audience and settings.jwt_issuer


@pytest.mark.parametrize("module", sorted(SETTINGS_BY_MODULE))
def test_the_base_placeholders_are_refused_outside_development_mode(
    rendered: dict[str, Docs], module: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    docs = rendered["base"]
    (container,) = [c for _, c in runwire_containers(docs) if module_of(c) == module]
    for name in [n for n in os.environ if n.upper().startswith("RUNWIRE_")]:
        monkeypatch.delenv(name)
    for name, value in container_env(container, docs).items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError, match="known development value.*RUNWIRE_DEV_MODE=true"):
        SETTINGS_BY_MODULE[module]()


@pytest.mark.parametrize("target", TARGETS)
def test_only_the_dev_overlay_runs_in_development_mode(rendered: dict[str, Docs], target: str) -> None:
    docs = rendered[target]
    modes = {
        f"{workload['metadata']['name']}/{container['name']}": container_env(container, docs).get(
            "RUNWIRE_DEV_MODE"
        )
        for workload, container in runwire_containers(docs)
    }
    expected = "true" if target == "dev" else None
    assert modes == dict.fromkeys(modes, expected)


@pytest.mark.parametrize("target", TARGETS)
def test_the_gateway_checks_the_audience_and_issuer_of_every_token(
    rendered: dict[str, Docs], target: str
) -> None:
    docs = rendered[target]
    (container,) = [c for _, c in runwire_containers(docs) if module_of(c) == "gateway"]
    env = container_env(container, docs)
    for name in ("RUNWIRE_GATEWAY_JWT_AUDIENCE", "RUNWIRE_GATEWAY_JWT_ISSUER"):
        assert env.get(name, "").strip(), f"{target}: {name} is not set"


@pytest.mark.parametrize("target", TARGETS)
def test_every_secret_reference_resolves(rendered: dict[str, Docs], target: str) -> None:
    docs = rendered[target]
    template = secret_values(named(rendered["base"], "Secret", "runwire-secrets"))
    shipped = {s["metadata"]["name"]: secret_values(s) for s in of_kind(docs, "Secret")}
    for workload in workloads(docs):
        for container in containers(workload):
            for var in container.get("env", []):
                ref = var.get("valueFrom", {}).get("secretKeyRef")
                if ref is None:
                    continue
                # Production creates the Secret out of band, with the keys of the template.
                keys = shipped.get(ref["name"], template if target == "prod" else {})
                assert ref["key"] in keys, f"{workload['metadata']['name']}: {ref}"


def test_production_ships_no_secret_so_apply_never_overwrites_the_real_one(rendered: dict[str, Docs]) -> None:
    assert of_kind(rendered["prod"], "Secret") == []


@pytest.mark.parametrize("target", TARGETS)
def test_secrets_hold_only_placeholders_or_obvious_development_values(
    rendered: dict[str, Docs], target: str
) -> None:
    for secret in of_kind(rendered[target], "Secret"):
        for key, value in secret_values(secret).items():
            revealed = value
            if key == "attestation-keys":  # KEY_ID:BASE64URL pairs: look inside the key material
                for item in value.split(","):
                    encoded = item.partition(":")[2]
                    with contextlib.suppress(ValueError, UnicodeDecodeError):
                        revealed += base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)).decode()
            assert any(marker in revealed for marker in PLACEHOLDER_MARKERS), (
                f"{key} looks like a real secret"
            )
