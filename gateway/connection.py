"""One WebSocket connection: its event pump, its rate limit, its commands.

A :class:`Session` is built per accepted connection and dropped when it
closes. Client frames are validated synchronously (a bad frame gets an
``error`` reply and never closes the connection); frames that need a gRPC call
run as bounded concurrent tasks, so a slow ``run.start`` never delays a
``ping``. All writes go through one lock so frames are never interleaved.

An idle connection is kept small: two tasks (websockets' handler, which runs
:meth:`Session.serve`, and the event pump), a timer handle for the token's
expiry, and objects made only when first needed (the rate limiter's window,
the set of calls in flight, the bound logger).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable, Sequence

import grpc
from websockets.exceptions import ConnectionClosed

from gateway import frames
from gateway.auth import Identity
from gateway.calls import Backends, ContextMinter, error_for_status
from gateway.limits import InFlightLimit, SlidingWindowLimiter
from gateway.protocol import (
    INTERNAL,
    INVALID_ARGUMENT,
    RATE_LIMITED,
    RESOURCE_EXHAUSTED,
    CancelRun,
    ClientId,
    Command,
    FrameError,
    GetRun,
    Heartbeat,
    ListRuns,
    Ping,
    Resume,
    StartRun,
    parse_frame,
)
from gateway.pump import (
    CLOSE_POLICY_VIOLATION,
    CursorRejected,
    EventPump,
    GatewayStats,
    PumpPolicy,
    PumpStopped,
)
from gateway.settings import GatewaySettings
from gateway.transport import GatewayConnection
from runwire_common.attestation import ContextAttestor
from runwire_common.ids import new_id
from runwire_common.logs import bind
from runwire_common.telemetry import Telemetry

log = logging.getLogger("runwire.gateway.connection")

CANCEL_REASON = "cancelled by the user"


def pump_policy(settings: GatewaySettings) -> PumpPolicy:
    """The (re)subscription policy of every pump of a gateway; built once per gateway."""
    return PumpPolicy(
        attempts=settings.resubscribe_attempts,
        backoff_s=settings.resubscribe_backoff_s,
        max_backoff_s=settings.resubscribe_max_backoff_s,
        max_batch=settings.subscribe_max_batch,
    )


class Session:
    """The per-connection state and behaviour of the gateway."""

    __slots__ = (
        "_after",
        "_backends",
        "_calls",
        "_closing",
        "_expiry",
        "_limiter",
        "_minter",
        "_policy",
        "_pump",
        "_pump_task",
        "_send_lock",
        "_settings",
        "_start_runs",
        "_stats",
        "_telemetry",
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
        policy: PumpPolicy,
        start_runs: InFlightLimit,
        after: str = "",
        telemetry: Telemetry | None = None,
    ) -> None:
        # The shared objects (settings, policy, the run.start bound, telemetry) are the
        # gateway's, passed by reference: nothing per connection is copied from them.
        self._telemetry = telemetry if telemetry is not None else Telemetry.disabled()
        self._ws = websocket
        self.identity = identity
        self._settings = settings
        self._backends = backends
        self._stats = stats
        self._after = after
        self._policy = policy
        self._start_runs = start_runs
        self.connection_id = new_id("conn")
        self._minter = ContextMinter(
            attestor, identity, connection_id=self.connection_id, ttl_s=settings.context_ttl_s
        )
        self._limiter = SlidingWindowLimiter(settings.rate_limit_messages, settings.rate_limit_window_s)
        self._send_lock = asyncio.Lock()
        self._calls: set[asyncio.Task[None]] | None = None
        self._pump: EventPump | None = None
        self._pump_task: asyncio.Task[None] | None = None
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
            pump = self._start_pump(self._after, resume_id=None, announce=bool(self._after))
            await self._until_subscribed(pump)
            async for message in self._ws:
                await self._on_message(message)
        except ConnectionClosed:
            pass
        finally:
            self._expiry.cancel()
            tasks = list(self._calls or ())
            if self._pump_task is not None:
                tasks.append(self._pump_task)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if self._closing is not None:
                await asyncio.gather(self._closing, return_exceptions=True)

    async def send(self, text: str) -> None:
        async with self._send_lock:
            await self._ws.send(text)

    async def send_many(self, texts: Sequence[str]) -> None:
        """Send several frames in order with one write and one drain."""
        async with self._send_lock:
            await self._ws.send_texts(texts)

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
        allowed = self._limiter.allow()
        try:
            command = parse_frame(
                message,
                max_frame_bytes=self._settings.max_frame_bytes,
                default_agent=self._settings.default_agent,
            )
        except FrameError as exc:
            if not allowed:
                await self._reply_error(exc.client_id, RATE_LIMITED, self._rate_message())
            else:
                await self._reply_error(exc.client_id, exc.code, exc.message)
            return
        if not allowed:
            await self._reply_error(command.id, RATE_LIMITED, self._rate_message())
            return
        await self._dispatch(command)

    def _rate_message(self) -> str:
        return (
            f"more than {self._settings.rate_limit_messages} messages in "
            f"{self._settings.rate_limit_window_s:g} s; frame not processed"
        )

    async def _dispatch(self, command: Command) -> None:
        if isinstance(command, Ping):
            await self.send(frames.pong_frame(command.id))
        elif isinstance(command, Heartbeat):
            await self.send(frames.heartbeat_ack_frame(command.id))
        elif isinstance(command, Resume):
            await self._resume(command)
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

    async def _call(self, command: StartRun | CancelRun | GetRun | ListRuns) -> None:
        try:
            # One trace per client request: the span is current while the gRPC calls run.
            with self._telemetry.span(
                f"ws {type(command).__name__}",
                user_id=self.identity.user_id,
                connection_id=self.connection_id,
                run_id=getattr(command, "run_id", "") or "",
            ):
                await self._run_command(command)
        except grpc.aio.AioRpcError as exc:
            code, message = error_for_status(exc.code(), exc.details())
            if code == "internal":
                self._log.error(
                    "call failed", extra={"grpc_code": exc.code().name, "frame": type(command).__name__}
                )
            await self._reply_error(command.id, code, message)
        except ConnectionClosed:
            pass
        except Exception:  # noqa: BLE001 - a bug must not kill the connection or leak details
            self._log.exception("command failed", extra={"frame": type(command).__name__})
            await self._reply_error(command.id, "internal", "internal error")

    async def _run_command(self, command: StartRun | CancelRun | GetRun | ListRuns) -> None:
        if isinstance(command, StartRun):
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
                thread_id = command.thread_id or new_id("thread")
                run = await self._backends.start_run(
                    self._minter.mint(thread_id=thread_id),
                    agent=command.agent,
                    input_json=json.dumps(dict(command.input), ensure_ascii=False),
                    multitask_strategy=command.multitask_strategy,
                )
            finally:
                start_runs.release()
            await self.send(frames.run_reply("run.accepted", command.id, run))
        elif isinstance(command, CancelRun):
            run = await self._backends.cancel_run(
                self._minter.mint(run_id=command.run_id), reason=CANCEL_REASON
            )
            await self.send(frames.run_reply("run.cancelling", command.id, run))
        elif isinstance(command, GetRun):
            run = await self._backends.get_run(self._minter.mint(run_id=command.run_id))
            await self.send(frames.run_reply("run", command.id, run))
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

    async def _resume(self, command: Resume) -> None:
        fallback = await self._stop_pump()
        self._start_pump(command.after, resume_id=command.id, announce=True, fallback=fallback)

    async def _until_subscribed(self, pump: EventPump) -> None:
        """Hold client frames until the event stream is live.

        Otherwise a ``run.start`` sent right after ``connected`` could emit its
        first events before the bridge knows this subscriber, and a live-only
        subscription would never see them.
        """
        try:
            async with asyncio.timeout(self._settings.call_timeout_s):
                await pump.wait_subscribed()
        except TimeoutError:
            self._log.warning("event stream not confirmed in time; serving the connection anyway")

    def _start_pump(
        self, after: str, *, resume_id: ClientId | None, announce: bool, fallback: str = ""
    ) -> EventPump:
        pump = EventPump(
            user_id=self.identity.user_id,
            backends=self._backends,
            minter=self._minter,
            send=self.send,
            send_many=self.send_many,
            stats=self._stats,
            policy=self._policy,
            log=log,
            connection_id=self.connection_id,
            after=after,
            resume_id=resume_id,
            announce_replay=announce,
            fallback=fallback,
        )
        self._pump = pump
        self._pump_task = asyncio.create_task(self._pump_run(pump.run))
        return pump

    async def _stop_pump(self) -> str:
        """Stop the event stream; return the cursor a new one resumes from."""
        task, self._pump_task = self._pump_task, None
        pump, self._pump = self._pump, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        return pump.resume_point if pump is not None else ""

    async def _pump_run(self, run: Callable[[], Awaitable[None]]) -> None:
        try:
            await run()
        except CursorRejected as exc:
            # Go on from where the connection was, then tell the client its cursor was refused.
            self._start_pump(exc.fallback, resume_id=None, announce=False, fallback=exc.fallback)
            await self._reply_error(exc.client_id, INVALID_ARGUMENT, exc.message)
        except PumpStopped as exc:
            self._log.warning("closing: event stream stopped", extra={"reason": exc.reason})
            code = "unauthenticated" if exc.code == CLOSE_POLICY_VIOLATION else "unavailable"
            await self._reply_error(None, code, exc.reason)
            self._close_soon(exc.code, exc.reason)
        except ConnectionClosed:
            pass

    # -- lifetime ------------------------------------------------------------

    def _on_expiry(self) -> None:
        self._log.info("closing: token expired")
        self._close_soon(CLOSE_POLICY_VIOLATION, "token expired")

    def _close_soon(self, code: int, reason: str) -> None:
        # Closing waits for the receive loop, which cancels the caller; run it apart.
        if self._closing is None:
            self._closing = asyncio.create_task(self._ws.close(code, reason))
