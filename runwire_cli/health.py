"""Ask one service process whether it is serving.

The gRPC services answer the standard ``grpc.health.v1`` check for their own
service name; the gateway speaks HTTP and WebSocket only, so it is asked
``GET /healthz`` (200 while serving, 503 once it drains). Used by the launcher
to confirm start-up and by ``runwire status``.
"""

from __future__ import annotations

import http.client
from collections.abc import Mapping
from types import MappingProxyType
from typing import Literal

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from runwire_common.tls import TlsConfig

Health = Literal["SERVING", "NOT_SERVING", "down"]

GRPC_SERVICE_NAMES: Mapping[str, str] = MappingProxyType(
    {
        "registry": "runwire.registry.v1.RegistryService",
        "bridge": "runwire.bridge.v1.BridgeService",
        "execution": "runwire.execution.v1.ExecutionService",
    }
)
GATEWAY_HEALTH_PATH = "/healthz"
NO_ANSWER = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})


def probe(kind: str, address: str, *, timeout_s: float = 2.0, tls: TlsConfig | None = None) -> Health:
    """``SERVING``, ``NOT_SERVING`` (it answers but does not serve), or ``down`` (no answer).

    ``tls``: the gRPC services serve TLS (:mod:`runwire_common.tls`); the probe uses it too.
    """
    if kind == "gateway":
        return _probe_http(address, timeout_s)
    return _probe_grpc(GRPC_SERVICE_NAMES[kind], address, timeout_s, tls)


def _probe_http(address: str, timeout_s: float) -> Health:
    host, _, port = address.rpartition(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout_s)
    try:
        conn.request("GET", GATEWAY_HEALTH_PATH)
        return "SERVING" if conn.getresponse().status == 200 else "NOT_SERVING"
    except OSError:
        return "down"
    finally:
        conn.close()


def _channel(address: str, tls: TlsConfig | None) -> grpc.Channel:
    if tls is None:
        return grpc.insecure_channel(address)
    return grpc.secure_channel(address, tls.channel_credentials(), options=tls.channel_options())


def _probe_grpc(service: str, address: str, timeout_s: float, tls: TlsConfig | None) -> Health:
    with _channel(address, tls) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout_s)
        except grpc.RpcError as exc:
            # No answer (a closed port, a hung process) is UNAVAILABLE or DEADLINE_EXCEEDED;
            # any other status comes from a live server that does not serve this name.
            # (The synchronous RpcError is also a grpc.Call, but its stubs do not say so.)
            code = getattr(exc, "code", lambda: None)()
            return "down" if code in NO_ANSWER else "NOT_SERVING"
    return "SERVING" if reply.status == health_pb2.HealthCheckResponse.SERVING else "NOT_SERVING"
