"""Rendered kustomize targets, shared by the manifest tests.

Rendering needs ``kubectl`` (or ``kustomize``). Without one the rendering tests are
skipped with the reason — except under ``RUNWIRE_REQUIRE_SERVICES=1`` (CI), where a
missing renderer is a failure, like a missing PostgreSQL or Redis.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.k8s.render import K8S, NETWORK_POLICIES, Docs, Renderer, find_renderer

# Every combination the repository offers: the base alone, the base with the optional
# NetworkPolicy component, and the two overlays (which both include the component).
TARGETS = ("base", "base+network-policies", "dev", "prod")
OVERLAY_NAMESPACES = {"dev": "runwire-dev", "prod": "runwire"}
# The base has no namespace; its service targets name the production one.
BASE_NAMESPACE = "runwire"


@pytest.fixture(scope="session")
def renderer() -> Renderer:
    found = find_renderer()
    if isinstance(found, Renderer):
        return found
    reason = f"cannot render k8s/: {found}"
    if os.environ.get("RUNWIRE_REQUIRE_SERVICES") == "1":
        pytest.fail(f"{reason}, and RUNWIRE_REQUIRE_SERVICES=1 forbids skipping")
    pytest.skip(reason)


def _combination(directory: Path) -> Path:
    # kustomize refuses absolute paths to bases and components: refer to them relatively.
    base = os.path.relpath(K8S / "base", directory)
    component = os.path.relpath(NETWORK_POLICIES, directory)
    (directory / "kustomization.yaml").write_text(
        "apiVersion: kustomize.config.k8s.io/v1beta1\n"
        "kind: Kustomization\n"
        f"resources: [{base}]\n"
        f"components: [{component}]\n"
    )
    return directory


@pytest.fixture(scope="session")
def rendered(renderer: Renderer, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Docs]:
    directories = {
        "base": K8S / "base",
        "base+network-policies": _combination(tmp_path_factory.mktemp("combination")),
        "dev": K8S / "overlays" / "dev",
        "prod": K8S / "overlays" / "prod",
    }
    return {name: renderer.render(directory) for name, directory in directories.items()}


def target_namespace(target: str) -> str:
    return OVERLAY_NAMESPACES.get(target, BASE_NAMESPACE)
