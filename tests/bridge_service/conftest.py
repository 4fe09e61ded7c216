from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.bridge_service.harness import Bridge, open_bridge, settings_for


@pytest.fixture
async def bridge(attestation_key_spec: str) -> AsyncIterator[Bridge]:
    async with open_bridge(settings_for(attestation_key_spec)) as running:
        yield running
