"""One subscription on the event fabric, re-added from its cursor until it is closed.

:class:`Subscription` is what :mod:`gateway.feeds` builds the user's feed and a
connection's replay from. It owns the ``FabricAdd`` (which replica, which id),
the cursor (the last event received, or the resume point the bridge
confirmed), the credit window, and what happens when the bridge ends it or its
stream breaks:

* ``RESOURCE_EXHAUSTED`` (fell behind), ``UNAVAILABLE`` (draining, store lost,
  stream broken), ``DEADLINE_EXCEEDED`` → re-added from the cursor, at once the
  first time it fell behind, else after the gateway's back-off (doubling up to
  ``max_backoff_s``), on another replica when its own was the problem; after
  ``WARN_AFTER_FAILURES`` consecutive failures its sockets are told the stream
  is interrupted, after ``attempts`` they are closed with 1011;
* ``UNAUTHENTICATED`` → its sockets are closed with 1008;
* ``INVALID_ARGUMENT`` before anything arrived → a refused client cursor
  (a replay handles it), else fatal like any other code (1011).

Credit: the bridge may have ``credit`` events of it in flight. Whenever events
arrive or a socket it paces writes, :meth:`Subscription.grant` tops the window
up to ``credit`` minus what its sockets still have queued, in steps of at
least a quarter window so grants batch.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import grpc

from gateway.fabric import STREAM_LOST, FabricStream
from gateway.protocol import CLOSE_INTERNAL_ERROR, CLOSE_POLICY_VIOLATION
from runwire.bridge.v1 import bridge_pb2
from runwire.common.v1 import context_pb2, event_pb2
from runwire_common.owners import Owner

if TYPE_CHECKING:
    from gateway.feeds import Feeds

log = logging.getLogger("runwire.gateway.feeds")

RETRY_CODES = frozenset(
    {grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED}
)
# After this many consecutive failed attempts the client is told the stream is interrupted.
WARN_AFTER_FAILURES = 3
INTERRUPTED = "event stream interrupted; reconnecting"


@dataclass(frozen=True)
class FabricPolicy:
    """How subscriptions are (re)added and paced; one instance per gateway."""

    attempts: int
    backoff_s: float
    max_backoff_s: float
    max_batch: int = 0
    credit: int = 256


class Subscription:
    """One subscription at a time on the fabric, re-added from its cursor until closed."""

    __slots__ = (
        "_address",
        "_confirmed",
        "_failures",
        "_feeds",
        "_outstanding",
        "_retry",
        "_sid",
        "_stream",
        "closed",
        "cursor",
    )

    def __init__(self, feeds: Feeds, *, after: str) -> None:
        self._feeds = feeds
        self.cursor = after
        self._stream: FabricStream | None = None
        self._address = ""
        self._sid = 0
        self._outstanding = 0
        self._failures = 0
        self._confirmed = False
        self._retry: asyncio.TimerHandle | None = None
        self.closed = False

    # -- what subclasses provide ---------------------------------------------

    @property
    def owner(self) -> Owner:
        raise NotImplementedError

    def _mint(self) -> context_pb2.UserContext:
        raise NotImplementedError

    def _deliver(self, events: Sequence[event_pb2.RunEvent], before: str) -> None:
        raise NotImplementedError

    def _gap(self, gap: bridge_pb2.Gap) -> None:
        raise NotImplementedError

    def _replayed(self, done: bridge_pb2.ReplayComplete) -> None:
        raise NotImplementedError

    def _backlog(self) -> int:
        """Entries still queued at the sockets this subscription paces."""
        raise NotImplementedError

    def _rejected(self, message: str) -> bool:
        """Handle a refused cursor; ``False`` when it is not the client's cursor (then fatal)."""
        return False

    def _interrupted(self) -> None:
        raise NotImplementedError

    def _stopped(self, code: int, reason: str) -> None:
        raise NotImplementedError

    # -- lifetime ------------------------------------------------------------

    def open(self) -> None:
        feeds = self._feeds
        policy = feeds.policy
        stream = self._stream = feeds.replicas.choose(self.owner.key)
        self._address = stream.address
        self._confirmed = False
        self._outstanding = policy.credit
        self._sid = stream.add(
            self, self._mint(), after=self.cursor, max_batch=policy.max_batch, credit=policy.credit
        )

    def close(self) -> None:
        self.closed = True
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
        stream, self._stream = self._stream, None
        if stream is not None:
            stream.remove(self._sid, self.owner)

    def grant(self) -> None:
        """Return credit for what the sockets consumed, keeping ``credit`` events in the pipe."""
        stream = self._stream
        if stream is None:
            return
        window = self._feeds.policy.credit
        grant = window - self._backlog() - self._outstanding
        if grant > 0 and (grant * 4 >= window or self._outstanding <= 0):
            self._outstanding += grant
            stream.grant(self._sid, grant)

    # -- the stream's callbacks ----------------------------------------------

    def on_events(self, events: Sequence[event_pb2.RunEvent]) -> None:
        self._confirm()
        self._outstanding -= len(events)
        before = self.cursor
        self.cursor = events[-1].event_id
        self._deliver(events, before)
        self.grant()

    def on_gap(self, gap: bridge_pb2.Gap) -> None:
        self._confirm()
        self._gap(gap)

    def on_replay_complete(self, done: bridge_pb2.ReplayComplete) -> None:
        self._confirm()
        if done.resume_after:
            # Re-adding from here loses nothing, even before the first event.
            self.cursor = done.resume_after
        self._replayed(done)

    def on_ended(self, code: grpc.StatusCode, message: str, cursor: str) -> None:
        self._stream = None
        if self.closed:
            return
        if not self.cursor and cursor:
            self.cursor = cursor
        stats = self._feeds.stats
        if code == grpc.StatusCode.INVALID_ARGUMENT and not self._confirmed and self._rejected(message):
            return
        if code not in RETRY_CODES:
            if code == grpc.StatusCode.UNAUTHENTICATED:
                self._stopped(CLOSE_POLICY_VIOLATION, "identity no longer accepted")
            else:
                log.error(
                    "event subscription failed", extra={"grpc_code": code.name, "user_id": self.owner.user_id}
                )
                self._stopped(CLOSE_INTERNAL_ERROR, "event stream failed")
            return
        self._failures += 1
        stats.resubscribes += 1
        policy = self._feeds.policy
        if self._failures > policy.attempts:
            self._stopped(CLOSE_INTERNAL_ERROR, "event stream unavailable")
            return
        if self._failures == WARN_AFTER_FAILURES:
            self._interrupted()
        log.info(
            "resubscribing",
            extra={
                "user_id": self.owner.user_id,
                "after": self.cursor,
                "cause": code.name,
                "reason": message,
            },
        )
        if code == grpc.StatusCode.UNAVAILABLE and message != STREAM_LOST and self._address:
            # The replica ended it (draining, store lost): prefer another one for a while.
            self._feeds.replicas.mark_down(self._address)
        # A subscriber that fell behind comes back at once; a bridge that is away gets back-off.
        first_overflow = self._failures == 1 and code != grpc.StatusCode.UNAVAILABLE
        delay = (
            0.0 if first_overflow else min(policy.backoff_s * 2 ** (self._failures - 1), policy.max_backoff_s)
        )
        self._retry = asyncio.get_running_loop().call_later(delay, self._reopen)

    def _reopen(self) -> None:
        self._retry = None
        if not self.closed:
            try:
                self.open()
            except Exception:
                log.exception("re-adding a subscription failed")
                self.on_ended(grpc.StatusCode.UNAVAILABLE, STREAM_LOST, "")

    def _confirm(self) -> None:
        self._confirmed = True
        self._failures = 0
