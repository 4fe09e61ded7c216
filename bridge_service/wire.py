"""Protobuf wire framing of stored events, so delivery never re-parses or re-serializes them.

Events are kept serialized (``RunEvent`` wire format). A ``SubscribeResponse``
carrying them is framed around those bytes: ``event`` is field 1 and the
``events`` batch is field 4 (an ``EventBatch`` whose field 1 repeats the
events), each length-delimited; a ``FabricResponse`` likewise (``items``,
field 1: each a ``FabricItem`` with its ``subscription_id`` and one item).
Setting a scalar field of a stored event is appending it: a parser keeps the
last occurrence of a field, which is how the Redis script sets ``seq`` and
how ``event_id`` is set here.
"""

from __future__ import annotations

from collections.abc import Sequence

from bridge_service.bus import RunEvent
from bridge_service.event_ids import EventId

# Tags (field number << 3 | wire type): length-delimited 2, varint 0.
_EVENT_ID = 1 << 3 | 2  # RunEvent.event_id
_SEQ = 2 << 3 | 0  # RunEvent.seq
_RESPONSE_EVENT = bytes((1 << 3 | 2,))  # SubscribeResponse.event
_RESPONSE_EVENTS = bytes((4 << 3 | 2,))  # SubscribeResponse.events
_BATCH_EVENT = bytes((1 << 3 | 2,))  # EventBatch.events
_MAX_ID_LENGTH = 41  # "<ms>-<n>", each part at most 20 digits
_RESPONSE_ITEM = bytes((1 << 3 | 2,))  # FabricResponse.items
_ITEM_ID = bytes((1 << 3 | 0,))  # FabricItem.subscription_id
_FRAMING_PER_EVENT = 6  # tag and length of one event inside a batch, generously
# FabricItem's oneof fields (each length-delimited).
FABRIC_EVENTS = 2
FABRIC_GAP = 3
FABRIC_REPLAY_COMPLETE = 4
FABRIC_ENDED = 5


def varint(value: int) -> bytes:
    """``value`` (≥ 0) as a protobuf base-128 varint."""
    if value < 0x80:
        return bytes((value,))
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def event_id_field(event_id: EventId | bytes) -> bytes:
    """``RunEvent.event_id`` (an id, or its text as bytes) as wire bytes to append to a serialized event."""
    text = event_id if isinstance(event_id, bytes) else str(event_id).encode()
    return bytes((_EVENT_ID, len(text))) + text  # an id is at most 41 characters


def stored_event(event: RunEvent, event_id: EventId, seq: int) -> bytes:
    """``event`` serialized with its assigned ``seq`` and ``event_id`` (appended, so they win)."""
    return event.SerializeToString() + bytes((_SEQ,)) + varint(seq) + event_id_field(event_id)


def stored_event_id(body: bytes) -> EventId:
    """The ``event_id`` of an event made by :func:`stored_event` (its last field).

    The id text (digits and ``-``) ends the bytes and is preceded by its
    length, at most 41, which is never a digit or ``-``.
    """
    tail = body[-_MAX_ID_LENGTH:]
    ms, _, n = tail[len(tail.rstrip(b"0123456789-")) :].partition(b"-")
    return EventId(int(ms), int(n))


def event_response(body: bytes) -> bytes:
    """A serialized ``SubscribeResponse`` with ``event`` = the serialized event ``body``."""
    return _RESPONSE_EVENT + varint(len(body)) + body


def batch_response(bodies: Sequence[bytes]) -> bytes:
    """A serialized ``SubscribeResponse`` with ``events`` = the serialized events ``bodies``."""
    batch = b"".join([_BATCH_EVENT + varint(len(body)) + body for body in bodies])
    return _RESPONSE_EVENTS + varint(len(batch)) + batch


def fabric_item(subscription_id: int, field: int, body: bytes) -> bytes:
    """A framed ``FabricResponse.items`` entry: ``subscription_id`` and one serialized ``item`` field."""
    item = _ITEM_ID + varint(subscription_id) + bytes((field << 3 | 2,)) + varint(len(body)) + body
    return _RESPONSE_ITEM + varint(len(item)) + item


def fabric_event_items(subscription_id: int, bodies: Sequence[bytes], max_bytes: int) -> list[bytes]:
    """``bodies`` (stored events) as framed ``events`` items of at most about ``max_bytes`` each."""
    items: list[bytes] = []
    batch: list[bytes] = []
    size = 0
    for body in bodies:
        if batch and size + len(body) + _FRAMING_PER_EVENT > max_bytes:
            items.append(fabric_item(subscription_id, FABRIC_EVENTS, b"".join(batch)))
            batch, size = [], 0
        batch.append(_BATCH_EVENT + varint(len(body)) + body)
        size += len(body) + _FRAMING_PER_EVENT
    if batch:
        items.append(fabric_item(subscription_id, FABRIC_EVENTS, b"".join(batch)))
    return items
