"""TLS settings and the shared server and channels with TLS, on loopback with a generated CA."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from pydantic import ValidationError

from gateway.settings import GatewaySettings
from runwire_common.attestation import generate_key_spec
from runwire_common.channels import open_channel
from runwire_common.server import GrpcServer
from runwire_common.settings import ServerSettings
from runwire_common.tls import TlsConfig
from tests.support.certs import Pki, make_pki

SERVING = health_pb2.HealthCheckResponse.SERVING


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def _settings(pki: Pki | None = None, **values: Any) -> ServerSettings:
    tls: dict[str, Any] = {}
    if pki is not None:
        tls = {
            "tls_ca_file": str(pki.ca),
            "tls_cert_file": str(pki.server_cert),
            "tls_key_file": str(pki.server_key),
        }
    return ServerSettings(attestation_keys=generate_key_spec("t"), **{**tls, **values})  # type: ignore[arg-type]


def _client(pki: Pki, *, with_certificate: bool = True) -> TlsConfig:
    return TlsConfig(
        ca=pki.ca.read_bytes(),
        cert=pki.client_cert.read_bytes() if with_certificate else None,
        key=pki.client_key.read_bytes() if with_certificate else None,
        client_auth=with_certificate,
    )


async def _check(channel: grpc.aio.Channel) -> int:
    reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    return int(reply.status)


async def _refused(channel: grpc.aio.Channel) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await _check(channel)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE


@pytest.fixture
async def mutual(pki: Pki) -> AsyncIterator[GrpcServer]:
    settings = _settings(pki, tls_client_auth=True, health_port=0)
    server = GrpcServer(settings, [], tls=settings.tls())
    await server.start()
    try:
        yield server
    finally:
        await server.stop_now()


# --- settings ------------------------------------------------------------------------------------


def test_tls_is_off_unless_a_ca_is_configured() -> None:
    assert _settings().tls() is None


def test_tls_settings_are_read_from_the_shared_variables(pki: Pki, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RUNWIRE_TLS_CA_FILE", str(pki.ca))
    monkeypatch.setenv("RUNWIRE_TLS_CERT_FILE", str(pki.server_cert))
    monkeypatch.setenv("RUNWIRE_TLS_KEY_FILE", str(pki.server_key))
    monkeypatch.setenv("RUNWIRE_TLS_CLIENT_AUTH", "true")
    tls = _settings().tls()
    assert tls is not None and tls.client_auth and tls.ca == pki.ca.read_bytes()
    assert "PRIVATE KEY" not in repr(tls)
    gateway = GatewaySettings(
        attestation_keys=generate_key_spec("t"),  # type: ignore[arg-type]
        jwt_secret="a-real-and-long-enough-secret-0123456789",  # type: ignore[arg-type]
        execution_target="e:1",
        registry_target="r:1",
        bridge_target="b:1",
    )
    assert gateway.tls() == tls


@pytest.mark.parametrize(
    ("values", "problem"),
    [
        ({"tls_cert_file": "x"}, "RUNWIRE_TLS_CA_FILE"),
        ({"tls_client_auth": True}, "RUNWIRE_TLS_CA_FILE"),
        ({"tls_ca_file": "CA"}, "needs RUNWIRE_TLS_CERT_FILE"),  # a server must present a certificate
        ({"tls_ca_file": "CA", "tls_cert_file": "CERT"}, "go together"),
        (
            {"tls_ca_file": "/nonexistent/ca.crt", "tls_cert_file": "CERT", "tls_key_file": "KEY"},
            "no such file",
        ),
    ],
)
def test_incomplete_tls_settings_fail_at_start_up(pki: Pki, values: dict[str, Any], problem: str) -> None:
    files = {"CA": str(pki.ca), "CERT": str(pki.server_cert), "KEY": str(pki.server_key)}
    given = {k: files.get(v, v) if isinstance(v, str) else v for k, v in values.items()}
    with pytest.raises(ValidationError, match=problem):
        _settings(**given)


# --- server and channels -----------------------------------------------------------------------


async def test_a_channel_with_the_ca_and_a_certificate_reaches_a_mutual_tls_server(
    mutual: GrpcServer, pki: Pki
) -> None:
    async with open_channel(mutual.address, service_names=(), tls=_client(pki)) as channel:
        assert await _check(channel) == SERVING


async def test_a_mutual_tls_server_refuses_plaintext_strangers_and_clients_without_a_certificate(
    mutual: GrpcServer, pki: Pki, tmp_path: Path
) -> None:
    async with open_channel(mutual.address, service_names=()) as channel:
        await _refused(channel)
    async with open_channel(
        mutual.address, service_names=(), tls=_client(pki, with_certificate=False)
    ) as channel:
        await _refused(channel)
    stranger = make_pki(tmp_path / "stranger", ca_name="another CA")
    async with open_channel(mutual.address, service_names=(), tls=_client(stranger)) as channel:
        await _refused(channel)


async def test_the_health_port_answers_plaintext_and_serves_nothing_else(mutual: GrpcServer) -> None:
    assert mutual.health_port not in (0, mutual.port)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{mutual.health_port}") as channel:
        assert await _check(channel) == SERVING
        call = channel.unary_unary("/runwire.registry.v1.RegistryService/GetRun")
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await call(b"", timeout=5)
        assert refused.value.code() == grpc.StatusCode.UNIMPLEMENTED


async def test_without_client_authentication_a_client_needs_only_the_ca(pki: Pki) -> None:
    settings = _settings(pki)
    server = GrpcServer(settings, [], tls=settings.tls())
    await server.start()
    try:
        anonymous = _client(pki, with_certificate=False)
        async with open_channel(server.address, service_names=(), tls=anonymous) as channel:
            assert await _check(channel) == SERVING
        async with open_channel(server.address, service_names=()) as channel:
            await _refused(channel)
    finally:
        await server.stop_now()


async def test_the_name_expected_in_the_servers_certificate_can_be_set(mutual: GrpcServer, pki: Pki) -> None:
    # The override replaces the target's host in the check: a name the certificate lacks is refused
    # even though the address itself (127.0.0.1) is in it; one it has is accepted.
    wrong = TlsConfig(**{**_client(pki).__dict__, "server_name": "elsewhere.example"})
    right = TlsConfig(**{**_client(pki).__dict__, "server_name": "localhost"})
    async with open_channel(mutual.address, service_names=(), tls=wrong) as channel:
        await _refused(channel)
    async with open_channel(mutual.address, service_names=(), tls=right) as channel:
        assert await _check(channel) == SERVING
