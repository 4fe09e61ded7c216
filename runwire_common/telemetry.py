"""OpenTelemetry tracing across every hop, configured by the standard ``OTEL_*`` settings.

Tracing is off unless configured: set ``OTEL_TRACES_EXPORTER`` (``otlp`` or
``console``) or an OTLP endpoint (``OTEL_EXPORTER_OTLP_ENDPOINT`` /
``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``); ``OTEL_SDK_DISABLED=true`` wins over
both. Exporter, sampler and resource settings are read by the SDK from the
usual ``OTEL_*`` variables.

Each process builds one :class:`Telemetry` in its composition root and passes
it down; nothing here touches OpenTelemetry's global tracer provider, so
several services can run in one test process, each with its own
``service.name``. When tracing is off, :meth:`Telemetry.server_interceptors`
and :meth:`Telemetry.client_interceptors` return nothing and calls pay no
tracing cost at all.

Context travels between services in the W3C ``traceparent`` metadata. Server
spans carry ``user_id``, ``run_id`` and ``thread_id`` from the request's
``user_context``.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

import grpc
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SimpleSpanProcessor,
    SpanExporter,
)
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

Req = TypeVar("Req")
Resp = TypeVar("Resp")
IDENTITY_ATTRIBUTES = ("user_id", "run_id", "thread_id", "request_id")


def tracing_requested(env: Mapping[str, str]) -> bool:
    """Whether the ``OTEL_*`` settings ask for traces."""
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporter = env.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporter == "none":
        return False
    endpoint = env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    return exporter in ("otlp", "console") or bool(endpoint)


def _exporter_from_env(env: Mapping[str, str]) -> SpanExporter:
    if env.get("OTEL_TRACES_EXPORTER", "").strip().lower() == "console":
        return ConsoleSpanExporter()
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

    return OTLPSpanExporter()


@dataclass(frozen=True)
class Telemetry:
    """One process's tracer (a no-op one when tracing is off)."""

    tracer: Tracer
    provider: TracerProvider | None = None
    propagator: TraceContextTextMapPropagator = field(default_factory=TraceContextTextMapPropagator)

    @property
    def enabled(self) -> bool:
        return self.provider is not None

    @classmethod
    def disabled(cls) -> Telemetry:
        return cls(tracer=trace.NoOpTracer())

    @classmethod
    def from_env(cls, service_name: str, env: Mapping[str, str] | None = None) -> Telemetry:
        """Tracing as the ``OTEL_*`` environment asks, else disabled."""
        values = os.environ if env is None else env
        if not tracing_requested(values):
            return cls.disabled()
        return cls.with_exporter(service_name, _exporter_from_env(values), batch=True)

    @classmethod
    def with_exporter(cls, service_name: str, exporter: SpanExporter, *, batch: bool = False) -> Telemetry:
        """Tracing into ``exporter`` (tests pass an in-memory exporter)."""
        resource = Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME", service_name)})
        provider = TracerProvider(resource=resource)
        processor = BatchSpanProcessor(exporter) if batch else SimpleSpanProcessor(exporter)
        provider.add_span_processor(processor)
        return cls(tracer=provider.get_tracer("runwire"), provider=provider)

    def shutdown(self) -> None:
        """Flush and stop exporting (called last on shutdown)."""
        if self.provider is not None:
            self.provider.shutdown()

    def server_interceptors(self) -> Sequence[grpc.aio.ServerInterceptor]:
        return (TracingServerInterceptor(self),) if self.enabled else ()

    def client_interceptors(self) -> Sequence[grpc.aio.ClientInterceptor]:
        if not self.enabled:
            return ()
        return (TracingUnaryClientInterceptor(self), TracingStreamClientInterceptor(self))

    @contextmanager
    def span(self, name: str, *, kind: SpanKind = SpanKind.INTERNAL, **attributes: str) -> Iterator[Span]:
        """A span made current for the block (for work outside gRPC, e.g. a WebSocket frame)."""
        with self.tracer.start_as_current_span(name, kind=kind, attributes=_clean(attributes)) as span:
            yield span

    def carrier(self) -> dict[str, str]:
        """The current trace context as W3C headers (empty when tracing is off)."""
        carrier: dict[str, str] = {}
        if self.enabled:
            self.propagator.inject(carrier)
        return carrier

    @contextmanager
    def continued_span(self, method: str, carrier: Mapping[str, str], **attributes: str) -> Iterator[Span]:
        """A server span for work that brought its own trace context.

        A long-lived stream (``PublishStream``) outlives every request it
        carries, so each message names the trace it belongs to in ``carrier``
        and its handling becomes a span of that trace.
        """
        service, name = _split_method(method)
        base = {"rpc.system": "grpc", "rpc.service": service, "rpc.method": name}
        with self.tracer.start_as_current_span(
            method.lstrip("/"),
            context=self.propagator.extract(dict(carrier)),
            kind=SpanKind.SERVER,
            attributes={**base, **_clean(attributes)},
        ) as span:
            yield span

    def inject(self) -> list[tuple[str, str]]:
        """The current trace context as gRPC metadata."""
        carrier: dict[str, str] = {}
        self.propagator.inject(carrier)
        return list(carrier.items())


def _clean(attributes: Mapping[str, Any]) -> dict[str, str]:
    return {key: str(value) for key, value in attributes.items() if value}


def identity_attributes(request: object) -> dict[str, str]:
    """``user_id``, ``run_id``, … from a request's ``user_context`` (field 1)."""
    ctx = getattr(request, "user_context", None)
    if ctx is None:
        return {}
    return _clean({name: getattr(ctx, name, "") for name in IDENTITY_ATTRIBUTES})


def _split_method(method: str) -> tuple[str, str]:
    service, _, name = method.lstrip("/").partition("/")
    return service, name


class TracingServerInterceptor(grpc.aio.ServerInterceptor):
    """Continues the caller's trace with a server span per call."""

    def __init__(self, telemetry: Telemetry) -> None:
        self._telemetry = telemetry

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Req, Resp] | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Req, Resp] | None:
        handler = await continuation(handler_call_details)
        method = str(getattr(handler_call_details, "method", ""))
        if handler is None or method.startswith("/grpc."):
            return handler
        metadata = getattr(handler_call_details, "invocation_metadata", None) or ()
        carrier = {str(key): str(value) for key, value in metadata}
        parent = self._telemetry.propagator.extract(carrier)
        service, name = _split_method(method)
        base = {"rpc.system": "grpc", "rpc.service": service, "rpc.method": name}
        tracer = self._telemetry.tracer
        if handler.unary_unary is not None:
            unary: Any = handler.unary_unary  # a coroutine function under grpc.aio

            async def traced_unary(request: Req, context: grpc.aio.ServicerContext[Req, Resp]) -> Resp:
                attributes = {**base, **identity_attributes(request)}
                with tracer.start_as_current_span(
                    method.lstrip("/"), context=parent, kind=SpanKind.SERVER, attributes=attributes
                ) as span:
                    try:
                        result: Resp = await unary(request, context)
                    finally:
                        _record_status(span, context)
                    return result

            return grpc.unary_unary_rpc_method_handler(
                traced_unary,
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            stream: Any = handler.unary_stream  # an async generator function under grpc.aio

            async def traced_stream(
                request: Req, context: grpc.aio.ServicerContext[Req, Resp]
            ) -> AsyncIterator[Resp]:
                # Not made current: an async generator must not leave its context
                # attached between items. Streams make no nested calls here.
                span = tracer.start_span(
                    method.lstrip("/"),
                    context=parent,
                    kind=SpanKind.SERVER,
                    attributes={**base, **identity_attributes(request)},
                )
                try:
                    async for item in stream(request, context):
                        yield item
                finally:
                    _record_status(span, context)
                    span.end()

            return grpc.unary_stream_rpc_method_handler(
                traced_stream,
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler


def _record_status(span: Span, context: grpc.aio.ServicerContext[Any, Any]) -> None:
    code = context.code() if hasattr(context, "code") else None
    if code is not None and code != grpc.StatusCode.OK:
        span.set_attribute("rpc.grpc.status_code", int(code.value[0]))
        span.set_status(Status(StatusCode.ERROR, str(code.name)))


def _with_trace(telemetry: Telemetry, details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
    metadata = list(details.metadata or ())
    metadata.extend(telemetry.inject())
    return grpc.aio.ClientCallDetails(
        details.method,
        details.timeout,
        grpc.aio.Metadata(*metadata),
        details.credentials,
        details.wait_for_ready,
    )


class TracingUnaryClientInterceptor(grpc.aio.UnaryUnaryClientInterceptor):
    """A client span per unary call; the trace context travels in metadata."""

    def __init__(self, telemetry: Telemetry) -> None:
        self._telemetry = telemetry

    async def intercept_unary_unary(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        method = client_call_details.method
        name = method.decode() if isinstance(method, bytes) else str(method)
        with self._telemetry.tracer.start_as_current_span(
            name.lstrip("/"), kind=SpanKind.CLIENT, attributes=identity_attributes(request)
        ):
            call = await continuation(_with_trace(self._telemetry, client_call_details), request)
            await call  # finish inside the span
            return call


class TracingStreamClientInterceptor(grpc.aio.UnaryStreamClientInterceptor):
    """Carries the trace context on server-streaming calls (no client span: streams are long)."""

    def __init__(self, telemetry: Telemetry) -> None:
        self._telemetry = telemetry

    async def intercept_unary_stream(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        return await continuation(_with_trace(self._telemetry, client_call_details), request)


def current_trace_id() -> str:
    """The current trace id as 32 hex digits ('' outside a span); for logs."""
    span_context = trace.get_current_span(otel_context.get_current()).get_span_context()
    return f"{span_context.trace_id:032x}" if span_context.is_valid else ""
