"""Render the kustomize targets of ``k8s/`` and read what they produce.

The renderer is ``kubectl kustomize`` (the virtual environment's own ``kubectl`` first,
then ``PATH``) or a standalone ``kustomize build``. Components need kustomize 4 or
newer, which every kubectl since 1.21 embeds.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "k8s"
NETWORK_POLICIES = K8S / "components" / "network-policies"
MIN_KUSTOMIZE_MAJOR = 4

Docs = list[dict[str, Any]]


@dataclass(frozen=True)
class Renderer:
    command: tuple[str, ...]
    description: str

    def render(self, directory: Path) -> list[dict[str, Any]]:
        result = subprocess.run(
            [*self.command, str(directory)], capture_output=True, text=True, timeout=60, check=False
        )
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(self.command)} {directory} failed:\n{result.stderr}")
        return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def _major(version: str) -> int | None:
    match = re.search(r"v?(\d+)\.", version)
    return int(match.group(1)) if match else None


def _kubectl(path: str) -> Renderer | str:
    probe = subprocess.run(
        [path, "version", "--client", "-o", "json"], capture_output=True, text=True, timeout=30, check=False
    )
    try:
        kustomize = json.loads(probe.stdout).get("kustomizeVersion", "")
    except json.JSONDecodeError:
        kustomize = ""
    major = _major(kustomize)
    if major is None or major < MIN_KUSTOMIZE_MAJOR:
        return f"{path} embeds kustomize {kustomize or 'unknown'}; components need kustomize >= 4"
    return Renderer((path, "kustomize"), f"{path} (kustomize {kustomize})")


def find_renderer() -> Renderer | str:
    """A usable renderer, or the reason there is none."""
    reasons: list[str] = []
    candidates = [str(Path(sys.executable).parent / "kubectl"), shutil.which("kubectl")]
    for path in dict.fromkeys(c for c in candidates if c and os.access(c, os.X_OK)):
        found = _kubectl(path)
        if isinstance(found, Renderer):
            return found
        reasons.append(found)
    kustomize = shutil.which("kustomize")
    if kustomize:
        return Renderer((kustomize, "build"), kustomize)
    reasons.append("neither kubectl nor kustomize is on PATH or in the virtual environment")
    return "; ".join(reasons)


def with_component(directory: Path, resources: Path, component: Path) -> Path:
    """``directory`` holding a kustomization of ``resources`` plus one optional ``component``.

    kustomize refuses absolute paths to bases and components: both are referred to relatively.
    """
    base = os.path.relpath(resources, directory)
    extra = os.path.relpath(component, directory)
    (directory / "kustomization.yaml").write_text(
        "apiVersion: kustomize.config.k8s.io/v1beta1\n"
        "kind: Kustomization\n"
        f"resources: [{base}]\n"
        f"components: [{extra}]\n"
    )
    return directory


def of_kind(docs: list[dict[str, Any]], *kinds: str) -> list[dict[str, Any]]:
    return [doc for doc in docs if doc["kind"] in kinds]


def named(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    for doc in of_kind(docs, kind):
        if doc["metadata"]["name"] == name:
            return doc
    raise KeyError(f"no {kind} named {name}")


def workloads(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return of_kind(docs, "Deployment", "StatefulSet", "Job")


def pod_spec(workload: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = workload["spec"]["template"]["spec"]
    return spec


def containers(workload: dict[str, Any]) -> Iterator[dict[str, Any]]:
    spec = pod_spec(workload)
    yield from spec.get("initContainers", [])
    yield from spec["containers"]


def namespace_of(docs: list[dict[str, Any]], default: str) -> str:
    namespaces = {doc["metadata"].get("namespace") for doc in docs if doc["kind"] != "Namespace"}
    namespaces.discard(None)
    assert len(namespaces) <= 1, f"resources span several namespaces: {namespaces}"
    return namespaces.pop() if namespaces else default
