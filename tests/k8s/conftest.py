"""Rendered kustomize targets, shared by the manifest tests.

Rendering needs ``kubectl`` (or ``kustomize``). Without one the rendering tests are
skipped with the reason — except under ``RUNWIRE_REQUIRE_SERVICES=1`` (CI), where a
missing renderer is a failure, like a missing PostgreSQL or Redis.
"""

from __future__ import annotations

import os

import pytest

from tests.k8s.render import K8S, NETWORK_POLICIES, Docs, Renderer, find_renderer, with_component

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


@pytest.fixture(scope="session")
def rendered(renderer: Renderer, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Docs]:
    directories = {
        "base": K8S / "base",
        "base+network-policies": with_component(
            tmp_path_factory.mktemp("combination"), K8S / "base", NETWORK_POLICIES
        ),
        "dev": K8S / "overlays" / "dev",
        "prod": K8S / "overlays" / "prod",
    }
    return {name: renderer.render(directory) for name, directory in directories.items()}


def target_namespace(target: str) -> str:
    return OVERLAY_NAMESPACES.get(target, BASE_NAMESPACE)
