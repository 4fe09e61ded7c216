"""The event pump: one ``BridgeService.Subscribe`` stream → one WebSocket.

The pump writes each event of the stream to the socket after the owner check,
remembers the last event it wrote, and resubscribes from there when the bridge
ends the stream because the subscriber fell behind (``RESOURCE_EXHAUSTED``) or
the bridge is draining or restarting (``UNAVAILABLE``) — so the client loses
nothing and sees nothing twice.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import grpc

from gateway import frames
from gateway.calls import MAX_DETAIL_CHARS, Backends, ContextMinter
from gateway.protocol import UNAVAILABLE, ClientId
from gateway.stats import GatewayStats
from runwire.bridge.v1 import bridge_pb2
from runwire.common.v1 import event_pb2
from runwire_common.logs import bind

__all__ = (
    "CLOSE_INTERNAL_ERROR",
    "CLOSE_POLICY_VIOLATION",
    "CLOSE_SERVICE_RESTART",
    "CursorRejected",
    "EventPump",
    "GatewayStats",
    "PumpPolicy",
    "PumpStopped",
    "owner_matches",
)

# Close codes (RFC 6455 §7.4.1).
CLOSE_POLICY_VIOLATION = 1008
CLOSE_INTERNAL_ERROR = 1011
CLOSE_SERVICE_RESTART = 1012

RESUBSCRIBE_CODES = frozenset(
    {grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED}
)
# After this many consecutive failed attempts the client is told the stream is interrupted.
WARN_AFTER_FAILURES = 3

Send = Callable[[str], Awaitable[None]]
# Writes several frames in order with one flush (one drain) instead of one per frame.
SendMany = Callable[[Sequence[str]], Awaitable[None]]


class CursorRejected(Exception):
    """The bridge refused the requested cursor; the connection goes on from ``fallback``."""

    def __init__(self, message: str, *, client_id: ClientId | None, fallback: str) -> None:
        super().__init__(message)
        self.message = message
        self.client_id = client_id
        self.fallback = fallback


class PumpStopped(Exception):
    """The stream cannot be kept up; the connection must close with ``code``."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


@dataclass(frozen=True)
class PumpPolicy:
    """How a pump (re)subscribes; one instance per gateway, shared by its connections."""

    attempts: int
    backoff_s: float
    max_backoff_s: float
    # SubscribeRequest.max_batch: >1 lets the bridge send up to this many events per message.
    max_batch: int = 0


class EventPump:
    """Streams the owner's events of one connection; one instance per subscription.

    The bridge sends either one ``event`` per stream message or, when asked for
    batches (``PumpPolicy.max_batch`` > 1) and able to, ``events`` batches; each
    event of a batch gets exactly the single-event treatment (owner check, one
    frame, cursor, counters), and a batch's frames go out with one write.
    """

    __slots__ = (
        "_announce",
        "_backends",
        "_confirmed",
        "_connection_id",
        "_fallback",
        "_log",
        "_minter",
        "_policy",
        "_resume_id",
        "_send",
        "_send_many",
        "_stats",
        "_subscribed_waiter",
        "_user_id",
        "cursor",
        "replayed",
        "subscribed",
    )

    def __init__(
        self,
        *,
        user_id: str,
        backends: Backends,
        minter: ContextMinter,
        send: Send,
        stats: GatewayStats,
        policy: PumpPolicy,
        log: logging.Logger | logging.LoggerAdapter,  # type: ignore[type-arg]
        after: str = "",
        resume_id: ClientId | None = None,
        announce_replay: bool = False,
        fallback: str = "",
        send_many: SendMany | None = None,
        connection_id: str = "",
    ) -> None:
        self._user_id = user_id
        self._backends = backends
        self._minter = minter
        self._send = send
        self._send_many = send_many
        self._stats = stats
        self._policy = policy
        # The shared logger; the connection's ids are bound only when something is logged.
        self._log = log
        self._connection_id = connection_id
        self.cursor = after
        # Where the connection goes on from if the bridge refuses ``after``: a cursor
        # the bridge already accepted (or "" = live only).
        self._fallback = fallback
        self._confirmed = False
        self._resume_id = resume_id
        # Whether a ``resumed`` frame is owed once the replay completes.
        self._announce = announce_replay or resume_id is not None
        self.replayed = 0
        # True once the bridge confirmed the subscription (its first replay_complete),
        # or once the pump gave up: from then on no event of the user can be missed.
        # (A flag plus a future made only if someone waits: an idle connection
        # should not carry an asyncio.Event and its deque.)
        self.subscribed = False
        self._subscribed_waiter: asyncio.Future[None] | None = None

    async def wait_subscribed(self) -> None:
        """Return once :attr:`subscribed` is true."""
        if self.subscribed:
            return
        if self._subscribed_waiter is None or self._subscribed_waiter.done():
            self._subscribed_waiter = asyncio.get_running_loop().create_future()
        await self._subscribed_waiter

    def _set_subscribed(self) -> None:
        self.subscribed = True
        waiter, self._subscribed_waiter = self._subscribed_waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def run(self) -> None:
        """Pump until cancelled; raise :class:`PumpStopped` when the bridge is gone for good."""
        try:
            await self._run()
        finally:
            self._set_subscribed()

    async def _run(self) -> None:
        failures = 0
        while True:
            call = self._backends.subscribe(
                self._minter.mint(), after=self.cursor, max_batch=self._policy.max_batch
            )
            code: grpc.StatusCode | None = None
            details: str | None = None
            try:
                async for item in call:
                    failures = 0
                    self._confirmed = True
                    if item.HasField("events"):
                        await self._write_events(item.events.events)
                    else:
                        await self.handle(item)
            except grpc.aio.AioRpcError as exc:
                code = exc.code()
                details = exc.details()
            finally:
                call.cancel()
            if (
                code == grpc.StatusCode.INVALID_ARGUMENT
                and not self._confirmed
                and self.cursor != self._fallback
            ):
                # A well-formed frame with a cursor the bridge does not accept: the client's
                # mistake, not a broken stream. Say so and keep the connection.
                raise CursorRejected(
                    (details or "'after' is not a valid event_id")[:MAX_DETAIL_CHARS],
                    client_id=self._resume_id,
                    fallback=self._fallback,
                )
            if code is not None and code not in RESUBSCRIBE_CODES:
                raise self._fatal(code)
            failures += 1
            self._stats.resubscribes += 1
            if failures > self._policy.attempts:
                raise PumpStopped(CLOSE_INTERNAL_ERROR, "event stream unavailable")
            if failures == WARN_AFTER_FAILURES:
                await self._send(
                    frames.error_frame(None, UNAVAILABLE, "event stream interrupted; reconnecting")
                )
            self._logger.info(
                "resubscribing", extra={"after": self.cursor, "cause": code.name if code else "ended"}
            )
            # A subscriber that fell behind retries at once; a bridge that is away gets backoff.
            delay = min(self._policy.backoff_s * 2 ** (failures - 1), self._policy.max_backoff_s)
            await asyncio.sleep(0 if failures == 1 and code != grpc.StatusCode.UNAVAILABLE else delay)

    @property
    def _logger(self) -> logging.LoggerAdapter:  # type: ignore[type-arg]
        if self._connection_id:
            return bind(self._log, user_id=self._user_id, connection_id=self._connection_id)
        return bind(self._log, user_id=self._user_id)

    @property
    def resume_point(self) -> str:
        """The cursor a follow-up subscription starts from so nothing is lost or repeated."""
        return self.cursor if self._confirmed else self._fallback

    def _fatal(self, code: grpc.StatusCode) -> PumpStopped:
        if code == grpc.StatusCode.UNAUTHENTICATED:
            return PumpStopped(CLOSE_POLICY_VIOLATION, "identity no longer accepted")
        self._logger.error("event stream failed", extra={"grpc_code": code.name})
        return PumpStopped(CLOSE_INTERNAL_ERROR, "event stream failed")

    async def handle(self, item: bridge_pb2.SubscribeResponse) -> None:
        """Write one stream item to the socket (events pass the owner check first)."""
        kind = item.WhichOneof("item")
        if kind == "event":
            await self._write_events((item.event,))
        elif kind == "events":
            await self._write_events(item.events.events)
        elif kind == "gap":
            await self._send(frames.gap_frame(item.gap, self._resume_id))
        elif kind == "replay_complete":
            if item.replay_complete.resume_after:
                # Resubscribing from here loses nothing, even before the first event.
                self.cursor = item.replay_complete.resume_after
            self._set_subscribed()
            if self._announce:
                self._announce = False
                await self._send(frames.resumed_frame(self._resume_id, self.replayed))
                self._resume_id = None

    async def _write_events(self, events: Sequence[event_pb2.RunEvent]) -> None:
        """Write consecutive events of the log, in order, each after the owner check."""
        texts: list[str] = []
        last = ""
        user_id = self._user_id
        for event in events:
            if not (user_id and event.user_id == user_id):  # owner_matches, inlined
                self._stats.events_blocked_owner_mismatch += 1
                self._logger.warning(
                    "dropped an event of another user",
                    extra={"event_id": event.event_id, "run_id": event.run_id},
                )
                continue
            texts.append(frames.event_frame(event))
            last = event.event_id
        if not texts:
            return
        if len(texts) == 1:
            await self._send(texts[0])
        elif self._send_many is not None:
            await self._send_many(texts)
        else:
            for text in texts:
                await self._send(text)
        self.cursor = last
        stats = self._stats
        stats.events_sent += len(texts)
        now = time.time()
        lag = stats.delivery_lag
        for event in events:
            if event.user_id == user_id:
                ts = event.timestamp
                lag.observe(max(0.0, now - ts.seconds - ts.nanos / 1e9))
        if self._announce:
            self.replayed += len(texts)


def owner_matches(event: event_pb2.RunEvent, user_id: str) -> bool:
    """The isolation invariant: an event is written only to its owner's connections."""
    return bool(user_id) and event.user_id == user_id
