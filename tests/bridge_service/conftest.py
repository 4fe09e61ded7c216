"""Bridge fixtures: every ``bridge`` / ``make_settings`` test runs on both backends.

The Redis runs use the server behind the ``redis_url`` fixture (skipped, or a
failure under ``RUNWIRE_REQUIRE_SERVICES=1``, when it is unreachable), a key
prefix of their own, and delete their keys afterwards.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from bridge_service.settings import BridgeSettings
from runwire_common.ids import new_id
from tests.bridge_service.harness import (
    BACKENDS,
    Bridge,
    SettingsFactory,
    delete_keys,
    open_bridge,
    settings_for,
)


@pytest.fixture
async def redis_prefix(redis_url: str) -> AsyncIterator[str]:
    prefix = f"rwtest-{new_id('p')}"
    yield prefix
    await delete_keys(redis_url, prefix)


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def make_settings(request: pytest.FixtureRequest, backend: str, attestation_key_spec: str) -> SettingsFactory:
    """``make_settings(log_capacity=5)``: bridge settings for this test's backend."""
    extra: dict[str, Any] = {}
    if backend == "redis":
        extra = {
            "backend": "redis",
            "redis_url": request.getfixturevalue("redis_url"),
            "redis_key_prefix": request.getfixturevalue("redis_prefix"),
        }

    def factory(**overrides: Any) -> BridgeSettings:
        return settings_for(attestation_key_spec, **{**extra, **overrides})

    return factory


@pytest.fixture
async def bridge(make_settings: SettingsFactory) -> AsyncIterator[Bridge]:
    async with open_bridge(make_settings()) as running:
        yield running
