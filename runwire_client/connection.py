"""Opening one WebSocket to the gateway, and what each way of losing it means.

The client authenticates with the ``Authorization: Bearer`` header (a Python
program can set headers; browsers use the ``bearer.<jwt>`` subprotocol
instead) and offers the ``runwire.v1`` subprotocol. A handshake the gateway
refuses is a plain HTTP status (docs/protocol.md §1), mapped here to a
:class:`RunwireError` that says whether trying again can help.
"""

from __future__ import annotations

import asyncio
import enum
import json
from types import MappingProxyType
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus
from websockets.typing import Subprotocol

from runwire_client.errors import RunwireError

SUBPROTOCOL = "runwire.v1"
CLOSE_POLICY_VIOLATION = 1008

# Refusals that another attempt with the same request cannot fix.
_FATAL_STATUS = MappingProxyType(
    {400: "invalid_argument", 401: "unauthenticated", 403: "permission_denied", 404: "not_found"}
)
_RETRYABLE_STATUS = MappingProxyType({429: "resource_exhausted", 503: "unavailable"})


class HandshakeRefused(RunwireError):
    """The gateway answered the opening handshake with an HTTP error status."""

    def __init__(self, status: int, reason: str) -> None:
        code = _FATAL_STATUS.get(status) or _RETRYABLE_STATUS.get(status, "unavailable")
        super().__init__(code, f"HTTP {status}: {reason}" if reason else f"HTTP {status}")
        self.status = status

    @property
    def retryable(self) -> bool:
        return self.status not in _FATAL_STATUS


class Disposition(enum.Enum):
    """What a close means for the client."""

    RECONNECT = "reconnect"  # restart (1012), overload (1013), a crash (1006), 1011, 1000/1001 …
    REAUTHENTICATE = "reauthenticate"  # 1008: the token expired or is no longer accepted


def disposition(close_code: int | None) -> Disposition:
    if close_code == CLOSE_POLICY_VIOLATION:
        return Disposition.REAUTHENTICATE
    return Disposition.RECONNECT


def with_cursor(url: str, after: str | None) -> str:
    """``url`` with ``?after=<cursor>`` set (or removed when there is no cursor)."""
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k != "after"]
    if after is not None:
        query.append(("after", after))
    return urlunsplit(parts._replace(query=urlencode(query)))


async def open_socket(
    url: str, token: str, *, after: str | None, open_timeout_s: float
) -> tuple[ClientConnection, dict[str, Any]]:
    """Connect, authenticate and read the ``connected`` frame; return the socket and that frame.

    Raises :class:`HandshakeRefused` for an HTTP refusal, ``RunwireError("unauthenticated")``
    for a close with 1008 instead of a greeting, and ``RunwireError("unavailable")`` when the
    gateway cannot be reached or does not greet in time.
    """
    target = with_cursor(url, after)
    try:
        connection = await connect(
            target,
            additional_headers={"Authorization": f"Bearer {token}"},
            subprotocols=[Subprotocol(SUBPROTOCOL)],
            compression=None,
            open_timeout=open_timeout_s,
            max_size=1 << 24,
        )
    except InvalidStatus as exc:
        body = exc.response.body.decode("utf-8", "replace").strip() if exc.response.body else ""
        raise HandshakeRefused(exc.response.status_code, body) from None
    except (OSError, TimeoutError, InvalidHandshake) as exc:
        raise RunwireError("unavailable", f"cannot connect to {url}: {exc}") from None
    try:
        hello = json.loads(await asyncio.wait_for(connection.recv(), open_timeout_s))
    except ConnectionClosed as exc:
        # The gateway closes with 1008 before greeting when the token expired meanwhile.
        if exc.rcvd is not None and exc.rcvd.code == CLOSE_POLICY_VIOLATION:
            raise RunwireError("unauthenticated", exc.rcvd.reason or "token refused") from None
        raise RunwireError("unavailable", f"{url} closed before greeting: {exc}") from None
    except asyncio.CancelledError:
        connection.transport.abort()  # closing politely would await inside a cancellation
        raise
    except (TimeoutError, ValueError) as exc:
        await connection.close()
        raise RunwireError("unavailable", f"no greeting from {url}: {exc!r}") from None
    if not isinstance(hello, dict) or hello.get("type") != "connected":
        await connection.close()
        raise RunwireError("internal", f"unexpected first frame from the gateway: {hello!r}")
    return connection, hello
