"""Requests correlated with their replies by ``id``.

Replies to different requests may arrive in any order (the gateway serves
them concurrently), so every request waits on a future of its own, keyed by
an id unique within the client.
"""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

from runwire_client.errors import RunwireError

Frame = dict[str, Any]


class PendingRequests:
    """The requests sent on the current connection that have no reply yet."""

    def __init__(self, prefix: str = "py") -> None:
        self._prefix = prefix
        self._counter = itertools.count(1)
        self._waiting: dict[str, asyncio.Future[Frame]] = {}

    def __len__(self) -> int:
        return len(self._waiting)

    def add(self) -> tuple[str, asyncio.Future[Frame]]:
        """A fresh correlation id and the future its reply will complete."""
        request_id = f"{self._prefix}-{next(self._counter)}"
        future: asyncio.Future[Frame] = asyncio.get_running_loop().create_future()
        self._waiting[request_id] = future
        return request_id, future

    def discard(self, request_id: str) -> None:
        self._waiting.pop(request_id, None)

    def resolve(self, frame: Frame) -> bool:
        """Complete the request ``frame`` answers; False when it answers none of ours."""
        request_id = frame.get("id")
        if not isinstance(request_id, str):
            return False
        future = self._waiting.pop(request_id, None)
        if future is None:
            return False
        if not future.done():
            future.set_result(frame)
        return True

    def fail_all(self, error: RunwireError) -> None:
        """The connection is gone: every waiting request fails, none is resent.

        The gateway may already have acted on a request whose reply was lost
        (a run started, an answer recorded), so resending it could act twice.
        """
        waiting, self._waiting = self._waiting, {}
        for future in waiting.values():
            if not future.done():
                future.set_exception(error)


def reply_or_raise(reply: Frame) -> Frame:
    """The reply itself, or the error frame raised as :class:`RunwireError`."""
    if reply.get("type") == "error":
        raise RunwireError(str(reply.get("code", "internal")), str(reply.get("message", "")))
    return reply
