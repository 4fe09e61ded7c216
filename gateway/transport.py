"""The gateway's WebSocket server connection: websockets' plus two things.

* The identity proven at the handshake (and the connection's profile)
  travels on the connection from ``process_request`` to the handler, in slots (so adding them does not grow
  websockets' per-connection ``__dict__``).
* :meth:`GatewayConnection.send_texts` writes several text messages with one
  flush and one drain; the outgoing frames of one flush reach the socket in one
  ``writelines`` (one ``writev`` on uvloop) instead of one ``write`` each.

Both lean on websockets 17's asyncio ``Connection`` (``send_context``,
``send_data``, ``protocol.send_text``); ``requirements`` pins that major.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

from websockets.asyncio.server import ServerConnection

from gateway.auth import Identity


class GatewayConnection(ServerConnection):
    """A server connection that carries the identity proven at the handshake."""

    __slots__ = ("after", "identity", "legacy")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.identity: Identity | None = None
        self.after = ""
        # Whether it gets the previous platform's frames (gateway.legacy.is_legacy).
        self.legacy = False

    async def send_texts(self, texts: Sequence[str]) -> None:
        """Send each of ``texts`` as one text message, in order, with a single flush.

        Same guarantees as one ``send`` per text (whole messages, never
        interleaved with another writer's, ``ConnectionClosed`` when closed),
        but one state check, one socket write and one drain for all of them.
        """
        async with self.send_context():
            for text in texts:
                self.protocol.send_text(text.encode())

    def send_data(self) -> None:
        """websockets' ``send_data``, with every pending frame written at once."""
        chunks = self.protocol.data_to_send()
        if len(chunks) > 1 and all(chunks):
            self.transport.writelines(chunks)
            return
        for data in chunks:
            if data:
                self.transport.write(data)
            elif self.transport.can_write_eof():
                # End of stream: half-close the TCP connection (as websockets does).
                with contextlib.suppress(Exception):  # uvloop can raise RuntimeError here
                    self.transport.write_eof()
            else:  # pragma: no cover - TLS transports cannot half-close
                self.transport.close()
