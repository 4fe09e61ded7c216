"""One in-process backend per hostile module: started once, shared by every generated case."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from tests.hostile.harness import Stack, running_stack


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def stack(tmp_path_factory: pytest.TempPathFactory, attestation_key_spec: str) -> AsyncIterator[Stack]:
    async with running_stack(tmp_path_factory.mktemp("hostile"), attestation_key_spec) as running:
        yield running
