"""The event emitter of one run: assigns ``seq`` and publishes in order.

Every run gets its own :class:`RunEmitter`. Events are built at the source
(``seq`` 1, 2, 3 …, timestamp, owner, payload encoded once; a value that is
already encoded, such as the run's input, is spliced in as :class:`RawJson`)
and queued; one publisher task per run drains the queue and publishes
whatever is pending as one batch, then waits for its acknowledgement before
the next: events reach the bridge in ``seq`` order, and what the agent emits
while a batch is unacknowledged becomes the next batch. Before it takes a
batch the task lets the event loop run one turn (no timer), so a burst due in
the same turn joins it: ``agent_started`` and what the agent emits right
after it leave together instead of one acknowledgement apart. Nothing waits
longer than that when the run is idle. At most
``max_pending`` events wait: an agent that emits faster than the bridge
accepts is slowed down. Payloads over the bridge's size limit are shortened
at the source (bulky values replaced, ``"truncated": true`` added).
What an agent says is redacted here (:mod:`execution_service.redaction`):
thinking and partial-result text, and custom events' payloads; Runwire's own
events are built from values redacted where they arise (tool calls, the
outcome). A secret split across two partial-result deltas is seen by neither
and is not masked.
:meth:`RunEmitter.aclose` flushes everything, the terminal event included,
before the run counts as finished; nothing can be emitted afterwards.

The bridge is idempotent per ``(run_id, seq)``, so a batch is retried while
the bridge is unavailable (with backoff, long enough to ride out a restart).
Events that cannot be delivered in the end are logged as lost, by seq and
type, never dropped silently.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from execution_service.outcomes import Outcome, TerminalEvent, terminal_event
from execution_service.redaction import redact, redact_text
from execution_service.retry import Backoff, retry_unavailable
from runwire.common.v1 import context_pb2, event_pb2
from runwire_common import names
from runwire_common.errors import RunwireError, Unavailable

Publish = Callable[[Sequence[event_pb2.RunEvent]], Awaitable[None]]

# Types only Runwire itself emits: lifecycle events (engine) and tool events (dispatcher).
RESERVED_EVENT_TYPES = frozenset(
    {names.AGENT_STARTED, names.TOOL_EXECUTING, names.TOOL_COMPLETED, names.INPUT_REQUIRED}
    | names.TERMINAL_EVENT_TYPES
)
TRUNCATED_TEXT_CHARS = 4096
TRUNCATION_MARK = "[TRUNCATED]"
DEFAULT_PUBLISH_RETRY_S = 20.0


class EmitterClosed(RuntimeError):
    """The run has finished; it cannot emit any more events."""


@dataclass(frozen=True, slots=True)
class RawJson:
    """A JSON value that is already encoded, spliced into a payload as it is (never re-encoded).

    The caller vouches that ``text`` is one valid JSON value.
    """

    text: str


def payload_encoder() -> json.JSONEncoder:
    """The encoder of event payloads: compact JSON, non-ASCII kept, no NaN or infinity."""
    return json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def encode_payload(payload: Mapping[str, Any], *, encoder: json.JSONEncoder | None = None) -> str:
    """The payload as compact JSON; ``ValueError`` if it is not a JSON object.

    ``encoder`` (from :func:`payload_encoder`) saves building one per call.
    :class:`RawJson` values are spliced in as they are, after the other keys.
    """
    encoder = encoder or payload_encoder()
    try:
        # A plain dict is encoded as it is; any other mapping through a dict copy.
        document = payload if type(payload) is dict else dict(payload)
        raw = [(key, value) for key, value in document.items() if type(value) is RawJson]
        if not raw:
            return encoder.encode(document)
        text = encoder.encode({key: value for key, value in document.items() if type(value) is not RawJson})
        members = ",".join(f"{encoder.encode(key)}:{value.text}" for key, value in raw)
        return f"{text[:-1]}{',' if len(text) > 2 else ''}{members}}}"
    except (TypeError, ValueError) as exc:
        raise ValueError(f"event payload is not JSON: {exc}") from None


def fit_payload(
    payload: Mapping[str, Any], *, max_bytes: int, encoder: json.JSONEncoder | None = None
) -> str:
    """The encoded payload, with bulky values truncated if it exceeds ``max_bytes``.

    The bridge refuses oversized payloads; shortening them at the source keeps
    the run's ``seq`` free of gaps. ``ValueError`` if even that does not fit.
    """
    encoded = encode_payload(payload, encoder=encoder)
    if len(encoded.encode()) <= max_bytes:
        return encoded
    size = len(encoded.encode())
    shortened: dict[str, Any] = {}
    for key, value in payload.items():
        if isinstance(value, str) and len(value) > TRUNCATED_TEXT_CHARS:
            shortened[key] = value[:TRUNCATED_TEXT_CHARS] + TRUNCATION_MARK
        elif isinstance(value, Mapping | list | tuple | RawJson):
            shortened[key] = f"{TRUNCATION_MARK} ({size} bytes)"
        else:
            shortened[key] = value
    shortened["truncated"] = True
    encoded = encode_payload(shortened, encoder=encoder)
    if len(encoded.encode()) > max_bytes:
        raise ValueError(f"event payload exceeds {max_bytes} bytes")
    return encoded


class RunEmitter:
    """Builds and publishes the events of one run (implements ``sdk.EventEmitter``)."""

    def __init__(
        self,
        *,
        user: context_pb2.UserContext,
        run_id: str,
        thread_id: str,
        agent: str,
        publish: Publish,
        log: logging.LoggerAdapter,  # type: ignore[type-arg]
        max_pending: int = 1000,
        max_payload_bytes: int = 64 * 1024,
        max_batch: int = 100,
        retry: Backoff | None = None,
    ) -> None:
        self._user_id = user.user_id
        self._tenant_id = user.tenant_id
        self._run_id = run_id
        self._thread_id = thread_id
        self._agent = agent
        self._publish = publish
        self._log = log
        self._max_batch = max_batch
        self._max_pending = max_pending
        self._max_payload_bytes = max_payload_bytes
        self._retry = retry or Backoff(budget_s=DEFAULT_PUBLISH_RETRY_S)
        self._queue: asyncio.Queue[event_pb2.RunEvent | None] = asyncio.Queue()
        self._space = asyncio.Event()
        self._seq = 0
        self._settled_seq = 0  # every event up to here was published or reported lost
        self._partial_index = 0
        self._closed = False
        self._task: asyncio.Task[None] | None = None
        self._encoder = payload_encoder()

    @property
    def last_seq(self) -> int:
        return self._seq

    @property
    def closed(self) -> bool:
        return self._closed

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._drain(), name=f"publish:{self._run_id}")

    # --- the agent-facing API (sdk.EventEmitter) ---

    async def thinking(
        self, reasoning: str, *, step: str | None = None, progress: float | None = None
    ) -> None:
        payload: dict[str, Any] = {"reasoning": redact_text(reasoning)}
        if step is not None:
            payload["step"] = redact_text(step)
        if progress is not None:
            if not 0.0 <= progress <= 1.0:
                raise ValueError("progress must be between 0 and 1")
            payload["progress"] = progress
        await self.emit_reserved(names.AGENT_THINKING, payload)

    async def partial(self, content: str) -> None:
        index = self._partial_index
        # The hot path: redact_text answers a delta with nothing to mask after a few substring tests.
        await self.emit_reserved(names.PARTIAL_RESULT, {"content": redact_text(content), "index": index})
        self._partial_index = index + 1

    async def emit(self, event_type: str, payload: Mapping[str, Any]) -> None:
        if event_type in RESERVED_EVENT_TYPES:
            raise ValueError(f"{event_type} events are emitted by Runwire itself")
        if not event_type or not event_type.replace("_", "").replace(".", "").isalnum():
            raise ValueError(f"invalid event type {event_type!r}")
        await self.emit_reserved(event_type, redact(payload))

    # --- Runwire's own API ---

    async def emit_reserved(self, event_type: str, payload: Mapping[str, Any]) -> int:
        """Queue an event of any type but a terminal one (see :meth:`emit_terminal`); returns its ``seq``."""
        if event_type in names.TERMINAL_EVENT_TYPES:
            raise ValueError(f"{event_type} is a terminal event: emit_terminal builds it")
        return await self._emit(event_type, payload)

    async def emit_terminal(self, outcome: Outcome, *, duration_ms: int) -> int:
        """Queue the run's terminal event, built by :func:`~execution_service.outcomes.terminal_event`."""
        return await self.emit_end(self.terminal(outcome, duration_ms=duration_ms))

    def terminal(self, outcome: Outcome, *, duration_ms: int) -> TerminalEvent:
        """The run's terminal event, encoded (and shortened to fit) as :meth:`emit_end` publishes it."""
        event_type, payload = terminal_event(outcome, duration_ms=duration_ms)
        return TerminalEvent(
            event_type, fit_payload(payload, max_bytes=self._max_payload_bytes, encoder=self._encoder)
        )

    async def emit_end(self, end: TerminalEvent) -> int:
        """Queue the run's terminal event as :meth:`terminal` built it (the registry holds the same)."""
        return await self._emit_encoded(end.type, end.payload_json)

    async def _emit(self, event_type: str, payload: Mapping[str, Any]) -> int:
        if self._closed:
            raise EmitterClosed(f"run {self._run_id} has finished")
        encoded = fit_payload(payload, max_bytes=self._max_payload_bytes, encoder=self._encoder)
        return await self._emit_encoded(event_type, encoded)

    async def _emit_encoded(self, event_type: str, encoded: str) -> int:
        if self._closed:
            raise EmitterClosed(f"run {self._run_id} has finished")
        # Back-pressure before the seq is taken, so a cancelled wait never leaves a gap.
        while self._queue.qsize() >= self._max_pending:
            self._space.clear()
            await self._space.wait()
        if self._closed:
            raise EmitterClosed(f"run {self._run_id} has finished")
        self._seq += 1
        event = event_pb2.RunEvent(
            seq=self._seq,
            type=event_type,
            run_id=self._run_id,
            thread_id=self._thread_id,
            user_id=self._user_id,
            tenant_id=self._tenant_id,
            agent=self._agent,
            payload_json=encoded,
        )
        # Now, to the microsecond, as Timestamp.GetCurrentTime() has it, without a datetime.
        seconds, micros = divmod(time.time_ns() // 1000, 1_000_000)
        event.timestamp.seconds = seconds
        event.timestamp.nanos = micros * 1000
        self.start()
        self._queue.put_nowait(event)
        return event.seq

    async def aclose(self) -> None:
        """Refuse further events and wait until every queued event was published."""
        if self._closed:
            return
        self._closed = True
        if self._task is None:
            return
        self._queue.put_nowait(None)
        await self._task

    def abort(self) -> None:
        """Stop publishing at once (process shutdown); pending events are logged as lost."""
        self._closed = True
        if self._task is not None and not self._task.done():
            self._task.cancel()
            if self._seq > self._settled_seq:
                self._log.error(
                    "events lost: publishing was stopped",
                    extra={"seq_from": self._settled_seq + 1, "seq_to": self._seq},
                )

    async def _drain(self) -> None:
        while True:
            first = await self._queue.get()
            # One turn of the event loop lets whatever the run emits in the same turn (an
            # agent's burst right behind agent_started) join this batch: no timer, no delay
            # beyond the callbacks already due.
            await asyncio.sleep(0)
            batch: list[event_pb2.RunEvent] = []
            done = first is None
            if first is not None:
                batch.append(first)
            while not done and len(batch) < self._max_batch and not self._queue.empty():
                item = self._queue.get_nowait()
                if item is None:
                    done = True
                else:
                    batch.append(item)
            self._space.set()
            if batch:
                await self._send(batch)
            if done:
                return

    async def _send(self, batch: list[event_pb2.RunEvent]) -> None:
        try:
            await retry_unavailable(
                lambda: self._publish(batch),
                self._retry,
                on_retry=lambda exc, pause: self._log.warning(
                    "bridge unavailable; retrying",
                    extra={"seq_from": batch[0].seq, "retry_in_s": round(pause, 3), "error": exc.message},
                ),
            )
        except Unavailable as exc:
            self._lost(batch, f"the bridge stayed unavailable for {self._retry.budget_s:g} s", exc.message)
        except RunwireError as exc:
            if len(batch) > 1:
                # Send one by one, so one refused event does not take its neighbours along.
                for event in batch:
                    await self._send([event])
                return
            self._lost(batch, "the bridge refused it", exc.message)
        except Exception as exc:  # noqa: BLE001 - the publisher must outlive any failure
            self._log.exception("publishing failed")
            self._lost(batch, "publishing failed", type(exc).__name__)
        self._settled_seq = max(self._settled_seq, batch[-1].seq)

    def _lost(self, batch: list[event_pb2.RunEvent], why: str, error: str) -> None:
        types = [event.type for event in batch]
        terminal = [t for t in types if t in names.TERMINAL_EVENT_TYPES]
        self._log.error(
            f"{'terminal event' if terminal else 'events'} lost: {why}",
            extra={"seq_from": batch[0].seq, "seq_to": batch[-1].seq, "types": types, "error": error},
        )
