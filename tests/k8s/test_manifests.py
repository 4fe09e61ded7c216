"""The kustomize targets render, validate strictly offline, and follow the deployment rules."""

from __future__ import annotations

import copy
import importlib.util
import re

import kubernetes_validate
import pytest
from kubernetes_validate.utils import latest_version

from tests.k8s.conftest import TARGETS, Docs
from tests.k8s.render import containers, of_kind, pod_spec, workloads
from tests.k8s.workload import (
    GRPC_SERVICES,
    SETTINGS_BY_MODULE,
    container_env,
    is_runwire_image,
    matches,
    module_of,
    pod_labels,
    port_number,
    runwire_containers,
)

# The oldest Kubernetes the manifests support (native gRPC probes: 1.27; preStop `sleep`:
# 1.30) and the newest one kubernetes-validate ships schemas for.
KUBERNETES_VERSIONS = ("1.30.0", latest_version())

# --- rendering and schema validation -------------------------------------------------------


@pytest.mark.parametrize("target", TARGETS)
def test_every_target_renders_to_resources(rendered: dict[str, Docs], target: str) -> None:
    kinds = {doc["kind"] for doc in rendered[target]}
    assert {"Deployment", "Service", "ConfigMap", "Job"} <= kinds


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("target", TARGETS)
def test_every_resource_validates_strictly_against_the_kubernetes_schema(
    rendered: dict[str, Docs], target: str, version: str
) -> None:
    failures = []
    for doc in rendered[target]:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            path = ".".join(str(part) for part in exc.path)
            failures.append(f"{doc['kind']}/{doc['metadata']['name']}: {path}: {exc.message}")
        except kubernetes_validate.SchemaNotFoundError as exc:
            failures.append(exc.message)
    assert not failures, "\n".join(failures)


def test_strict_validation_rejects_a_field_kubernetes_does_not_know(rendered: dict[str, Docs]) -> None:
    deployment = copy.deepcopy(of_kind(rendered["base"], "Deployment")[0])
    deployment["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["grpcPort"] = 50051
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSIONS[0], strict=True)


# --- workloads ----------------------------------------------------------------------------


@pytest.mark.parametrize("target", TARGETS)
def test_every_workload_runs_hardened_as_non_root(rendered: dict[str, Docs], target: str) -> None:
    failures = []
    for workload in workloads(rendered[target]):
        name = f"{workload['kind']}/{workload['metadata']['name']}"
        spec = pod_spec(workload)
        pod = spec.get("securityContext", {})
        if spec.get("automountServiceAccountToken") is not False:
            failures.append(f"{name}: automountServiceAccountToken is not false")
        if (
            pod.get("runAsNonRoot") is not True
            or pod.get("seccompProfile", {}).get("type") != "RuntimeDefault"
        ):
            failures.append(f"{name}: pod securityContext is not runAsNonRoot + RuntimeDefault seccomp")
        for container in containers(workload):
            ctx = container.get("securityContext", {})
            expected = {
                "runAsNonRoot": True,
                "readOnlyRootFilesystem": True,
                "allowPrivilegeEscalation": False,
            }
            for key, value in expected.items():
                if ctx.get(key) is not value:
                    failures.append(f"{name}/{container['name']}: {key} is not {value}")
            if ctx.get("capabilities", {}).get("drop") != ["ALL"]:
                failures.append(f"{name}/{container['name']}: capabilities do not drop ALL")
            if ctx.get("runAsUser", pod.get("runAsUser", 0)) == 0:
                failures.append(f"{name}/{container['name']}: runs as uid 0")
            if is_runwire_image(container["image"]) and ctx.get("runAsUser") != 10001:
                failures.append(f"{name}/{container['name']}: the Runwire image runs as uid 10001")
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("target", TARGETS)
def test_every_container_has_resource_requests_and_limits(rendered: dict[str, Docs], target: str) -> None:
    failures = [
        f"{w['metadata']['name']}/{c['name']}: {kind}.{resource} missing"
        for w in workloads(rendered[target])
        for c in containers(w)
        for kind in ("requests", "limits")
        for resource in ("cpu", "memory")
        if resource not in c.get("resources", {}).get(kind, {})
    ]
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("target", TARGETS)
def test_every_long_running_container_has_readiness_and_liveness_probes(
    rendered: dict[str, Docs], target: str
) -> None:
    failures = [
        f"{w['metadata']['name']}/{c['name']}: no {probe}"
        for w in of_kind(rendered[target], "Deployment", "StatefulSet")
        for c in w["spec"]["template"]["spec"]["containers"]
        for probe in ("readinessProbe", "livenessProbe")
        if probe not in c
    ]
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("target", TARGETS)
def test_grpc_services_are_probed_natively_on_their_configured_port(
    rendered: dict[str, Docs], target: str
) -> None:
    docs = rendered[target]
    checked = set()
    for _workload, container in runwire_containers(docs):
        module = module_of(container)
        if module not in GRPC_SERVICES:
            continue
        prefix = SETTINGS_BY_MODULE[module].model_config["env_prefix"]
        port = int(container_env(container, docs)[f"{prefix}PORT"])
        assert container_env(container, docs)[f"{prefix}HOST"] == "0.0.0.0"
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert container[probe]["grpc"]["port"] == port, f"{module} {probe}"
        checked.add(module)
    assert checked == set(GRPC_SERVICES)


@pytest.mark.parametrize("target", TARGETS)
def test_bridge_readiness_follows_delivery_and_liveness_only_the_process(
    rendered: dict[str, Docs], target: str
) -> None:
    docs = rendered[target]
    (container,) = [c for _, c in runwire_containers(docs) if module_of(c) == "bridge_service"]
    # The delivery canary turns the service name NOT_SERVING, never the process's "".
    assert container["readinessProbe"]["grpc"]["service"] == "runwire.bridge.v1.BridgeService"
    assert container["livenessProbe"]["grpc"].get("service", "") == ""


@pytest.mark.parametrize("target", TARGETS)
def test_the_gateway_is_probed_on_healthz_of_its_websocket_port(
    rendered: dict[str, Docs], target: str
) -> None:
    docs = rendered[target]
    (container,) = [c for _, c in runwire_containers(docs) if module_of(c) == "gateway"]
    env = container_env(container, docs)
    assert env["RUNWIRE_GATEWAY_WS_HOST"] == "0.0.0.0"
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        http = container[probe]["httpGet"]
        assert http["path"] == "/healthz"
        assert port_number(container, http["port"]) == int(env["RUNWIRE_GATEWAY_WS_PORT"])


@pytest.mark.parametrize("target", TARGETS)
def test_pods_get_more_time_to_terminate_than_they_drain(rendered: dict[str, Docs], target: str) -> None:
    docs = rendered[target]
    for workload, container in runwire_containers(docs):
        if workload["kind"] != "Deployment":
            continue
        prefix = SETTINGS_BY_MODULE[module_of(container)].model_config["env_prefix"]
        grace = float(container_env(container, docs)[f"{prefix}GRACE_PERIOD_S"])
        pre_stop = container.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
        termination = pod_spec(workload)["terminationGracePeriodSeconds"]
        assert termination > pre_stop + grace, workload["metadata"]["name"]
        # A draining pod reports NOT_SERVING / 503: liveness must not restart it meanwhile.
        liveness = container["livenessProbe"]
        assert liveness["periodSeconds"] * liveness["failureThreshold"] > grace


@pytest.mark.parametrize("target", TARGETS)
def test_runwire_containers_write_only_to_a_tmp_empty_dir(rendered: dict[str, Docs], target: str) -> None:
    for workload, container in runwire_containers(rendered[target]):
        volumes = {v["name"]: v for v in pod_spec(workload).get("volumes", [])}
        mounts = {m["mountPath"]: m["name"] for m in container.get("volumeMounts", [])}
        assert set(mounts) == {"/tmp"}, workload["metadata"]["name"]
        assert "emptyDir" in volumes[mounts["/tmp"]]


@pytest.mark.parametrize("target", TARGETS)
def test_every_runwire_container_runs_a_real_module_of_the_image(
    rendered: dict[str, Docs], target: str
) -> None:
    modules = {module_of(c) for _, c in runwire_containers(rendered[target])}
    assert modules == set(SETTINGS_BY_MODULE)
    for module in modules:
        spec = importlib.util.find_spec(module)
        assert spec is not None, module
        if spec.submodule_search_locations is not None:  # a package runs its __main__
            assert importlib.util.find_spec(f"{module}.__main__") is not None, module


@pytest.mark.parametrize("target", ["base", "prod"])
def test_every_service_runs_several_spread_replicas(rendered: dict[str, Docs], target: str) -> None:
    for deployment in of_kind(rendered[target], "Deployment"):
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert deployment["spec"]["replicas"] >= 2
        spread = pod_spec(deployment)["topologySpreadConstraints"]
        assert {c["topologyKey"] for c in spread} >= {"kubernetes.io/hostname", "topology.kubernetes.io/zone"}
        assert all(matches(c["labelSelector"]["matchLabels"], labels) for c in spread)


def test_dev_runs_one_replica_of_each_service(rendered: dict[str, Docs]) -> None:
    assert {d["metadata"]["name"]: d["spec"]["replicas"] for d in of_kind(rendered["dev"], "Deployment")} == {
        "registry": 1,
        "bridge": 1,
        "execution": 1,
        "gateway": 1,
        "redis": 1,
    }


def test_the_migration_job_upgrades_the_schema_and_cleans_up(rendered: dict[str, Docs]) -> None:
    (job,) = of_kind(rendered["base"], "Job")
    spec = job["spec"]
    assert spec["template"]["spec"]["restartPolicy"] == "OnFailure"
    assert spec["backoffLimit"] >= 1
    assert spec["ttlSecondsAfterFinished"] > 0
    (container,) = spec["template"]["spec"]["containers"]
    assert container["args"] == ["registry_service.migrate", "upgrade"]
    assert {var["name"] for var in container["env"]} == {"RUNWIRE_REGISTRY_DATABASE_URL"}


def test_registry_replicas_leave_migrations_to_the_job(rendered: dict[str, Docs]) -> None:
    docs = rendered["prod"]
    (container,) = [c for _, c in runwire_containers(docs) if module_of(c) == "registry_service"]
    assert container_env(container, docs)["RUNWIRE_REGISTRY_MIGRATE_ON_START"] == "false"


def test_the_executor_id_is_the_pod_name(rendered: dict[str, Docs]) -> None:
    (container,) = [c for _, c in runwire_containers(rendered["prod"]) if module_of(c) == "execution_service"]
    (var,) = [v for v in container["env"] if v["name"] == "RUNWIRE_EXECUTION_EXECUTOR_ID"]
    assert var["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"


def test_production_pins_the_image_by_digest(rendered: dict[str, Docs]) -> None:
    images = {c["image"] for _, c in runwire_containers(rendered["prod"])}
    assert len(images) == 1
    assert re.fullmatch(r"[a-z0-9.-]+(/[a-z0-9._-]+)+@sha256:[0-9a-f]{64}", images.pop())


# --- services, disruption budgets, autoscalers ----------------------------------------------


@pytest.mark.parametrize("target", TARGETS)
def test_every_selector_matches_the_pods_of_a_workload(rendered: dict[str, Docs], target: str) -> None:
    docs = rendered[target]
    pods = pod_labels(docs)
    for workload in of_kind(docs, "Deployment", "StatefulSet"):
        labels = workload["spec"]["template"]["metadata"]["labels"]
        assert matches(workload["spec"]["selector"]["matchLabels"], labels)
    for service in of_kind(docs, "Service"):
        assert any(matches(service["spec"]["selector"], labels) for labels in pods), service["metadata"]
    for pdb in of_kind(docs, "PodDisruptionBudget"):
        selector = pdb["spec"]["selector"]["matchLabels"]
        assert any(matches(selector, labels) for labels in pods), pdb["metadata"]
    deployments = {d["metadata"]["name"] for d in of_kind(docs, "Deployment")}
    for hpa in of_kind(docs, "HorizontalPodAutoscaler"):
        assert hpa["spec"]["scaleTargetRef"]["kind"] == "Deployment"
        assert hpa["spec"]["scaleTargetRef"]["name"] in deployments


@pytest.mark.parametrize("target", TARGETS)
def test_service_ports_point_at_named_container_ports(rendered: dict[str, Docs], target: str) -> None:
    docs = rendered[target]
    for service in of_kind(docs, "Service"):
        (workload,) = [
            w
            for w in of_kind(docs, "Deployment", "StatefulSet")
            if matches(service["spec"]["selector"], w["spec"]["template"]["metadata"]["labels"])
        ]
        names = {p["name"]: p["containerPort"] for c in containers(workload) for p in c.get("ports", [])}
        for port in service["spec"]["ports"]:
            assert names[port["targetPort"]] == port["port"], service["metadata"]["name"]


@pytest.mark.parametrize("target", TARGETS)
def test_grpc_services_are_headless_and_the_gateway_is_not(rendered: dict[str, Docs], target: str) -> None:
    services = {s["metadata"]["name"]: s["spec"] for s in of_kind(rendered[target], "Service")}
    for name in ("registry", "bridge", "execution"):
        assert services[name]["clusterIP"] == "None"
    assert services["gateway"].get("clusterIP") != "None"


@pytest.mark.parametrize("target", TARGETS)
def test_every_deployment_has_a_disruption_budget_and_a_cpu_autoscaler(
    rendered: dict[str, Docs], target: str
) -> None:
    docs = rendered[target]
    pdbs = {p["metadata"]["name"]: p["spec"] for p in of_kind(docs, "PodDisruptionBudget")}
    hpas = {h["spec"]["scaleTargetRef"]["name"]: h["spec"] for h in of_kind(docs, "HorizontalPodAutoscaler")}
    for deployment in of_kind(docs, "Deployment"):
        name = deployment["metadata"]["name"]
        if not any(is_runwire_image(c["image"]) for c in containers(deployment)):
            continue
        replicas = deployment["spec"]["replicas"]
        assert hpas[name]["minReplicas"] == replicas
        assert hpas[name]["maxReplicas"] > replicas
        assert [m["resource"]["name"] for m in hpas[name]["metrics"]] == ["cpu"]
        # The budget never blocks a node drain: at least one pod may always be evicted.
        budget = pdbs[name]
        assert budget.get("minAvailable", 0) < replicas or budget.get("maxUnavailable", 0) >= 1
        if replicas > 1:
            assert budget["minAvailable"] == 1
