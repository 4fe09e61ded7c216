"""The whole system as separate processes, shared by the end-to-end tests.

One cluster per test session (starting four Python processes takes a few
seconds); tests isolate themselves by using fresh user ids.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import asyncpg
import pytest

from runwire_cli.cluster import Cluster, ClusterConfig
from runwire_cli.tokens import mint_token
from runwire_common.ids import new_id

# The tests send far more frames and start far more runs per user than the defaults allow.
E2E_GATEWAY_ENV = {
    "RUNWIRE_GATEWAY_RATE_LIMIT_MESSAGES": "1000",
    "RUNWIRE_GATEWAY_RUN_START_RATE_LIMIT": "1000",
}


class System:
    def __init__(self, cluster: Cluster, jwt_secret: str) -> None:
        self.cluster = cluster
        self.jwt_secret = jwt_secret

    @property
    def url(self) -> str:
        return self.cluster.gateway_urls()[0]

    def token(self, user: str, **kwargs: object) -> str:
        return mint_token(self.jwt_secret, user, **kwargs)  # type: ignore[arg-type]

    def address(self, kind: str) -> str:
        return self.cluster.processes[kind][0].address


@pytest.fixture(scope="session")
def system(tmp_path_factory: pytest.TempPathFactory, attestation_key_spec: str) -> Iterator[System]:
    data_dir: Path = tmp_path_factory.mktemp("runwire-e2e")
    jwt_secret = secrets.token_urlsafe(32)
    cluster = Cluster(
        ClusterConfig(
            data_dir=data_dir,
            attestation_keys=attestation_key_spec,
            jwt_secret=jwt_secret,
            gateway_port=0,
            grace_period_s=5,
            service_env={"gateway": dict(E2E_GATEWAY_ENV)},
        )
    )
    cluster.start()
    try:
        yield System(cluster, jwt_secret)
    finally:
        codes = cluster.stop()
        assert all(code == 0 for code in codes.values()), f"unclean shutdown: {codes}"


Launch = Callable[..., System]


@pytest.fixture
def launch(tmp_path: Path, attestation_key_spec: str) -> Iterator[Launch]:
    """Start a private cluster for one test (for tests that kill or restart services)."""
    started: list[Cluster] = []

    def factory(
        *,
        grace_period_s: float = 5,
        replicas: int = 1,
        redis_url: str | None = None,
        database_url: str | None = None,
        service_env: dict[str, dict[str, str]] | None = None,
        extra_env: dict[str, str] | None = None,
    ) -> System:
        jwt_secret = secrets.token_urlsafe(32)
        env = {"gateway": dict(E2E_GATEWAY_ENV)}
        for kind, values in (service_env or {}).items():
            env.setdefault(kind, {}).update(values)
        cluster = Cluster(
            ClusterConfig(
                data_dir=tmp_path / f"cluster-{len(started)}",
                attestation_keys=attestation_key_spec,
                jwt_secret=jwt_secret,
                gateway_port=0,
                grace_period_s=grace_period_s,
                replicas=replicas,
                redis_url=redis_url,
                database_url=database_url,
                service_env=env,
                extra_env=extra_env or {},
            )
        )
        started.append(cluster)
        cluster.start()
        return System(cluster, jwt_secret)

    yield factory
    for cluster in started:
        cluster.stop()


@pytest.fixture
async def fresh_database(postgres_url: str) -> AsyncIterator[str]:
    """A PostgreSQL database of its own for one test, dropped afterwards."""
    name = f"rw_e2e_{secrets.token_hex(6)}"
    admin_dsn = postgres_url.replace("+asyncpg", "").rsplit("/", 1)[0] + "/postgres"
    admin = await asyncpg.connect(admin_dsn)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        yield postgres_url.rsplit("/", 1)[0] + f"/{name}"
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


@pytest.fixture
def user() -> Callable[[], str]:
    return lambda: new_id("user")
