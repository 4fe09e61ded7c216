"""TLS between the services: the whole system as processes, every internal hop over mutual TLS.

The CA and the certificates are generated for the test. Every gRPC server
serves TLS and asks for a client certificate, and every channel between the
services (gateway → execution, registry and bridge; execution → registry and
bridge; registry → bridge) presents the service's certificate and verifies
the peer's against the CA. A run goes end to end through them; a client that
does not trust the CA, or one that has no certificate of its own, is refused.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.e2e.conftest import Launch, System
from tests.e2e.wsclient import WsClient
from tests.support.certs import Pki, make_pki

pytestmark = pytest.mark.e2e

REGISTRY_SERVICE = "runwire.registry.v1.RegistryService"
GRPC_KINDS = ("registry", "bridge", "execution")


def _tls_env(pki: Pki) -> dict[str, str]:
    return {
        "RUNWIRE_TLS_CERT_FILE": str(pki.server_cert),
        "RUNWIRE_TLS_KEY_FILE": str(pki.server_key),
        "RUNWIRE_TLS_CA_FILE": str(pki.ca),
        "RUNWIRE_TLS_CLIENT_AUTH": "true",
    }


async def _health(channel: grpc.aio.Channel, service: str = "") -> int:
    reply = await health_pb2_grpc.HealthStub(channel).Check(
        health_pb2.HealthCheckRequest(service=service), timeout=5
    )
    return int(reply.status)


async def _refused(channel: grpc.aio.Channel) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await _health(channel)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE


@pytest.fixture
def tls_system(launch: Launch, tmp_path: Path) -> tuple[System, Pki]:
    pki = make_pki(tmp_path / "pki")
    system = launch(extra_env=_tls_env(pki))
    return system, pki


async def test_a_run_goes_end_to_end_over_mutual_tls(
    tls_system: tuple[System, Pki], user: Callable[[], str]
) -> None:
    system, pki = tls_system
    client = await WsClient.open(system.url, system.token(user()))
    try:
        accepted = await client.start_run("assistant", {"message": "what is 6 * 7?"})
        assert accepted["type"] == "run.accepted", accepted
        final = await client.wait_terminal(accepted["run"]["run_id"])
        assert final["type"] == "agent_completed", final
        assert "42" in final["payload"]["final_response"]
    finally:
        await client.close()

    # A client that trusts the CA and presents a certificate it signed gets in.
    credentials = grpc.ssl_channel_credentials(
        root_certificates=pki.ca.read_bytes(),
        private_key=pki.client_key.read_bytes(),
        certificate_chain=pki.client_cert.read_bytes(),
    )
    for kind in GRPC_KINDS:
        async with grpc.aio.secure_channel(system.address(kind), credentials) as channel:
            assert await _health(channel) == health_pb2.HealthCheckResponse.SERVING


async def test_clients_without_the_ca_or_without_a_certificate_are_refused(
    tls_system: tuple[System, Pki], tmp_path: Path
) -> None:
    system, pki = tls_system
    stranger = make_pki(tmp_path / "stranger", ca_name="another CA")
    for kind in GRPC_KINDS:
        address = system.address(kind)
        # Plaintext: the handshake never completes.
        async with grpc.aio.insecure_channel(address) as channel:
            await _refused(channel)
        # TLS that does not trust our CA (its own instead): the server's certificate is rejected.
        untrusting = grpc.ssl_channel_credentials(
            root_certificates=stranger.ca.read_bytes(),
            private_key=pki.client_key.read_bytes(),
            certificate_chain=pki.client_cert.read_bytes(),
        )
        async with grpc.aio.secure_channel(address, untrusting) as channel:
            await _refused(channel)
        # Trusts our CA but has no certificate of its own: mutual TLS refuses it.
        anonymous = grpc.ssl_channel_credentials(root_certificates=pki.ca.read_bytes())
        async with grpc.aio.secure_channel(address, anonymous) as channel:
            await _refused(channel)
        # A certificate from another CA: refused as well.
        foreign = grpc.ssl_channel_credentials(
            root_certificates=pki.ca.read_bytes(),
            private_key=stranger.client_key.read_bytes(),
            certificate_chain=stranger.client_cert.read_bytes(),
        )
        async with grpc.aio.secure_channel(address, foreign) as channel:
            await _refused(channel)
