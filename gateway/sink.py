"""The event side of one WebSocket: its outbox, its writer, and its place in the user's log.

Frames for a socket are queued (never written) by whoever produced them —
the fabric stream's reader, shared by every user of a bridge replica, must
never wait for one socket. A writer task drains the queue and exists only
while there is something to write, so an idle connection holds no task, no
queue and no future for its events.

Each socket tracks two cursors:

* ``cursor`` — the last event queued for it (its position in the user's log);
  it is how a socket that replays on its own subscription knows when it has
  caught up with its user's feed (equal cursors: see :mod:`gateway.feeds`);
* ``written`` — the last event actually written (or the point it joined at):
  a socket that is resumed after a backlog, or whose replay cursor was
  refused, goes on from there, so it loses nothing and repeats nothing.

Back-pressure: past ``coalesce_after`` queued entries, consecutive
``partial_result`` events of one run are merged (:mod:`gateway.outbox`); past
``max_frames`` entries or ``max_bytes`` the socket's queued events are
dropped, it stops taking its user's events, and once its writer has written
what was left it is resumed from ``written`` on a replay subscription of its
own. The owner of every event is checked here, once per socket, as it is
queued.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from websockets.exceptions import ConnectionClosed

from gateway import frames
from gateway.calls import ContextMinter
from gateway.outbox import Control, EventFrame, Outbox
from gateway.protocol import CLOSE_TRY_AGAIN_LATER, INVALID_ARGUMENT, UNAVAILABLE, ClientId
from gateway.stats import GatewayStats
from gateway.transport import GatewayConnection
from runwire_common.logs import bind
from runwire_common.owners import Owner

if TYPE_CHECKING:
    from gateway.feeds import Feeds, ReplaySubscription, UserFeed

log = logging.getLogger("runwire.gateway.sink")

# Frames written with one flush at most (one writelines, one drain), and their bytes at most
# (past the first frame): what one flush can add to a socket's buffer stays bounded.
WRITE_BATCH = 256
WRITE_BATCH_BYTES = 256 * 1024


@dataclass(frozen=True)
class OutboxLimits:
    """When a socket's outbox starts coalescing, and when it is resumed instead; one per gateway."""

    coalesce_after: int = 32
    max_frames: int = 1000
    max_bytes: int = 4 * 1024 * 1024


def _stopped_after_leaving(code: int, reason: str) -> None:
    """What a sink that has left does when told its event stream stopped: nothing (it is closed)."""


class EventSink:
    """Queues a user's events for one socket and writes them; one per connection."""

    __slots__ = (
        "_closed",
        "_feeds",
        "_limits",
        "_on_stop",
        "_outbox",
        "_replay",
        "_send_timeout_s",
        "_stats",
        "_writer",
        "_writing",
        "_ws",
        "connection_id",
        "cursor",
        "feed",
        "legacy",
        "minter",
        "owner",
        "owner_key",
        "send_lock",
        "stalled",
        "written",
    )

    def __init__(
        self,
        websocket: GatewayConnection,
        *,
        owner: Owner,
        connection_id: str,
        minter: ContextMinter,
        feeds: Feeds,
        limits: OutboxLimits,
        stats: GatewayStats,
        on_stop: Callable[[int, str], None],
        legacy: bool = False,
        send_timeout_s: float = 10.0,
    ) -> None:
        self._ws = websocket
        # Writes the legacy projection of event frames (see :mod:`gateway.legacy`).
        self.legacy = legacy
        self.owner = owner
        self.owner_key = owner.key
        self.connection_id = connection_id
        self.minter = minter
        self._feeds = feeds
        self._limits = limits
        self._stats = stats
        self._on_stop = on_stop
        self._send_timeout_s = send_timeout_s
        self.send_lock = asyncio.Lock()
        self._outbox: Outbox | None = None
        self._writer: asyncio.Task[None] | None = None
        self._writing = 0
        self.feed: UserFeed | None = None
        self._replay: ReplaySubscription | None = None
        self.cursor = ""
        self.written = ""
        self.stalled = False
        self._closed = False

    # -- membership ------------------------------------------------------------

    def join(self, after: str) -> UserFeed:
        """Join the user's feed; with ``after``, replay on an own subscription first."""
        feed = self.feed = self._feeds.join(self)
        if after:
            self.resync(after, announce=True, client_id=None, fallback="")
        elif feed.subscribed:
            self.cursor = self.written = feed.cursor
        return feed

    def leave(self) -> None:
        self._closed = True
        self._drop_replay()
        self._feeds.leave(self)
        self.feed = None
        self._outbox = None
        # The session's callback is the sink's only way back to the session that holds it: with
        # it gone, reference counting frees a closed connection without the cyclic collector.
        self._on_stop = _stopped_after_leaving
        if self._writer is not None:
            self._writer.cancel()

    @property
    def on_feed(self) -> bool:
        """Whether this socket takes its events from the user's feed right now."""
        return self._replay is None and not self.stalled

    @property
    def depth(self) -> int:
        """Entries queued or being written."""
        return (len(self._outbox) if self._outbox is not None else 0) + self._writing

    # -- events ----------------------------------------------------------------

    def from_feed(self, shared: Sequence[EventFrame], before: str) -> None:
        """Events of the user's feed, which was at ``before`` (the cursor before them)."""
        if self.stalled or self._closed:
            return
        replay = self._replay
        if replay is None:
            self._queue(shared)
            return
        if not replay.complete:
            return
        if self.cursor == before:
            self._drop_replay()
            self._queue(shared)
            return
        for i, frame in enumerate(shared):
            if frame.event_id == self.cursor:
                self._drop_replay()
                self._queue(shared[i + 1 :])
                return

    def from_replay(self, own: Sequence[EventFrame]) -> int:
        """Events of this socket's replay subscription; returns how many were queued."""
        if self._closed:
            return 0
        queued = self._queue(own)
        self.replay_caught_up()
        return queued

    def replay_caught_up(self) -> None:
        """Go back to the user's feed once this socket's replay is where the feed is."""
        replay, feed = self._replay, self.feed
        if replay is None or feed is None or not replay.complete:
            return
        if not self.cursor:
            self.cursor = replay.cursor
        if self.cursor == feed.cursor and feed.subscribed:
            self._drop_replay()

    def feed_confirmed(self, cursor: str) -> None:
        """The user's feed is live at ``cursor``: a socket that joined before starts there."""
        if self.on_feed and not self.cursor:
            self.cursor = cursor
            if not self.written:
                self.written = cursor

    def _queue(self, batch: Sequence[EventFrame]) -> int:
        if not batch:
            return 0
        outbox = self._outbox
        if outbox is None:
            outbox = self._outbox = Outbox()
        stats = self._stats
        owner = self.owner_key
        coalesce_after = self._limits.coalesce_after
        queued = 0
        for frame in batch:
            self.cursor = frame.event_id
            if frame.owner != owner or not owner:
                stats.events_blocked_owner_mismatch += 1
                bind(log, user_id=self.owner.user_id, connection_id=self.connection_id).warning(
                    "dropped an event of another user",
                    extra={"event_id": frame.event_id, "run_id": frame.run_id},
                )
                continue
            queued += 1
            if outbox.push_event(frame, coalesce=len(outbox) >= coalesce_after):
                stats.partials_coalesced += 1
        if len(outbox) > self._limits.max_frames or outbox.bytes > self._limits.max_bytes:
            self._backlogged()
        self._kick()
        return queued

    def push_control(self, text: str, *, position: str | None = None) -> None:
        if self._closed:
            return
        if self._outbox is None:
            self._outbox = Outbox()
        self._outbox.push_control(Control(text, position))
        if position is not None:
            self.cursor = position
        self._kick()

    def push_position(self, position: str) -> None:
        """Mark that once what is queued is written, the socket is at ``position``."""
        if self.depth == 0:
            self.written = position
        else:
            if self._outbox is None:
                self._outbox = Outbox()
            self._outbox.push_control(Control(None, position))
            self._kick()
        self.cursor = position

    def push_error(self, message: str) -> None:
        self.push_control(frames.error_frame(None, UNAVAILABLE, message))

    # -- replays, resumes ------------------------------------------------------

    def resync(self, after: str, *, announce: bool, client_id: ClientId | None, fallback: str) -> None:
        """Start over after ``after`` (the socket's queued events are dropped)."""
        self._drop_replay()
        if self._outbox is not None:
            self._outbox.drop_events()
        self.stalled = False
        feed = self.feed
        if feed is None:
            return
        if not after:
            # Live only: take the feed's events from now on.
            self.cursor = self.written = feed.cursor
            return
        self.cursor = self.written = after
        self._replay = self._feeds.replay(
            self, after=after, announce=announce, client_id=client_id, fallback=fallback
        )
        feed.grant()  # this socket no longer paces the feed

    def resume(self, after: str, client_id: ClientId) -> None:
        """A ``resume`` frame: replay after ``after``; a refused cursor goes on from here."""
        self.resync(after, announce=True, client_id=client_id, fallback=self.written)

    def cursor_rejected(self, message: str, client_id: ClientId | None, *, fallback: str) -> None:
        """The bridge refused the client's cursor: say so and go on from where the socket was."""
        self._replay = None
        self.resync(fallback, announce=False, client_id=None, fallback=fallback)
        self.push_control(frames.error_frame(client_id, INVALID_ARGUMENT, message))

    def stop(self, code: int, reason: str) -> None:
        """The event stream cannot be kept up: the connection closes with ``code``."""
        self._drop_replay()
        self._on_stop(code, reason)

    def _drop_replay(self) -> None:
        replay, self._replay = self._replay, None
        if replay is not None:
            replay.close()

    def _backlogged(self) -> None:
        """Past the outbox's bounds: drop its events, resume from ``written`` once drained."""
        if self._outbox is not None:
            self._outbox.drop_events()
        self._drop_replay()
        self.stalled = True
        self._stats.backlog_resumes += 1
        bind(log, user_id=self.owner.user_id, connection_id=self.connection_id).info(
            "socket backlogged; resuming it from its cursor", extra={"after": self.written}
        )
        if self.feed is not None:
            self.feed.grant()

    # -- the writer ------------------------------------------------------------

    async def send(self, text: str) -> None:
        """Write one frame (a reply) between the writer's batches, within the send timeout."""
        async with self.send_lock:
            await self._timed(self._ws.send(text))

    async def _timed(self, write: Awaitable[None]) -> None:
        """``write``, or — when the client takes nothing for ``send_timeout_s`` — close (1013).

        A client that stops reading fills the socket's buffer (``write_limit_bytes``)
        and every write then waits; it is closed instead of holding its queue, and it
        resumes from the last event it did read with ``?after=``.
        """
        try:
            async with asyncio.timeout(self._send_timeout_s):
                await write
        except TimeoutError:
            if not self._closed:
                self._closed = True
                self._stats.slow_consumers_closed += 1
                bind(log, user_id=self.owner.user_id, connection_id=self.connection_id).warning(
                    "closing: the client does not read", extra={"after": self.written}
                )
                self.stop(CLOSE_TRY_AGAIN_LATER, "not reading: reconnect with ?after=<last event_id>")
            raise ConnectionClosed(None, None) from None

    def _kick(self) -> None:
        if self._writer is None and self._outbox is not None and len(self._outbox):
            self._writer = asyncio.create_task(self._write())

    async def _write(self) -> None:
        stats = self._stats
        legacy = self.legacy
        try:
            while self._outbox is not None and len(self._outbox):
                batch = self._outbox.take(WRITE_BATCH, max_bytes=WRITE_BATCH_BYTES)
                self._writing = len(batch)
                texts: list[str] = []
                position: str | None = None
                events = 0
                for entry in batch:
                    if isinstance(entry, Control):
                        if entry.text is not None:
                            texts.append(entry.text)
                        if entry.position is not None:
                            position = entry.position
                    else:
                        texts.append(entry.legacy_text if legacy else entry.text)
                        position = entry.event_id
                        events += 1
                if texts:
                    async with self.send_lock:
                        if len(texts) == 1:
                            await self._timed(self._ws.send(texts[0]))
                        else:
                            await self._timed(self._ws.send_texts(texts))
                if position is not None:
                    self.written = position
                self._writing = 0
                if events:
                    stats.events_sent += events
                    now = time.time()
                    lag = stats.delivery_lag
                    for entry in batch:
                        if not isinstance(entry, Control):
                            lag.observe(entry.lag(now))
                source = self._replay if self._replay is not None else (self.feed if self.on_feed else None)
                if source is not None:
                    source.grant()
        except ConnectionClosed:
            self._closed = True
        finally:
            self._writer = None
            self._writing = 0
            if self._outbox is not None and not len(self._outbox):
                self._outbox = None  # an idle socket keeps no queue
        if self.stalled and not self._closed:
            self.resync(self.written, announce=False, client_id=None, fallback=self.written)
