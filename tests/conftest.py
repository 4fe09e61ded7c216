"""Fixtures shared by the whole suite.

External servers: tests that need PostgreSQL or Redis ask for the
``postgres_url`` / ``redis_url`` fixtures. Where the server is unreachable the
test is skipped with the reason, except when ``RUNWIRE_REQUIRE_SERVICES=1``
(set by ``.ci/run``), where the same situation is a failure. Tests that need
another tool (Node for the Node example) call :func:`skip_unless_required`.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from typing import Any, NoReturn
from urllib.parse import urlparse

import pytest
from hypothesis import settings

from runwire.common.v1 import context_pb2
from runwire_common.attestation import ContextAttestor, generate_key_spec
from runwire_common.ids import new_id

# Property-based suites: a quick profile for development, 2,000 cases per target in CI.
settings.register_profile("dev", max_examples=200, deadline=None)
settings.register_profile("ci", max_examples=2000, deadline=None, print_blob=True)
settings.load_profile("ci" if os.environ.get("CI") else os.environ.get("HYPOTHESIS_PROFILE", "dev"))

DEFAULT_POSTGRES_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"


def _reachable(url: str, default_port: int) -> bool:
    parsed = urlparse(url)
    try:
        with socket.create_connection(
            (parsed.hostname or "127.0.0.1", parsed.port or default_port), timeout=1
        ):
            return True
    except OSError:
        return False


def skip_unless_required(reason: str) -> NoReturn:
    """Skip the test for ``reason``; fail instead under ``RUNWIRE_REQUIRE_SERVICES=1`` (CI)."""
    if os.environ.get("RUNWIRE_REQUIRE_SERVICES") == "1":
        pytest.fail(f"{reason}, and RUNWIRE_REQUIRE_SERVICES=1 forbids skipping")
    pytest.skip(reason)


def _need_service(name: str, url: str, default_port: int) -> str:
    if _reachable(url, default_port):
        return url
    skip_unless_required(f"{name} is not reachable at {url}")


@pytest.fixture(scope="session")
def postgres_url() -> str:
    return _need_service(
        "PostgreSQL", os.environ.get("RUNWIRE_TEST_POSTGRES_URL", DEFAULT_POSTGRES_URL), 5432
    )


@pytest.fixture(scope="session")
def redis_url() -> str:
    return _need_service("Redis", os.environ.get("RUNWIRE_TEST_REDIS_URL", DEFAULT_REDIS_URL), 6379)


@pytest.fixture(scope="session")
def attestation_key_spec() -> str:
    return generate_key_spec("test")


@pytest.fixture(scope="session")
def attestor(attestation_key_spec: str) -> ContextAttestor:
    return ContextAttestor.from_spec(attestation_key_spec)


ContextFactory = Callable[..., context_pb2.UserContext]


@pytest.fixture
def make_context(attestor: ContextAttestor) -> ContextFactory:
    """Build an attested ``UserContext``: ``make_context("alice", thread_id=...)``."""

    def factory(user: str | None = None, *, ttl_s: float = 600, **fields: Any) -> context_pb2.UserContext:
        ctx = context_pb2.UserContext(
            user_id=user or new_id("user"),
            request_id=fields.pop("request_id", new_id("req")),
            **fields,
        )
        return attestor.mint(ctx, ttl_s=ttl_s)

    return factory
