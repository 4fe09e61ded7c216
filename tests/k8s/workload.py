"""Helpers that read rendered workloads: their containers, environment and settings."""

from __future__ import annotations

import base64
from typing import Any

from pydantic import AliasChoices
from pydantic_settings import BaseSettings

from bridge_service.settings import BridgeSettings
from execution_service.settings import ExecutionSettings
from gateway.settings import GatewaySettings
from registry_service.settings import DatabaseSettings, RegistrySettings
from tests.k8s.render import Docs, containers, named, of_kind, workloads

SETTINGS_BY_MODULE: dict[str, type[BaseSettings]] = {
    "registry_service": RegistrySettings,
    "registry_service.migrate": DatabaseSettings,
    "bridge_service": BridgeSettings,
    "execution_service": ExecutionSettings,
    "gateway": GatewaySettings,
}
GRPC_SERVICES = ("registry_service", "bridge_service", "execution_service")


def is_runwire_image(image: str) -> bool:
    repository = image.split("@")[0].rsplit("/", 1)[-1]
    return repository.split(":")[0] == "runwire"


def runwire_containers(docs: Docs) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    return [(w, c) for w in workloads(docs) for c in containers(w) if is_runwire_image(c["image"])]


def secret_values(secret: dict[str, Any]) -> dict[str, str]:
    values = {k: base64.b64decode(v).decode() for k, v in secret.get("data", {}).items()}
    values.update(secret.get("stringData", {}))
    return values


def container_env(container: dict[str, Any], docs: Docs) -> dict[str, str]:
    """The environment the container starts with, secrets and downward API resolved."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        env.update(named(docs, "ConfigMap", source["configMapRef"]["name"])["data"])
    for var in container.get("env", []):
        if "value" in var:
            env[var["name"]] = var["value"]
        elif "secretKeyRef" in var["valueFrom"]:
            ref = var["valueFrom"]["secretKeyRef"]
            secrets = [s for s in of_kind(docs, "Secret") if s["metadata"]["name"] == ref["name"]]
            # Production ships no Secret (it is created out of band).
            env[var["name"]] = secret_values(secrets[0])[ref["key"]] if secrets else f"<secret {ref['key']}>"
        else:
            env[var["name"]] = f"<{var['valueFrom']['fieldRef']['fieldPath']}>"
    return env


def env_names(container: dict[str, Any], docs: Docs) -> set[str]:
    names = {var["name"] for var in container.get("env", [])}
    for source in container.get("envFrom", []):
        names |= set(named(docs, "ConfigMap", source["configMapRef"]["name"])["data"])
    return names


def settings_env_names(settings: type[BaseSettings]) -> set[str]:
    """Every environment variable a settings class reads (pydantic-settings is case-insensitive)."""
    prefix = settings.model_config.get("env_prefix", "")
    names: set[str] = set()
    for field_name, field in settings.model_fields.items():
        alias = field.validation_alias
        if alias is None:
            names.add(f"{prefix}{field_name}".upper())
        elif isinstance(alias, str):
            names.add(alias.upper())
        elif isinstance(alias, AliasChoices):
            names |= {choice.upper() for choice in alias.choices if isinstance(choice, str)}
    return names


def module_of(container: dict[str, Any]) -> str:
    return str(container["args"][0])


def port_number(container: dict[str, Any], port: int | str) -> int:
    if isinstance(port, int):
        return port
    return next(p["containerPort"] for p in container["ports"] if p.get("name") == port)


def matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(key) == value for key, value in selector.items())


def pod_labels(docs: Docs) -> list[dict[str, str]]:
    return [w["spec"]["template"]["metadata"]["labels"] for w in of_kind(docs, "Deployment", "StatefulSet")]
