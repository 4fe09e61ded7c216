"""Events: each one delivered once, each run's in ``seq`` order, to whoever listens.

Across a reconnect the gateway replays from the client's cursor, and a client
that resumes may be sent an event it already has (a replay racing the live
stream, a cursor older than what it processed). :class:`EventRouter` drops
those: an event is new only if its ``event_id`` is not among the recent ones
and its ``seq`` is above the last one seen for its run. A coalesced
``partial_result`` frame (one with ``merged_from``) stands for the seqs
``merged_from``..``seq`` and is delivered as the one frame it is.

Listeners:

* :meth:`EventRouter.subscribe` — every new event from then on. Events that
  arrive while nobody listens are kept (the newest ``max_backlog``) and go to
  the next listener first, so a program that starts listening late, or stops
  and starts again, misses nothing;
* :meth:`EventRouter.subscribe_run` — one run's events: those already received
  (kept per run while it is live and for the ``finished_runs_kept`` most
  recently finished runs), then the new ones, ending after its terminal event.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict, deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from runwire_client.errors import RunwireError

Event = dict[str, Any]

TERMINAL_EVENTS = frozenset({"agent_completed", "agent_error", "agent_cancelled", "agent_death"})


class _End:
    """Put on a listener's queue when the client closes: end, or raise ``error``."""

    def __init__(self, error: RunwireError | None) -> None:
        self.error = error


class EventStream:
    """One listener's queue; iterate it with ``async for``."""

    def __init__(self, run_id: str | None = None) -> None:
        self.run_id = run_id
        self._queue: asyncio.Queue[Event | _End] = asyncio.Queue()
        self.ended = False

    def put(self, event: Event) -> None:
        self._queue.put_nowait(event)

    def end(self, error: RunwireError | None = None) -> None:
        if not self.ended:
            self.ended = True
            self._queue.put_nowait(_End(error))

    async def __aiter__(self) -> AsyncIterator[Event]:
        while True:
            item = await self._queue.get()
            if isinstance(item, _End):
                if item.error is not None:
                    raise item.error
                return
            yield item


@dataclass
class _RunLog:
    events: list[Event] = field(default_factory=list)
    finished: bool = False
    listeners: list[EventStream] = field(default_factory=list)


def is_event(frame: dict[str, Any]) -> bool:
    """An event frame (docs/protocol.md §3), as opposed to a reply or a notice."""
    seq = frame.get("seq")
    return (
        isinstance(frame.get("event_id"), str)
        and isinstance(seq, int)
        and not isinstance(seq, bool)
        and isinstance(frame.get("run_id"), str)
    )


class EventRouter:
    """Deduplicates events, keeps the cursor, and hands events to listeners."""

    def __init__(
        self,
        *,
        last_event_id: str | None = None,
        max_backlog: int = 10_000,
        finished_runs_kept: int = 64,
        recent_ids_kept: int = 4096,
        runs_tracked: int = 10_000,
    ) -> None:
        self.last_event_id = last_event_id
        self._backlog: deque[Event] = deque(maxlen=max_backlog)
        self._listeners: list[EventStream] = []
        self._recent_ids: OrderedDict[str, None] = OrderedDict()
        self._recent_ids_kept = recent_ids_kept
        self._last_seq: OrderedDict[str, int] = OrderedDict()
        self._runs_tracked = runs_tracked
        self._logs: OrderedDict[str, _RunLog] = OrderedDict()
        self._finished_runs_kept = finished_runs_kept
        self._closed: _End | None = None

    # -- arriving events -------------------------------------------------------

    def accept(self, event: Event) -> bool:
        """Deliver ``event`` if it is new; False for a duplicate (dropped)."""
        event_id: str = event["event_id"]
        run_id = str(event["run_id"])
        seq = int(event["seq"])
        if event_id in self._recent_ids or seq <= self._last_seq.get(run_id, 0):
            return False
        self._remember(event_id, run_id, seq)
        self.last_event_id = event_id
        log = self._logs.get(run_id)
        if log is None:
            log = self._logs[run_id] = _RunLog()
        log.events.append(event)
        terminal = event.get("type") in TERMINAL_EVENTS
        for listener in log.listeners:
            listener.put(event)
            if terminal:
                listener.end()
        if terminal:
            log.finished = True
            log.listeners.clear()
            self._logs.move_to_end(run_id)
            self._forget_finished_runs()
        if self._listeners:
            for listener in self._listeners:
                listener.put(event)
        else:
            self._backlog.append(event)
        return True

    def _remember(self, event_id: str, run_id: str, seq: int) -> None:
        self._recent_ids[event_id] = None
        if len(self._recent_ids) > self._recent_ids_kept:
            self._recent_ids.popitem(last=False)
        self._last_seq[run_id] = seq
        self._last_seq.move_to_end(run_id)
        if len(self._last_seq) > self._runs_tracked:
            self._last_seq.popitem(last=False)

    def _forget_finished_runs(self) -> None:
        finished = [run_id for run_id, log in self._logs.items() if log.finished]
        for run_id in finished[: max(0, len(finished) - self._finished_runs_kept)]:
            del self._logs[run_id]

    # -- listeners -------------------------------------------------------------

    def subscribe(self) -> EventStream:
        """Every new event from now on, after the backlog if nobody else was listening."""
        stream = EventStream()
        if not self._listeners:
            while self._backlog:
                stream.put(self._backlog.popleft())
        self._listeners.append(stream)
        if self._closed is not None:
            stream.end(self._closed.error)
        return stream

    def unsubscribe(self, stream: EventStream) -> None:
        if stream in self._listeners:
            self._listeners.remove(stream)
        log = self._logs.get(stream.run_id or "")
        if log is not None and stream in log.listeners:
            log.listeners.remove(stream)

    def subscribe_run(self, run_id: str) -> EventStream:
        """The run's events received so far, then its new ones; ends after its terminal event."""
        stream = EventStream(run_id)
        log = self._logs.get(run_id)
        if log is None:
            log = self._logs[run_id] = _RunLog()
        for event in log.events:
            stream.put(event)
        if log.finished:
            stream.end()
        elif self._closed is not None:
            stream.end(self._closed.error)
        else:
            log.listeners.append(stream)
        return stream

    def followed_runs(self) -> list[str]:
        """The runs someone follows with :meth:`subscribe_run` whose terminal event has not come."""
        return [run_id for run_id, log in self._logs.items() if log.listeners and not log.finished]

    def finished(self, run_id: str) -> bool:
        log = self._logs.get(run_id)
        return log is not None and log.finished

    def end_run(self, run_id: str, error: RunwireError) -> None:
        """End the run's listeners with ``error``: its terminal event will never come."""
        log = self._logs.get(run_id)
        if log is not None:
            for stream in log.listeners:
                stream.end(error)
            log.listeners.clear()

    def close(self, error: RunwireError | None = None) -> None:
        """The client is closed: every listener ends (raising ``error`` when there is one)."""
        self._closed = _End(error)
        for stream in self._listeners:
            stream.end(error)
        for log in self._logs.values():
            for stream in log.listeners:
                stream.end(error)
            log.listeners.clear()
