"""Prometheus metrics: one registry per process, served on its own port.

Each service defines its metrics on a :class:`prometheus_client.CollectorRegistry`
built in its composition root (never the library's global registry, so
several services can share a test process) and serves it with
:class:`MetricsServer` when ``RUNWIRE_<SVC>_METRICS_PORT`` is set.
"""

from __future__ import annotations

import threading
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, start_http_server


class MetricsServer:
    """``GET /metrics`` for one registry, on a daemon thread."""

    def __init__(self, registry: CollectorRegistry, *, host: str = "127.0.0.1", port: int = 0) -> None:
        self._registry = registry
        self._host = host
        self._port = port
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return self._server.server_port if self._server is not None else 0

    def start(self) -> int:
        self._server, self._thread = start_http_server(self._port, addr=self._host, registry=self._registry)
        return self.port

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = self._thread = None
