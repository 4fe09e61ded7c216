"""Checks on published events, before anything is stored.

A batch is all-or-nothing: the first bad event rejects the whole call with
``INVALID_ARGUMENT`` naming it (``events[3].type …``).

Payloads are encoded once, at their source, and never parsed inside the
bridge: it checks their size and that they have the shape of one JSON object
(``{`` … ``}``), not their grammar. Every publisher holds the attestation
key and encodes payloads with a JSON encoder; the bytes go to the owner's
sockets as they came.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from bridge_service.bus import RunEvent
from runwire.common.v1 import context_pb2
from runwire_common.context import id_problem
from runwire_common.errors import InvalidArgument
from runwire_common.names import EVENT_TYPES
from runwire_common.timeutil import to_timestamp, utcnow

# What JSON counts as whitespace around a value (RFC 8259 §2).
JSON_WHITESPACE = " \t\n\r"
# Seqs are exact in every backend up to here (the Redis scripts compute in doubles).
MAX_SEQ = 2**53


@dataclass(frozen=True, slots=True)
class PublishLimits:
    max_events: int
    max_payload_bytes: int


def prepare_events(
    events: Sequence[RunEvent],
    ctx: context_pb2.UserContext,
    *,
    limits: PublishLimits,
) -> list[RunEvent]:
    """Validate ``events`` published by ``ctx`` and make them ready for the bus, in place.

    ``events`` belong to the request being served, so they are changed
    rather than copied: ``event_id`` cleared (the bridge assigns it) and a
    ``timestamp`` filled in when the source left it unset. ``seq`` may be 0:
    the bus then assigns the run's next seq.
    """
    if not events:
        raise InvalidArgument("events must not be empty")
    if len(events) > limits.max_events:
        raise InvalidArgument(f"at most {limits.max_events} events per Publish call, got {len(events)}")
    now = None
    for index, event in enumerate(events):
        _check_event(event, ctx, field=f"events[{index}]", max_payload_bytes=limits.max_payload_bytes)
        if event.event_id:
            event.event_id = ""
        if not event.HasField("timestamp"):
            now = now or to_timestamp(utcnow())
            if now is not None:
                event.timestamp.CopyFrom(now)
    return list(events)


def _check_event(
    event: RunEvent,
    ctx: context_pb2.UserContext,
    *,
    field: str,
    max_payload_bytes: int,
) -> None:
    if event.user_id != ctx.user_id:
        raise InvalidArgument(f"{field}.user_id must be the caller's user_context.user_id")
    if event.tenant_id != ctx.tenant_id:
        raise InvalidArgument(f"{field}.tenant_id must be the caller's user_context.tenant_id")
    if event.type not in EVENT_TYPES:
        raise InvalidArgument(f"{field}.type {event.type[:64]!r} is not an event type")
    problem = id_problem(event.run_id) if event.run_id else "is required"
    if problem is not None:
        raise InvalidArgument(f"{field}.run_id {problem}")
    if ctx.run_id and event.run_id != ctx.run_id:
        raise InvalidArgument(f"{field}.run_id must match user_context.run_id")
    if event.seq < 0:
        raise InvalidArgument(f"{field}.seq must not be negative (0 asks the bridge to assign the next)")
    if event.seq > MAX_SEQ:
        raise InvalidArgument(f"{field}.seq must be at most {MAX_SEQ}")
    _check_payload(event.payload_json, field=f"{field}.payload_json", max_bytes=max_payload_bytes)


def _check_payload(payload_json: str, *, field: str, max_bytes: int) -> None:
    # Characters first: the byte count is needed only near the limit (a character is ≤ 4 bytes).
    if len(payload_json) * 4 > max_bytes:
        size = len(payload_json.encode())
        if size > max_bytes:
            raise InvalidArgument(f"{field} is {size} bytes; at most {max_bytes} are allowed")
    text = payload_json.strip(JSON_WHITESPACE)
    if not (text.startswith("{") and text.endswith("}")):
        raise InvalidArgument(f"{field} must be one JSON object")
