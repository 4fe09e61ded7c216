"""The one thing the gateway reads of a frame it refuses without parsing it: the id.

Frames over the rate limits are refused before they are parsed, so a flood
costs a count rather than a parse. The refusal still carries the frame's
``id`` when the id leads the frame, as Runwire's clients send it, so the
client can tell which request was refused.
"""

from __future__ import annotations

import re

from gateway.commands import ClientId
from gateway.protocol import MAX_CLIENT_ID_CHARS

# A frame refused before it is parsed (rate limits) still gets its id back when the id is the
# frame's first member or follows a leading "type", as Runwire's clients send it: one anchored
# match over at most LEADING_ID_SCAN characters, so it costs the same for any frame.
LEADING_ID_SCAN = 256
_LEADING_ID = re.compile(
    r'\s*\{\s*(?:"type"\s*:\s*"[A-Za-z0-9_.]{0,64}"\s*,\s*)?"id"\s*:\s*'
    rf'(?:"([^"\\\x00-\x1f]{{0,{MAX_CLIENT_ID_CHARS}}})"|(-?(?:0|[1-9][0-9]{{0,14}})))\s*[,}}]'
)


def leading_id(message: str | bytes) -> ClientId | None:
    """The frame's ``id`` if it leads the frame (see :data:`_LEADING_ID`), read without parsing it."""
    if not isinstance(message, str):
        return None
    match = _LEADING_ID.match(message, 0, LEADING_ID_SCAN)
    if match is None:
        return None
    text, number = match.groups()
    return text if text is not None else int(number)
