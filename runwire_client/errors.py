"""The one exception the client raises."""

from __future__ import annotations


class RunwireError(Exception):
    """An error the gateway replied with, or the client's own failure to reach it.

    ``code`` is one of the protocol's error codes (docs/protocol.md §5):
    ``not_found``, ``invalid_argument``, ``unauthenticated``, ``unavailable`` …
    The client uses the same codes for what it detects itself: ``unavailable``
    when a request was in flight as the connection dropped (it is never resent:
    the server may have acted on it) or the gateway cannot be reached,
    ``unauthenticated`` when the gateway refused the token and no fresh one
    could be had, ``timeout`` when a reply did not come in time, ``gap`` when a
    followed run's terminal event was lost in a gap.
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(code, message)
        self.code = code
        self.message = message

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"
