"""Clients of the platform Runwire replaces: which connections are theirs, and what they see.

Those clients read flat keys at the top of each event frame (``tool_name``,
``results``, ``final_response`` …) where Runwire has them only inside
``payload``. A *legacy* connection gets Runwire's frame plus those keys,
copied from the payload (:func:`event_text`); every other connection gets
Runwire's frame unchanged. The envelope stays the one source of truth: the
projection appends keys to the encoded frame and never alters what is there,
and the values it copies were redacted at the source like the payload itself.

The projection is computed lazily, once per event, by the first legacy socket
that writes it (see :class:`gateway.outbox.EventFrame`), so a user without a
legacy socket never pays for it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any

from gateway.auth import SUBPROTOCOL
from gateway.commands import ClientId
from gateway.frames import dumps, server_time

CHAT_PATH = "/ws/chat"
PROFILE_LEGACY = "legacy"
REFRESH_REQUIRED = "refresh_required"

# Per event type: (top-level key, payload key) pairs copied onto a legacy frame. ``agent_started``
# needs nothing: its ``user_id``, ``thread_id`` and ``timestamp`` are in the envelope already.
COPIED: Mapping[str, tuple[tuple[str, str], ...]] = MappingProxyType(
    {
        "agent_thinking": (("reasoning", "reasoning"),),
        "tool_executing": (("tool_name", "tool_name"), ("parameters", "parameters")),
        "tool_completed": (("tool_name", "tool_name"), ("results", "result")),
        "agent_completed": (("status", "status"), ("final_response", "final_response")),
        "agent_error": (("status", "status"), ("error_message", "error_message")),
        "agent_death": (("status", "status"), ("death_cause", "death_cause"), ("message", "message")),
    }
)


def is_legacy(*, path: str, profile: str, from_jwt_entry: bool, offered: Sequence[str]) -> bool:
    """Whether a connection gets the legacy projection of event frames.

    One that authenticated with a ``jwt.``/``jwt-auth.`` entry, connected to
    ``/ws/chat`` or asked with ``?profile=legacy`` — unless it offered
    ``runwire.v1``: a client that speaks Runwire's protocol sees its frames.
    """
    if SUBPROTOCOL in offered:
        return False
    return from_jwt_entry or path == CHAT_PATH or profile == PROFILE_LEGACY


def legacy_fields(event_type: str, payload: Mapping[str, Any]) -> dict[str, Any]:
    """The flat keys of a legacy frame of ``event_type`` (empty for types that have none)."""
    fields = {flat: payload.get(key) for flat, key in COPIED.get(event_type, ())}
    if event_type == "tool_completed":
        duration = payload.get("duration_ms")
        ok = isinstance(duration, int | float) and not isinstance(duration, bool)
        fields["duration"] = duration if ok else 0
    elif event_type == "agent_death":
        fields["recovery_action"] = REFRESH_REQUIRED
    return fields


def event_text(text: str, event_type: str) -> str:
    """The legacy frame of an encoded event frame: ``text`` with the flat keys appended.

    ``text`` itself for types without flat keys (``agent_started``,
    ``partial_result`` …) and for a frame that cannot be read.
    """
    if event_type not in COPIED:
        return text
    try:
        frame = json.loads(text)
    except ValueError:
        return text
    payload = frame.get("payload") if isinstance(frame, dict) else None
    fields = legacy_fields(event_type, payload if isinstance(payload, dict) else {})
    # The envelope's keys come first and are left as they are: one encoding, keys added at the end.
    return f"{text[:-1]},{dumps(fields)[1:]}"


def pong_frame(client_id: ClientId | None, user_id: str) -> str:
    """``pong`` as the previous platform's clients read it: also ``timestamp`` and ``user_id``."""
    now = server_time()
    return dumps({"type": "pong", "id": client_id, "server_time": now, "timestamp": now, "user_id": user_id})
