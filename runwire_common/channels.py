"""Outbound gRPC channels: created once per process per peer, passed down.

Targets may be ``host:port`` or ``dns:///name:port``; the service config turns
on round-robin balancing over every resolved address and retries calls that
fail with ``UNAVAILABLE`` (the peer was draining or restarting). With the
process's :class:`~runwire_common.tls.TlsConfig` the channel speaks TLS,
verifies the peer against the configured CA and, for mutual TLS, presents the
process's own certificate.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import grpc

from runwire_common.tls import TlsConfig


def service_config(service_names: tuple[str, ...]) -> str:
    return json.dumps(
        {
            "loadBalancingConfig": [{"round_robin": {}}],
            "methodConfig": [
                {
                    "name": [{"service": name} for name in service_names],
                    "retryPolicy": {
                        "maxAttempts": 4,
                        "initialBackoff": "0.1s",
                        "maxBackoff": "1s",
                        "backoffMultiplier": 2,
                        "retryableStatusCodes": ["UNAVAILABLE"],
                    },
                }
            ],
        }
    )


def open_channel(
    target: str,
    *,
    service_names: tuple[str, ...],
    max_message_bytes: int = 4 * 1024 * 1024,
    keepalive_time_s: float = 30.0,
    interceptors: Sequence[grpc.aio.ClientInterceptor] = (),
    retries: bool = True,
    tls: TlsConfig | None = None,
) -> grpc.aio.Channel:
    """A channel to another service: TLS when ``tls`` is given (:mod:`runwire_common.tls`), else plaintext.

    ``retries=False`` is for a channel that carries a long-lived stream whose
    owner recovers by itself (the event fabric): gRPC's transparent retries
    would hold a stream that broke before its first response and replay its
    buffered requests later, after the owner has already moved on.
    """
    options: list[tuple[str, str | int]] = [
        ("grpc.enable_retries", 1 if retries else 0),
        ("grpc.keepalive_time_ms", int(keepalive_time_s * 1000)),
        ("grpc.keepalive_timeout_ms", 10_000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
    ]
    if retries:
        options.append(("grpc.service_config", service_config(service_names)))
    if tls is not None:
        options += tls.channel_options()
        return grpc.aio.secure_channel(
            target, tls.channel_credentials(), options=options, interceptors=list(interceptors) or None
        )
    return grpc.aio.insecure_channel(target, options=options, interceptors=list(interceptors) or None)
