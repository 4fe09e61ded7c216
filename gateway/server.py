"""The gateway's WebSocket server: handshake, edge limits, health, drain.

Everything the server tracks — open sessions, per-user connection counts,
counters — is state of one :class:`GatewayServer` instance, never of the module.
"""

from __future__ import annotations

import asyncio
import http
import json
import logging
import time
from collections.abc import Sequence
from urllib.parse import parse_qs, urlsplit

from prometheus_client import CollectorRegistry
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.http11 import Request, Response
from websockets.typing import Subprotocol

from gateway.auth import (
    AuthError,
    TokenVerifier,
    extract_credentials,
    offered_subprotocols,
    selected_subprotocol,
)
from gateway.calls import Backends
from gateway.connection import Session
from gateway.devtokens import DevTokens
from gateway.fabric import BridgeReplicas
from gateway.feeds import Feeds
from gateway.legacy import CHAT_PATH, PROFILE_LEGACY, is_legacy
from gateway.limits import InFlightLimit
from gateway.metrics import GatewayCollector
from gateway.protocol import CLOSE_SERVICE_RESTART, cursor_problem
from gateway.settings import GatewaySettings
from gateway.sink import OutboxLimits
from gateway.site import ConsoleSite
from gateway.stats import GatewayStats
from gateway.subscription import FabricPolicy
from gateway.transport import GatewayConnection
from gateway.user_limits import UserLimits
from runwire_common.attestation import ContextAttestor
from runwire_common.owners import owner_key
from runwire_common.telemetry import Telemetry

log = logging.getLogger("runwire.gateway.server")

WS_PATH = "/ws"
# ``/ws/chat`` is the previous platform's path: the same endpoint, legacy frames (gateway.legacy).
WS_PATHS = frozenset({WS_PATH, CHAT_PATH})
HEALTH_PATH = "/healthz"


__all__ = ("GatewayConnection", "GatewayServer", "select_subprotocol")


class GatewayServer:
    """One WebSocket listener and the sessions it serves."""

    def __init__(
        self,
        settings: GatewaySettings,
        *,
        backends: Backends,
        replicas: BridgeReplicas,
        attestor: ContextAttestor,
        stats: GatewayStats | None = None,
        verifier: TokenVerifier | None = None,
        telemetry: Telemetry | None = None,
        metrics: CollectorRegistry | None = None,
        site: ConsoleSite | None = None,
        limits: UserLimits | None = None,
    ) -> None:
        self._telemetry = telemetry if telemetry is not None else Telemetry.disabled()
        self._settings = settings
        self._backends = backends
        self._attestor = attestor
        self._verifier = verifier or TokenVerifier(settings)
        self._sessions: set[Session] = set()
        self._server: Server | None = None
        self.stats = stats if stats is not None else replicas.stats
        # Connections, frames and run.start per user: in Redis when configured, else per process.
        self.limits = limits if limits is not None else UserLimits(settings, stats=self.stats)
        # Shared by every session of this gateway (never copied per connection).
        self.replicas = replicas
        self.feeds = Feeds(replicas, policy=fabric_policy(settings), stats=self.stats)
        self._limits = OutboxLimits(
            coalesce_after=settings.outbox_coalesce_after,
            max_frames=settings.outbox_max_frames,
            max_bytes=settings.outbox_max_bytes,
        )
        self._start_runs = InFlightLimit(settings.max_start_runs_in_flight)
        # The browser console's files are read once, here; GET / serves them.
        self._site = site or ConsoleSite.load(
            client_dir=settings.client_dir, dev_tokens=DevTokens.from_settings(settings)
        )
        if metrics is not None:
            metrics.register(GatewayCollector(self.stats, lambda: len(self._sessions)))
        self.draining = False
        self.port = 0

    @property
    def events_blocked_owner_mismatch(self) -> int:
        return self.stats.events_blocked_owner_mismatch

    @property
    def sessions(self) -> frozenset[Session]:
        return frozenset(self._sessions)

    def connections_of(self, user_id: str, tenant_id: str = "") -> int:
        return self.limits.count(owner_key(tenant_id, user_id))

    async def start(self) -> int:
        """Listen; return the bound port."""
        settings = self._settings
        self._server = await serve(
            self._handle,
            settings.ws_host,
            settings.ws_port,
            process_request=self._process_request,
            select_subprotocol=select_subprotocol,
            compression="deflate" if settings.compression else None,
            ping_interval=settings.ping_interval_s,
            ping_timeout=settings.ping_timeout_s,
            max_size=settings.hard_max_frame_bytes,
            # Bounded both ways: received frames waiting for the session (reading pauses past
            # it) and bytes waiting for the client (the writer waits past it, send_timeout_s).
            max_queue=settings.incoming_queue_frames,
            write_limit=settings.write_limit_bytes,
            create_connection=GatewayConnection,
            server_header=None,
        )
        self.port = int(self._server.sockets[0].getsockname()[1])
        log.info("listening", extra={"host": settings.ws_host, "port": self.port})
        return self.port

    def begin_drain(self) -> None:
        """Stop admitting: ``/healthz`` answers 503 and new handshakes are refused with 503."""
        if not self.draining:
            self.draining = True
            log.info("draining", extra={"connections": len(self._sessions)})

    async def drain(self) -> None:
        """Refuse new handshakes (503), close every connection with 1012, stop listening."""
        self.begin_drain()
        server, self._server = self._server, None
        if server is None:
            return
        closing = [
            asyncio.create_task(conn.close(CLOSE_SERVICE_RESTART, "service restart"))
            for conn in server.connections
        ]
        if closing:
            await asyncio.wait(closing, timeout=self._settings.grace_period_s)
        server.close(close_connections=True, code=CLOSE_SERVICE_RESTART, reason="service restart")
        try:
            await asyncio.wait_for(server.wait_closed(), timeout=self._settings.grace_period_s)
        except TimeoutError:
            log.warning("connections did not close within the grace period")
        log.info("stopped")

    # -- handshake -----------------------------------------------------------

    async def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        url = urlsplit(request.path)
        if url.path == HEALTH_PATH:
            return self._health(connection)
        if url.path not in WS_PATHS:
            page = self._site.respond(request)  # the console, its files, development sign-in
            return page or self._refuse(connection, http.HTTPStatus.NOT_FOUND, "not found")
        if self.draining:
            return self._refuse(connection, http.HTTPStatus.SERVICE_UNAVAILABLE, "gateway is draining")
        offered = offered_subprotocols(request.headers.get_all("Sec-WebSocket-Protocol"))
        credentials = extract_credentials(request.headers.get("Authorization"), offered)
        after = _query_value(url.query, "after")
        if after and cursor_problem(after):
            return self._refuse(connection, http.HTTPStatus.BAD_REQUEST, "'after' is not a valid event_id")
        profile = _query_value(url.query, "profile")
        if profile and profile != PROFILE_LEGACY:
            return self._refuse(connection, http.HTTPStatus.BAD_REQUEST, "'profile' can only be 'legacy'")
        try:
            identity = self._verifier.verify(credentials.token)
        except AuthError as exc:
            response = self._refuse(connection, http.HTTPStatus.UNAUTHORIZED, exc.reason)
            response.headers["WWW-Authenticate"] = 'Bearer realm="runwire"'
            return response
        limits = self.limits
        owner = owner_key(identity.tenant_id, identity.user_id)
        lease = await limits.acquire_connection(owner)
        if lease is None:
            return self._refuse(
                connection,
                http.HTTPStatus.TOO_MANY_REQUESTS,
                f"too many connections for this user (limit {limits.connection_limit})",
            )
        # Released when the TCP connection goes, however the handshake or session ends.
        connection.connection_lost_waiter.add_done_callback(lambda _: limits.release_connection(owner, lease))
        assert isinstance(connection, GatewayConnection)
        connection.identity = identity
        connection.after = after
        connection.legacy = is_legacy(
            path=url.path, profile=profile, from_jwt_entry=credentials.from_jwt_entry, offered=offered
        )
        return None

    def _health(self, connection: ServerConnection) -> Response:
        status = http.HTTPStatus.SERVICE_UNAVAILABLE if self.draining else http.HTTPStatus.OK
        body = {"status": "draining" if self.draining else "ok"}
        response = connection.respond(status, json.dumps(body))
        del response.headers["Content-Type"]  # Headers is a multi-dict: replace, not add
        response.headers["Content-Type"] = "application/json"
        response.headers["Cache-Control"] = "no-store"
        return response

    def _refuse(self, connection: ServerConnection, status: http.HTTPStatus, reason: str) -> Response:
        self.stats.handshakes_refused[status.value] = self.stats.handshakes_refused.get(status.value, 0) + 1
        if status != http.HTTPStatus.NOT_FOUND:
            log.info("handshake refused", extra={"status": status.value, "reason": reason})
        return connection.respond(status, reason + "\n")

    # -- sessions ------------------------------------------------------------

    async def _handle(self, connection: ServerConnection) -> None:
        assert isinstance(connection, GatewayConnection)
        identity = connection.identity
        if identity is None:  # pragma: no cover - process_request always sets it
            await connection.close(1011, "no identity")
            return
        if identity.expires_at <= time.time():
            await connection.close(1008, "token expired")
            return
        # The handshake is over and everything needed from it was taken: do not keep
        # every header (a browser's cookies, the token …) for the connection's lifetime,
        # nor the handshake's subprotocol callback.
        _forget_headers(connection)
        _forget_subprotocol_selector(connection)
        session = Session(
            connection,
            identity,
            settings=self._settings,
            backends=self._backends,
            attestor=self._attestor,
            stats=self.stats,
            after=connection.after,
            legacy=connection.legacy,
            telemetry=self._telemetry,
            feeds=self.feeds,
            limits=self._limits,
            start_runs=self._start_runs,
            user_limits=self.limits,
        )
        self._sessions.add(session)
        self.stats.connections_opened += 1
        try:
            await session.serve()
        finally:
            self._sessions.discard(session)


def fabric_policy(settings: GatewaySettings) -> FabricPolicy:
    """How every subscription of a gateway is (re)added and paced; built once per gateway."""
    return FabricPolicy(
        attempts=settings.resubscribe_attempts,
        backoff_s=settings.resubscribe_backoff_s,
        max_backoff_s=settings.resubscribe_max_backoff_s,
        max_batch=settings.subscribe_max_batch,
        credit=settings.fabric_credit,
    )


def select_subprotocol(
    connection: ServerConnection, subprotocols: Sequence[Subprotocol]
) -> Subprotocol | None:
    """Select ``runwire.v1`` when offered, else the previous platform's name (see ``auth``).

    A token-carrying entry (``bearer.…``, ``jwt.…``) is never echoed.
    """
    del connection
    selected = selected_subprotocol(subprotocols)
    return Subprotocol(selected) if selected is not None else None


def _forget_headers(connection: ServerConnection) -> None:
    # websockets keeps ``request``/``response`` (and tests ``request is None`` to
    # tell the handshake from frames), so empty their headers instead of dropping them.
    if connection.request is not None:
        connection.request.headers.clear()
    if connection.response is not None:
        connection.response.headers.clear()


def _forget_subprotocol_selector(connection: ServerConnection) -> None:
    # websockets gives each connection's protocol a closure over the connection to call
    # select_subprotocol with: a reference cycle that only the cyclic garbage collector would
    # free, a pause later, once the connection closes. The handshake has used it.
    vars(connection.protocol).pop("select_subprotocol", None)


def _query_value(query: str, name: str) -> str:
    values = parse_qs(query, keep_blank_values=False).get(name)
    return values[0] if values else ""
