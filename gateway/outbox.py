"""A socket's outbox: the frames waiting for one WebSocket, and how they degrade.

Every event of a user is encoded once (:class:`EventFrame`) and the same
frame object is queued in the outbox of each of the user's sockets. A socket
that writes slower than its user's events arrive degrades before it is cut
off: once its outbox holds ``coalesce_after`` entries, a ``partial_result``
that directly follows a queued ``partial_result`` of the same run (next seq)
is merged into it (:class:`MergedPartial`: ``content`` concatenated in order,
``index`` of the first, ``seq`` and ``event_id`` of the last, ``merged_from``
= the first seq). Lifecycle and tool events are never merged or dropped here;
past the outbox's bounds the socket is resumed from its cursor instead (see
:mod:`gateway.sink`).

The merging rules are pure functions and plain objects (:func:`can_merge`,
:class:`Outbox`), so they are tested without a socket.
"""

from __future__ import annotations

import json
from collections import deque
from typing import Any

from gateway import frames, legacy
from runwire.common.v1 import event_pb2
from runwire_common.owners import key_of

PARTIAL_RESULT = "partial_result"


class EventFrame:
    """One event's frame, encoded once and shared by every socket of its owner.

    It keeps what the sockets need as plain values, not the event message: a
    message read from a ``FabricResponse`` would keep the whole response (every
    other user's events in it) alive for as long as a slow socket holds the
    frame. A ``partial_result``, which may be merged later, keeps a detached
    copy of its event.

    The frame a legacy connection sees (:attr:`legacy_text`) is made from
    ``text`` by the first legacy socket that writes the frame and kept for the
    others: once per event, and never for a user without a legacy socket.
    """

    __slots__ = ("_legacy", "event_id", "owner", "partial", "run_id", "seq", "text", "ts", "type")
    _legacy: str  # unset until :attr:`legacy_text` is first read

    def __init__(self, event: event_pb2.RunEvent) -> None:
        self.text = frames.event_frame(event)
        self.event_id = event.event_id
        self.owner = key_of(event)  # runwire_common.owners: compared with the socket's owner
        self.run_id = event.run_id
        self.type = event.type
        self.seq = event.seq
        ts = event.timestamp
        self.ts = ts.seconds + ts.nanos / 1e9
        self.partial: event_pb2.RunEvent | None = None
        if event.type == PARTIAL_RESULT:
            self.partial = event_pb2.RunEvent()
            self.partial.CopyFrom(event)

    @property
    def size(self) -> int:
        return len(self.text)

    @property
    def legacy_text(self) -> str:
        try:
            return self._legacy
        except AttributeError:  # not made yet: ``__init__`` leaves the slot unset on purpose
            text = self._legacy = legacy.event_text(self.text, self.type)
            return text

    def lag(self, now: float) -> float:
        return max(0.0, now - self.ts)


class MergedPartial:
    """Consecutive ``partial_result`` events of one run, coalesced in one socket's outbox.

    The frame text is rendered once, when the writer takes it; until then
    merging one more delta is a list append.
    """

    __slots__ = ("contents", "first", "last", "payload", "size")

    def __init__(self, first: event_pb2.RunEvent, payload: dict[str, Any], content: str, size: int) -> None:
        self.first = first
        self.last = first
        self.payload = payload
        self.contents = [content]
        self.size = size

    @property
    def event_id(self) -> str:
        return self.last.event_id

    @property
    def text(self) -> str:
        payload = dict(self.payload)
        payload["content"] = "".join(self.contents)
        return frames.merged_event_frame(self.last, merged_from=self.first.seq, payload=payload)

    @property
    def legacy_text(self) -> str:
        # Rendered once per socket anyway (a merged frame is one socket's own).
        return legacy.event_text(self.text, self.last.type)

    def absorb(self, event: event_pb2.RunEvent, content: str) -> None:
        self.last = event
        self.contents.append(content)
        self.size += len(content)

    def lag(self, now: float) -> float:
        ts = self.last.timestamp
        return max(0.0, now - ts.seconds - ts.nanos / 1e9)


class Control:
    """A frame that is not an event (``gap``, ``resumed``, a stream error), or only a position.

    ``position`` is the cursor the socket has reached once this entry is
    written (``None``: it does not move the cursor).
    """

    __slots__ = ("position", "text")

    def __init__(self, text: str | None, position: str | None = None) -> None:
        self.text = text
        self.position = position

    @property
    def size(self) -> int:
        return len(self.text) if self.text is not None else 0


Entry = EventFrame | MergedPartial | Control


def partial_content(event: event_pb2.RunEvent) -> tuple[dict[str, Any], str] | None:
    """``(payload, content)`` of a mergeable ``partial_result``; ``None`` for anything else."""
    if event.type != PARTIAL_RESULT:
        return None
    try:
        payload = json.loads(event.payload_json)
    except ValueError:
        return None
    if not isinstance(payload, dict) or not isinstance(payload.get("content"), str):
        return None
    return payload, payload["content"]


def can_merge(last: event_pb2.RunEvent, event: event_pb2.RunEvent) -> bool:
    """Whether ``event`` may be merged into a queued ``partial_result`` ending with ``last``.

    Only the very next event of the same run, of the same owner, and only
    ``partial_result``: a merged frame stands for the seqs ``merged_from``..``seq``
    with no hole, and every other type must reach the client as itself.
    """
    return (
        event.type == PARTIAL_RESULT
        and last.type == PARTIAL_RESULT
        and event.run_id == last.run_id
        and event.user_id == last.user_id
        and event.tenant_id == last.tenant_id
        and event.seq == last.seq + 1
    )


class Outbox:
    """The entries waiting for one socket, oldest first, with their count and size."""

    __slots__ = ("_entries", "bytes")

    def __init__(self) -> None:
        self._entries: deque[Entry] = deque()
        self.bytes = 0

    def __len__(self) -> int:
        return len(self._entries)

    def push_event(self, frame: EventFrame, *, coalesce: bool) -> bool:
        """Queue ``frame``; with ``coalesce``, merge it into the last entry when allowed.

        Returns whether it was merged (one frame fewer to write).
        """
        entries = self._entries
        if coalesce and entries and self._merge(entries, frame):
            return True
        entries.append(frame)
        self.bytes += frame.size
        return False

    def _merge(self, entries: deque[Entry], frame: EventFrame) -> bool:
        last = entries[-1]
        if isinstance(last, Control) or frame.partial is None:
            return False
        tail = last.last if isinstance(last, MergedPartial) else last.partial
        if tail is None or not can_merge(tail, frame.partial):
            return False
        parsed = partial_content(frame.partial)
        if parsed is None:
            return False
        if isinstance(last, EventFrame):
            first = partial_content(tail)
            if first is None:
                return False
            last = entries[-1] = MergedPartial(tail, first[0], first[1], last.size)
        last.absorb(frame.partial, parsed[1])
        self.bytes += len(parsed[1])
        return True

    def push_control(self, control: Control) -> None:
        self._entries.append(control)
        self.bytes += control.size

    def take(self, limit: int, *, max_bytes: int | None = None) -> list[Entry]:
        """The oldest ``limit`` entries (all when fewer), removed from the outbox.

        With ``max_bytes``, no more entries than fit in it (but always the first).
        """
        entries = self._entries
        if max_bytes is None:
            taken = [entries.popleft() for _ in range(min(limit, len(entries)))]
            size = sum(entry.size for entry in taken)
        else:
            taken = []
            size = 0
            while entries and len(taken) < limit and (not taken or size + entries[0].size <= max_bytes):
                entry = entries.popleft()
                taken.append(entry)
                size += entry.size
        self.bytes -= size
        if not entries:
            self.bytes = 0
        return taken

    def drop_events(self) -> int:
        """Drop every queued event (merged or not), keep the other frames; return how many went."""
        kept: deque[Entry] = deque()
        for entry in self._entries:
            if isinstance(entry, Control) and entry.text is not None:
                # Its position lay after the dropped events: writing it must not claim them.
                entry.position = None
                kept.append(entry)
        dropped = len(self._entries) - len(kept)
        self._entries = kept
        self.bytes = sum(entry.size for entry in kept)
        return dropped
