"""One WebSocket connection: its place in its user's event feed, its rate limit, its commands.

A :class:`Session` is built per accepted connection and dropped when it
closes. Client frames are validated synchronously (a bad frame gets an
``error`` reply and never closes the connection); frames that need a gRPC call
run as bounded concurrent tasks, so a slow ``run.start`` never delays a
``ping``. Events reach the socket through its :class:`~gateway.sink.EventSink`
(the user's feed is shared by all of the user's connections, see
:mod:`gateway.feeds`); replies and events share one lock, so frames are never
interleaved.

An idle connection is kept small: one task (websockets' handler, which runs
:meth:`Session.serve`), a timer handle for the token's expiry, its sink, and
objects made only when first needed (the rate limiter's window, the set of
calls in flight, the sink's queue and writer, the bound logger).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time

import grpc
from websockets.exceptions import ConnectionClosed

from gateway import frames, legacy
from gateway.auth import Identity
from gateway.calls import Backends, ContextMinter, error_for_status
from gateway.feeds import Feeds, UserFeed
from gateway.limits import InFlightLimit
from gateway.protocol import (
    CLOSE_POLICY_VIOLATION,
    CLOSE_TRY_AGAIN_LATER,
    INTERNAL,
    RATE_LIMITED,
    RESOURCE_EXHAUSTED,
    AgentsListFrame,
    CallFrame,
    ClientId,
    Command,
    FrameError,
    HeartbeatFrame,
    PingFrame,
    ResumeFrame,
    RunCancelFrame,
    RunGetFrame,
    RunRespondFrame,
    RunStartFrame,
    ThreadDeleteFrame,
    ThreadGetFrame,
    ThreadsListFrame,
    TypingFrame,
    parse_frame,
)
from gateway.settings import GatewaySettings
from gateway.sink import EventSink, OutboxLimits
from gateway.starts import StartFailed
from gateway.stats import GatewayStats
from gateway.transport import GatewayConnection
from gateway.unparsed import leading_id
from gateway.user_limits import FrameGate, UserLimits
from runwire_common.attestation import ContextAttestor
from runwire_common.ids import new_id
from runwire_common.logs import bind
from runwire_common.owners import Owner, owner_key
from runwire_common.telemetry import Telemetry

log = logging.getLogger("runwire.gateway.connection")

CANCEL_REASON = "cancelled by the user"


class Session:
    """The per-connection state and behaviour of the gateway."""

    __slots__ = (
        "_after",
        "_backends",
        "_calls",
        "_closing",
        "_expiry",
        "_gate",
        "_minter",
        "_settings",
        "_sink",
        "_start_runs",
        "_stats",
        "_telemetry",
        "_user_limits",
        "_ws",
        "connection_id",
        "identity",
    )

    def __init__(
        self,
        websocket: GatewayConnection,
        identity: Identity,
        *,
        settings: GatewaySettings,
        backends: Backends,
        attestor: ContextAttestor,
        stats: GatewayStats,
        feeds: Feeds,
        limits: OutboxLimits,
        start_runs: InFlightLimit,
        user_limits: UserLimits,
        after: str = "",
        telemetry: Telemetry | None = None,
        legacy: bool = False,
    ) -> None:
        # The shared objects (settings, feeds, limits, the run.start bound, telemetry) are the
        # gateway's, passed by reference: nothing per connection is copied from them.
        self._telemetry = telemetry if telemetry is not None else Telemetry.disabled()
        self._ws = websocket
        self.identity = identity
        self._settings = settings
        self._backends = backends
        self._stats = stats
        self._after = after
        self._start_runs = start_runs
        self._user_limits = user_limits
        self.connection_id = new_id("conn")
        self._minter = ContextMinter(
            attestor, identity, connection_id=self.connection_id, ttl_s=settings.context_ttl_s
        )
        self._gate = FrameGate(settings, user_limits, owner_key(identity.tenant_id, identity.user_id))
        self._sink = EventSink(
            websocket,
            owner=Owner(identity.tenant_id, identity.user_id),
            connection_id=self.connection_id,
            minter=self._minter,
            feeds=feeds,
            limits=limits,
            stats=stats,
            on_stop=self._event_stream_stopped,
            legacy=legacy,
            send_timeout_s=settings.send_timeout_s,
        )
        self._calls: set[asyncio.Task[None]] | None = None
        self._closing: asyncio.Task[None] | None = None
        self._expiry: asyncio.TimerHandle | None = None

    @property
    def _log(self) -> logging.LoggerAdapter:  # type: ignore[type-arg]
        # Bound when something is logged (rarely), not held by every idle connection.
        return bind(log, user_id=self.identity.user_id, connection_id=self.connection_id)

    async def serve(self) -> None:
        """Run the connection until it closes."""
        loop = asyncio.get_running_loop()
        # A timer, not a sleeping task: no coroutine frame and no task per connection.
        self._expiry = loop.call_later(max(0.0, self.identity.expires_at - time.time()), self._on_expiry)
        try:
            await self.send(frames.connected_frame(self.connection_id, self.identity.user_id))
            await self._until_subscribed(self._sink.join(self._after))
            async for message in self._ws:
                await self._on_message(message)
        except ConnectionClosed:
            pass
        finally:
            self._expiry.cancel()
            self._sink.leave()
            tasks = list(self._calls or ())
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if self._closing is not None:
                await asyncio.gather(self._closing, return_exceptions=True)

    async def send(self, text: str) -> None:
        await self._sink.send(text)

    # -- client frames -------------------------------------------------------

    async def _on_message(self, message: str | bytes) -> None:
        try:
            await self._serve_message(message)
        except ConnectionClosed:
            raise
        except Exception:  # noqa: BLE001 - one bad frame must never end the connection
            self._log.exception("frame failed")
            await self._reply_error(None, INTERNAL, "internal error")

    async def _serve_message(self, message: str | bytes) -> None:
        if self._closing is not None:
            return  # closing: nothing more is served
        # Rate limits first, before the frame is parsed: a flood costs a count, not a parse.
        refusal = await self._gate.admit()
        if refusal is not None:
            self._stats.frames_rate_limited += 1
            if self._gate.flooding:
                self._stats.connections_closed_flooding += 1
                self._log.warning(
                    "closing: kept sending past the rate limit", extra={"refused": self._gate.refused}
                )
                self._close_soon(CLOSE_POLICY_VIOLATION, "rate limit exceeded")
            else:
                # Never parsed: the reply carries the id only when it leads the frame (gateway.unparsed.leading_id).
                await self._reply_error(leading_id(message), RATE_LIMITED, refusal)
            return
        try:
            command = parse_frame(
                message,
                max_frame_bytes=self._settings.max_frame_bytes,
                default_agent=self._settings.default_agent,
            )
        except FrameError as exc:
            await self._reply_error(exc.client_id, exc.code, exc.message)
            return
        await self._dispatch(command)

    async def _dispatch(self, command: Command) -> None:
        if isinstance(command, PingFrame):
            if self._sink.legacy:
                await self.send(legacy.pong_frame(command.id, self.identity.user_id))
            else:
                await self.send(frames.pong_frame(command.id))
        elif isinstance(command, HeartbeatFrame):
            await self.send(frames.heartbeat_ack_frame(command.id))
        elif isinstance(command, TypingFrame):
            await self.send(frames.typing_ack_frame(command.id, command.kind))
        elif isinstance(command, ResumeFrame):
            self._sink.resume(command.after, command.id)
        elif self._calls is not None and len(self._calls) >= self._settings.max_in_flight:
            await self._reply_error(
                command.id,
                RESOURCE_EXHAUSTED,
                f"more than {self._settings.max_in_flight} requests in flight on this connection",
            )
        else:
            if self._calls is None:
                self._calls = set()
            task = asyncio.create_task(self._call(command))
            self._calls.add(task)
            task.add_done_callback(self._calls.discard)

    async def _call(self, command: CallFrame) -> None:
        try:
            # One trace per client request: the span is current while the gRPC calls run.
            with self._telemetry.span(
                f"ws {command.rpc}",
                user_id=self.identity.user_id,
                connection_id=self.connection_id,
                run_id=getattr(command, "run_id", "") or "",
            ):
                await self._run_command(command)
        except (grpc.aio.AioRpcError, StartFailed) as exc:
            status, details = (
                (exc.code, exc.details) if isinstance(exc, StartFailed) else (exc.code(), exc.details())
            )
            code, message = error_for_status(status, details)
            if code == "internal":
                self._log.error("call failed", extra={"grpc_code": status.name, "frame": command.rpc})
            await self._reply_error(command.id, code, message)
        except ConnectionClosed:
            pass
        except Exception:  # noqa: BLE001 - a bug must not kill the connection or leak details
            self._log.exception("command failed", extra={"frame": command.rpc})
            await self._reply_error(command.id, "internal", "internal error")

    async def _run_command(self, command: CallFrame) -> None:
        if isinstance(command, RunStartFrame):
            identity = self.identity
            wait_s = await self._user_limits.allow_run_start(owner_key(identity.tenant_id, identity.user_id))
            if wait_s:
                self._stats.run_starts_rate_limited += 1
                settings = self._settings
                await self._reply_error(
                    command.id,
                    RATE_LIMITED,
                    f"more than {settings.run_start_rate_limit} run.start in "
                    f"{settings.run_start_rate_window_s:g} s for this user; retry in {wait_s:.1f} s",
                )
                return
            start_runs = self._start_runs
            if not start_runs.try_acquire():
                # Queueing it would only run into the call deadline; say so now.
                self._stats.start_runs_refused_overload += 1
                await self._reply_error(
                    command.id,
                    RESOURCE_EXHAUSTED,
                    f"gateway overloaded: more than {start_runs.limit} run.start requests in flight; "
                    "retry shortly",
                )
                return
            try:
                # Without a thread_id, StartRun starts a new thread and generates its id.
                run = await self._backends.start_run(
                    self._minter.mint(thread_id=command.thread_id or ""),
                    agent=command.agent,
                    input_json=json.dumps(dict(command.input), ensure_ascii=False),
                    multitask_strategy=command.multitask_strategy,
                )
            finally:
                start_runs.release()
            await self.send(frames.run_reply("run.accepted", command.id, run))
        elif isinstance(command, RunCancelFrame):
            run = await self._backends.cancel_run(
                self._minter.mint(run_id=command.run_id), reason=CANCEL_REASON
            )
            await self.send(frames.run_reply("run.cancelling", command.id, run))
        elif isinstance(command, RunGetFrame):
            run = await self._backends.get_run(self._minter.mint(run_id=command.run_id))
            await self.send(frames.run_reply("run", command.id, run))
        elif isinstance(command, RunRespondFrame):
            run = await self._backends.respond_run(
                self._minter.mint(run_id=command.run_id),
                request_id=command.request_id,
                response_json=json.dumps(dict(command.response), ensure_ascii=False),
            )
            await self.send(frames.run_reply("run.responded", command.id, run))
        elif isinstance(command, ThreadsListFrame):
            threads = await self._backends.list_threads(
                self._minter.mint(), page_size=command.limit or 0, page_token=command.page_token or ""
            )
            await self.send(frames.threads_reply(command.id, threads.threads, threads.next_page_token))
        elif isinstance(command, ThreadGetFrame):
            thread, messages = await self._backends.get_thread(self._minter.mint(thread_id=command.thread_id))
            await self.send(frames.thread_reply(command.id, thread, messages))
        elif isinstance(command, AgentsListFrame):
            agents = await self._backends.list_agents(self._minter.mint())
            await self.send(frames.agents_reply(command.id, agents))
        elif isinstance(command, ThreadDeleteFrame):
            await self._backends.delete_thread(self._minter.mint(thread_id=command.thread_id))
            await self.send(frames.thread_deleted_reply(command.id, command.thread_id))
        else:
            page = await self._backends.list_runs(
                self._minter.mint(thread_id=command.thread_id or ""),
                thread_id=command.thread_id or "",
                state=command.state or 0,
                page_size=command.limit or 0,
                page_token=command.page_token or "",
            )
            await self.send(frames.runs_reply(command.id, page.runs, page.next_page_token))

    async def _reply_error(self, client_id: ClientId | None, code: str, message: str) -> None:
        with contextlib.suppress(ConnectionClosed):
            await self.send(frames.error_frame(client_id, code, message))

    # -- events --------------------------------------------------------------

    async def _until_subscribed(self, feed: UserFeed) -> None:
        """Hold client frames until the user's event subscription is live.

        Otherwise a ``run.start`` sent right after ``connected`` could emit its
        first events before the bridge knows the user's subscription, and a
        live-only subscription would never see them. A second tab of a user
        whose feed is already live waits for nothing.
        """
        if feed.subscribed:
            return
        try:
            async with asyncio.timeout(self._settings.call_timeout_s):
                await feed.wait_subscribed()
        except TimeoutError:
            self._log.warning("event stream not confirmed in time; serving the connection anyway")

    def _event_stream_stopped(self, code: int, reason: str) -> None:
        """The user's event stream cannot be kept up: say why, then close with ``code``."""
        self._log.warning("closing: event stream stopped", extra={"reason": reason})
        if code == CLOSE_TRY_AGAIN_LATER:
            # The client does not read: an error frame would wait behind what it left unread.
            self._close_soon(code, reason, grace_s=0.0)
            return
        error = "unauthenticated" if code == CLOSE_POLICY_VIOLATION else "unavailable"
        if self._closing is None:
            self._closing = asyncio.create_task(self._stop_with(code, reason, error))

    async def _stop_with(self, code: int, reason: str, error: str) -> None:
        await self._reply_error(None, error, reason)
        await self._ws.close(code, reason)

    # -- lifetime ------------------------------------------------------------

    def _on_expiry(self) -> None:
        self._log.info("closing: token expired")
        self._close_soon(CLOSE_POLICY_VIOLATION, "token expired")

    def _close_soon(self, code: int, reason: str, *, grace_s: float | None = None) -> None:
        # Closing waits for the receive loop, which cancels the caller; run it apart.
        if self._closing is None:
            grace = self._settings.send_timeout_s if grace_s is None else grace_s
            self._closing = asyncio.create_task(self._close(code, reason, grace))

    async def _close(self, code: int, reason: str, grace_s: float) -> None:
        """Close with ``code``; a client that does not take the close frame in ``grace_s`` is cut off.

        websockets' ``close`` first waits for the socket's buffer to drain, which a
        client that stopped reading never lets happen.
        """
        try:
            async with asyncio.timeout(grace_s):
                await self._ws.close(code, reason)
        except TimeoutError:
            self._ws.transport.abort()
