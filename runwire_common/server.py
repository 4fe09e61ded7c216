"""The ``grpc.aio`` server lifecycle shared by every service.

``GrpcServer`` builds the server with keepalive and ``max_connection_age`` (so
long streams rebalance across replicas), the standard health service and,
optionally, reflection; with a :class:`~runwire_common.tls.TlsConfig` it
serves TLS (mutual when configured), and ``health_port`` adds a plaintext
port that serves only the health service, for probes that cannot speak TLS.
``run_until_terminated`` serves until SIGTERM/SIGINT,
then drains: health turns ``NOT_SERVING``, the ``draining`` event is set so
servicers can refuse new work, the service's own drain hook runs, and the
server stops accepting and waits for in-flight calls within the grace period.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from runwire_common.settings import ServerSettings
from runwire_common.tls import TlsConfig

log = logging.getLogger("runwire.server")


HEALTH_SERVICE_PREFIX = "/grpc.health.v1.Health/"
Req = TypeVar("Req")
Resp = TypeVar("Resp")


class DrainGate(grpc.aio.ServerInterceptor):
    """Refuses new calls with ``UNAVAILABLE`` once draining has started.

    Calls already running are not affected: they finish within the grace
    period. Health checks stay open so probes can watch ``NOT_SERVING``. A
    client with the retry policy of :mod:`runwire_common.channels` sends the
    refused call to another replica.
    """

    def __init__(self, draining: asyncio.Event) -> None:
        self._draining = draining

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Req, Resp] | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Req, Resp] | None:
        handler = await continuation(handler_call_details)
        method = str(getattr(handler_call_details, "method", ""))
        if handler is None or not self._draining.is_set() or method.startswith(HEALTH_SERVICE_PREFIX):
            return handler
        return _refusal(handler)


async def _refuse(request: object, context: grpc.aio.ServicerContext[Any, Any]) -> None:
    await context.abort(grpc.StatusCode.UNAVAILABLE, "service is draining; retry on another replica")


async def _refuse_stream(request: object, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
    await _refuse(request, context)
    yield None  # pragma: no cover - abort raises


def _refusal(handler: grpc.RpcMethodHandler[Req, Resp]) -> grpc.RpcMethodHandler[Req, Resp]:
    """A handler of the same shape as ``handler`` that answers UNAVAILABLE at once.

    The shape matters: a client-streaming refusal registered as unary would
    wait for the client's first message before answering.
    """
    behaviour = _refuse_stream if handler.response_streaming else _refuse
    if handler.request_streaming:
        make = (
            grpc.stream_stream_rpc_method_handler
            if handler.response_streaming
            else grpc.stream_unary_rpc_method_handler
        )
    else:
        make = (
            grpc.unary_stream_rpc_method_handler
            if handler.response_streaming
            else grpc.unary_unary_rpc_method_handler
        )
    return make(
        behaviour,
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )


@dataclass(frozen=True)
class ServiceBinding:
    """One gRPC service to host: its full name and how to add it to a server."""

    name: str
    register: Callable[[grpc.aio.Server], None]


class GrpcServer:
    """A started-on-demand ``grpc.aio`` server with health and graceful drain."""

    def __init__(
        self,
        settings: ServerSettings,
        bindings: Sequence[ServiceBinding],
        *,
        interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
        tls: TlsConfig | None = None,
    ) -> None:
        self._settings = settings
        self._bindings = tuple(bindings)
        self._tls = tls
        self.health_port = 0
        self.draining = asyncio.Event()
        self.health = health.aio.HealthServicer()
        self.port = 0
        ms = 1000
        self._server = grpc.aio.server(
            interceptors=[DrainGate(self.draining), *interceptors],
            options=[
                ("grpc.keepalive_time_ms", int(settings.keepalive_time_s * ms)),
                ("grpc.keepalive_timeout_ms", int(settings.keepalive_timeout_s * ms)),
                ("grpc.keepalive_permit_without_calls", 1),
                ("grpc.http2.min_ping_interval_without_data_ms", 5 * ms),
                ("grpc.http2.max_ping_strikes", 0),
                ("grpc.max_connection_age_ms", int(settings.max_connection_age_s * ms)),
                ("grpc.max_connection_age_grace_ms", int(settings.max_connection_age_grace_s * ms)),
                ("grpc.max_receive_message_length", settings.max_message_bytes),
                ("grpc.max_send_message_length", settings.max_message_bytes),
                ("grpc.so_reuseport", 0),
            ],
        )
        # Health only, plaintext: the kubelet's gRPC probe cannot speak TLS.
        self._health_server = (
            grpc.aio.server(options=[("grpc.so_reuseport", 0)]) if settings.health_port is not None else None
        )

    @property
    def address(self) -> str:
        return f"{self._settings.host}:{self.port}"

    async def start(self) -> int:
        """Bind, start, report SERVING; return the bound port."""
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self._server)
        for binding in self._bindings:
            binding.register(self._server)
        if self._settings.reflection:
            names = [b.name for b in self._bindings]
            names += [health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME]
            reflection.enable_server_reflection(names, self._server)
        address = f"{self._settings.host}:{self._settings.port}"
        if self._tls is not None:
            self.port = self._server.add_secure_port(address, self._tls.server_credentials())
        else:
            self.port = self._server.add_insecure_port(address)
        if self.port == 0:
            raise RuntimeError(f"could not bind {address}")
        if self._health_server is not None:
            health_pb2_grpc.add_HealthServicer_to_server(self.health, self._health_server)
            health_address = f"{self._settings.host}:{self._settings.health_port}"
            self.health_port = self._health_server.add_insecure_port(health_address)
            if self.health_port == 0:
                raise RuntimeError(f"could not bind {health_address}")
            await self._health_server.start()
        await self._server.start()
        serving = health_pb2.HealthCheckResponse.SERVING
        await self.health.set("", serving)
        for binding in self._bindings:
            await self.health.set(binding.name, serving)
        if self._settings.ready_file:
            _write_atomically(
                Path(self._settings.ready_file), json.dumps({"port": self.port, "pid": os.getpid()})
            )
        log.info(
            "serving",
            extra={
                "address": self.address,
                "services": [b.name for b in self._bindings],
                "tls": "off" if self._tls is None else "mutual" if self._tls.client_auth else "on",
                "health_port": self.health_port or None,
            },
        )
        return self.port

    async def drain(self, on_drain: Callable[[], Awaitable[None]] | None = None) -> None:
        """Refuse new work, let in-flight calls finish within the grace period, stop."""
        if self.draining.is_set():
            return
        self.draining.set()
        log.info("draining", extra={"grace_period_s": self._settings.grace_period_s})
        await self.health.enter_graceful_shutdown()
        grace = self._settings.grace_period_s
        if on_drain is not None:
            try:
                await asyncio.wait_for(on_drain(), timeout=grace)
            except TimeoutError:
                log.warning("drain hook did not finish within the grace period")
        await self._server.stop(grace)
        if self._health_server is not None:
            await self._health_server.stop(None)
        log.info("stopped")

    async def stop_now(self) -> None:
        self.draining.set()
        await self._server.stop(None)
        if self._health_server is not None:
            await self._health_server.stop(None)


async def wait_for_termination() -> None:
    """Return once SIGTERM or SIGINT arrives.

    The handlers stay installed afterwards: a repeated signal during the drain
    is logged and ignored instead of killing the process half-way through
    (whoever must stop a stuck drain escalates to SIGKILL).
    """
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()

    def on_signal() -> None:
        if stop.is_set():
            log.info("already draining; signal ignored")
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal)
    await stop.wait()


async def run_until_terminated(
    server: GrpcServer,
    *,
    on_drain: Callable[[], Awaitable[None]] | None = None,
) -> None:
    """Start ``server``, serve until a termination signal, then drain it."""
    await server.start()
    await wait_for_termination()
    await server.drain(on_drain)


def _write_atomically(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)
