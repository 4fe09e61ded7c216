"""Subscriptions per connected user, not per connection.

A :class:`UserFeed` is the one subscription of a user on this gateway: added
(``FabricAdd``, live only) when the user's first connection opens, removed when
the last one closes, and shared by all of the user's sockets (tabs). Each
event is encoded once and queued for every socket (:mod:`gateway.sink`).

A connection that asks for a replay (``?after=`` or a ``resume`` frame) gets a
:class:`ReplaySubscription` of its own on the same stream, after its cursor.
It feeds that connection alone until the connection has caught up with the
user's feed — the connection's cursor equals the feed's — and then the
connection goes back to the feed and the replay subscription is removed.
Both read the same per-user log, so that handover loses and repeats nothing.

Flow control: each subscription has a window of ``credit`` events. The bridge
may send that many before the gateway grants more; the gateway grants more as
the sockets fed by it write (an event counts as consumed once written,
coalesced away or dropped from a backlogged socket). For a feed, the least
backlogged socket sets the pace, so a slow tab does not hold the others back:
it degrades (coalescing), and past its outbox bound it is resumed from its
cursor instead (see :class:`gateway.sink.EventSink`).

Failures (re-adding from the cursor, on another replica when needed, the
close codes) are :class:`gateway.subscription.Subscription`'s.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import TYPE_CHECKING

from gateway import frames
from gateway.fabric import BridgeReplicas
from gateway.outbox import EventFrame
from gateway.protocol import ClientId
from gateway.stats import GatewayStats
from gateway.subscription import INTERRUPTED, FabricPolicy, Subscription
from runwire.bridge.v1 import bridge_pb2
from runwire.common.v1 import context_pb2, event_pb2
from runwire_common.owners import Owner

if TYPE_CHECKING:
    from gateway.sink import EventSink


class UserFeed(Subscription):
    """The subscription of one user on this gateway, shared by all of the user's sockets."""

    __slots__ = ("_owner", "_waiter", "sinks", "subscribed")

    def __init__(self, feeds: Feeds, owner: Owner) -> None:
        super().__init__(feeds, after="")
        self._owner = owner
        self.sinks: list[EventSink] = []
        # True once the bridge confirmed the subscription, or once it was given up.
        self.subscribed = False
        self._waiter: asyncio.Future[None] | None = None

    @property
    def owner(self) -> Owner:
        return self._owner

    async def wait_subscribed(self) -> None:
        if self.subscribed:
            return
        if self._waiter is None or self._waiter.done():
            self._waiter = asyncio.get_running_loop().create_future()
        await asyncio.shield(self._waiter)

    def _set_subscribed(self) -> None:
        self.subscribed = True
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _mint(self) -> context_pb2.UserContext:
        return self.sinks[0].minter.mint()

    def _deliver(self, events: Sequence[event_pb2.RunEvent], before: str) -> None:
        shared = [EventFrame(event) for event in events]  # encoded once for every tab
        for sink in self.sinks:
            sink.from_feed(shared, before)

    def _gap(self, gap: bridge_pb2.Gap) -> None:
        text = frames.gap_frame(gap, None)
        for sink in self.sinks:
            if sink.on_feed:
                sink.push_control(text)

    def _replayed(self, done: bridge_pb2.ReplayComplete) -> None:
        for sink in self.sinks:
            sink.feed_confirmed(self.cursor)
        self._set_subscribed()

    def _backlog(self) -> int:
        depths = [sink.depth for sink in self.sinks if sink.on_feed]
        return min(depths) if depths else 0

    def _interrupted(self) -> None:
        for sink in self.sinks:
            sink.push_error(INTERRUPTED)

    def _stopped(self, code: int, reason: str) -> None:
        self._set_subscribed()
        self._feeds.forget(self)  # a tab that opens now starts a new subscription
        for sink in list(self.sinks):
            sink.stop(code, reason)


class ReplaySubscription(Subscription):
    """One connection's own subscription after its cursor, until it catches up with the feed."""

    __slots__ = ("_announce", "_requested", "_sink", "client_id", "complete", "fallback", "replayed")

    def __init__(
        self,
        feeds: Feeds,
        sink: EventSink,
        *,
        after: str,
        announce: bool,
        client_id: ClientId | None,
        fallback: str,
    ) -> None:
        super().__init__(feeds, after=after)
        self._requested = after
        self._sink = sink
        # Where the connection goes on from if the bridge refuses ``after``.
        self.fallback = fallback
        self._announce = announce
        self.client_id = client_id
        self.complete = False
        self.replayed = 0

    @property
    def owner(self) -> Owner:
        return self._sink.owner

    def _mint(self) -> context_pb2.UserContext:
        return self._sink.minter.mint()

    def _deliver(self, events: Sequence[event_pb2.RunEvent], before: str) -> None:
        queued = self._sink.from_replay([EventFrame(event) for event in events])
        if not self.complete:
            self.replayed += queued

    def _gap(self, gap: bridge_pb2.Gap) -> None:
        self._sink.push_control(frames.gap_frame(gap, self.client_id))

    def _replayed(self, done: bridge_pb2.ReplayComplete) -> None:
        if self.complete:
            return
        self.complete = True
        if self._announce:
            self._sink.push_control(frames.resumed_frame(self.client_id, self.replayed), position=self.cursor)
        else:
            self._sink.push_position(self.cursor)
        self.client_id = None
        self._sink.replay_caught_up()

    def _backlog(self) -> int:
        return self._sink.depth

    def _rejected(self, message: str) -> bool:
        if not self._announce or self.cursor != self._requested:
            return False  # not the client's cursor: one the bridge gave us, so a real failure
        self._sink.cursor_rejected(message, self.client_id, fallback=self.fallback)
        return True

    def _interrupted(self) -> None:
        self._sink.push_error(INTERRUPTED)

    def _stopped(self, code: int, reason: str) -> None:
        self._sink.stop(code, reason)


class Feeds:
    """The users subscribed through this gateway: owner key (``runwire_common.owners``) → :class:`UserFeed`."""

    def __init__(self, replicas: BridgeReplicas, *, policy: FabricPolicy, stats: GatewayStats) -> None:
        self.replicas = replicas
        self.policy = policy
        self.stats = stats
        self._feeds: dict[str, UserFeed] = {}

    def __len__(self) -> int:
        return len(self._feeds)

    def get(self, owner_key: str) -> UserFeed | None:
        return self._feeds.get(owner_key)

    def join(self, sink: EventSink) -> UserFeed:
        """Add ``sink`` to its user's feed, adding the user's subscription if it is the first."""
        feed = self._feeds.get(sink.owner_key)
        if feed is None:
            feed = self._feeds[sink.owner_key] = UserFeed(self, sink.owner)
            feed.sinks.append(sink)
            self.stats.users_subscribed = len(self._feeds)
            feed.open()
        else:
            feed.sinks.append(sink)
        return feed

    def leave(self, sink: EventSink) -> None:
        """Remove ``sink``; the user's subscription goes with their last socket."""
        feed = sink.feed
        if feed is None or sink not in feed.sinks:
            return
        feed.sinks.remove(sink)
        if not feed.sinks:
            self.forget(feed)
            feed.close()
        else:
            feed.grant()  # the leaving socket may have been the one holding credit back

    def forget(self, feed: UserFeed) -> None:
        if self._feeds.get(feed.owner.key) is feed:
            del self._feeds[feed.owner.key]
            self.stats.users_subscribed = len(self._feeds)

    def replay(
        self, sink: EventSink, *, after: str, announce: bool, client_id: ClientId | None, fallback: str
    ) -> ReplaySubscription:
        subscription = ReplaySubscription(
            self, sink, after=after, announce=announce, client_id=client_id, fallback=fallback
        )
        subscription.open()
        return subscription
