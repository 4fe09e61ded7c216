"""The optional internal-TLS component: renders onto both overlays, validates, and wires every service.

Every Runwire Deployment mounts the ``runwire-internal-tls`` Secret read-only
and names its files in the ``RUNWIRE_TLS_*`` settings (mutual TLS); the gRPC
services move their kubelet probes to the plaintext health-only port, which
the service is told to serve.
"""

from __future__ import annotations

from typing import Any

import kubernetes_validate
import pytest

from tests.k8s.render import K8S, Docs, Renderer, named, of_kind, pod_spec, with_component
from tests.k8s.workload import (
    GRPC_SERVICES,
    SETTINGS_BY_MODULE,
    container_env,
    env_names,
    module_of,
    port_number,
    runwire_containers,
    settings_env_names,
)

COMPONENT = K8S / "components" / "internal-tls"
SECRET = "runwire-internal-tls"
SECRET_KEYS = {"ca.crt", "tls.crt", "tls.key"}
OVERLAYS = ("dev", "prod")


@pytest.fixture(scope="module")
def with_tls(renderer: Renderer, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Docs]:
    return {
        overlay: renderer.render(
            with_component(tmp_path_factory.mktemp(f"tls-{overlay}"), K8S / "overlays" / overlay, COMPONENT)
        )
        for overlay in OVERLAYS
    }


def _services(docs: Docs) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    return [(w, c) for w, c in runwire_containers(docs) if w["kind"] == "Deployment"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_component_validates_strictly_against_the_kubernetes_schema(
    with_tls: dict[str, Docs], overlay: str
) -> None:
    failures = []
    for doc in with_tls[overlay]:
        try:
            kubernetes_validate.validate(doc, "1.30.0", strict=True)
        except kubernetes_validate.ValidationError as exc:
            failures.append(f"{doc['kind']}/{doc['metadata']['name']}: {exc.message}")
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_service_mounts_the_secret_and_names_its_files_for_mutual_tls(
    with_tls: dict[str, Docs], overlay: str
) -> None:
    docs = with_tls[overlay]
    services = _services(docs)
    assert {module_of(c) for _, c in services} == {*GRPC_SERVICES, "gateway"}
    for workload, container in services:
        name = workload["metadata"]["name"]
        volumes = {v["name"]: v for v in pod_spec(workload)["volumes"]}
        mounts = [
            m
            for m in container["volumeMounts"]
            if volumes[m["name"]].get("secret", {}).get("secretName") == SECRET
        ]
        assert len(mounts) == 1 and mounts[0]["readOnly"] is True, name
        secret = volumes[mounts[0]["name"]]["secret"]
        assert {item["key"] for item in secret["items"]} == SECRET_KEYS
        assert secret["defaultMode"] & 0o077 == 0o040, "readable by the pod's group only (fsGroup)"
        files = {f"{mounts[0]['mountPath']}/{item['path']}" for item in secret["items"]}
        env = container_env(container, docs)
        tls = {env[f"RUNWIRE_TLS_{kind}_FILE"] for kind in ("CA", "CERT", "KEY")}
        assert tls == files, name
        assert env["RUNWIRE_TLS_CLIENT_AUTH"] == "true", name


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_grpc_probes_move_to_the_plaintext_health_port_the_service_serves(
    with_tls: dict[str, Docs], overlay: str
) -> None:
    docs = with_tls[overlay]
    checked = set()
    for _workload, container in _services(docs):
        module = module_of(container)
        if module not in GRPC_SERVICES:
            continue
        prefix = SETTINGS_BY_MODULE[module].model_config["env_prefix"]
        env = container_env(container, docs)
        health = int(env[f"{prefix}HEALTH_PORT"])
        assert health != int(env[f"{prefix}PORT"])
        assert health in {p["containerPort"] for p in container["ports"]}
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert port_number(container, container[probe]["grpc"]["port"]) == health, f"{module} {probe}"
        checked.add(module)
    assert checked == set(GRPC_SERVICES)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_variable_the_component_adds_is_a_real_setting(with_tls: dict[str, Docs], overlay: str) -> None:
    docs = with_tls[overlay]
    unknown = [
        f"{w['metadata']['name']}: {name}"
        for w, c in runwire_containers(docs)
        for name in sorted(env_names(c, docs))
        if name.upper() not in settings_env_names(SETTINGS_BY_MODULE[module_of(c)])
    ]
    assert not unknown, "\n".join(unknown)


def test_the_migration_job_and_the_secret_template_are_left_alone(with_tls: dict[str, Docs]) -> None:
    job = named(with_tls["prod"], "Job", "registry-migrate")
    (container,) = pod_spec(job)["containers"]
    assert not any(var["name"].startswith("RUNWIRE_TLS_") for var in container.get("env", []))
    assert of_kind(with_tls["prod"], "Secret") == []  # the certificate's Secret is created out of band
