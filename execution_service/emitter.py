"""The event emitter of one run: assigns ``seq`` and publishes in order.

Every run gets its own :class:`RunEmitter`. Events are built at the source
(``seq`` 1, 2, 3 …, timestamp, owner, payload encoded once) and queued; one
publisher task per run drains the queue and sends whatever is pending as one
``Publish`` call, so events reach the bridge in ``seq`` order. At most
``max_pending`` events wait: an agent that emits faster than the bridge
accepts is slowed down. Payloads over the bridge's size limit are shortened
at the source (bulky values replaced, ``"truncated": true`` added).
:meth:`RunEmitter.aclose` flushes everything, the terminal event included,
before the run counts as finished; nothing can be emitted afterwards.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp

from runwire.common.v1 import context_pb2, event_pb2
from runwire_common import names
from runwire_common.errors import RunwireError, Unavailable

Publish = Callable[[Sequence[event_pb2.RunEvent]], Awaitable[None]]

# Types only Runwire itself emits: lifecycle events (engine) and tool events (dispatcher).
RESERVED_EVENT_TYPES = frozenset(
    {names.AGENT_STARTED, names.TOOL_EXECUTING, names.TOOL_COMPLETED} | names.TERMINAL_EVENT_TYPES
)
TRUNCATED_TEXT_CHARS = 4096
TRUNCATION_MARK = "[TRUNCATED]"
PUBLISH_ATTEMPTS = 3
RETRY_BACKOFF_S = 0.2


class EmitterClosed(RuntimeError):
    """The run has finished; it cannot emit any more events."""


def encode_payload(payload: Mapping[str, Any]) -> str:
    """The payload as compact JSON; ``ValueError`` if it is not a JSON object."""
    try:
        return json.dumps(dict(payload), separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"event payload is not JSON: {exc}") from None


def fit_payload(payload: Mapping[str, Any], *, max_bytes: int) -> str:
    """The encoded payload, with bulky values truncated if it exceeds ``max_bytes``.

    The bridge refuses oversized payloads; shortening them at the source keeps
    the run's ``seq`` free of gaps. ``ValueError`` if even that does not fit.
    """
    encoded = encode_payload(payload)
    if len(encoded.encode()) <= max_bytes:
        return encoded
    size = len(encoded.encode())
    shortened: dict[str, Any] = {}
    for key, value in payload.items():
        if isinstance(value, str) and len(value) > TRUNCATED_TEXT_CHARS:
            shortened[key] = value[:TRUNCATED_TEXT_CHARS] + TRUNCATION_MARK
        elif isinstance(value, Mapping | list | tuple):
            shortened[key] = f"{TRUNCATION_MARK} ({size} bytes)"
        else:
            shortened[key] = value
    shortened["truncated"] = True
    encoded = encode_payload(shortened)
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
        self._queue: asyncio.Queue[event_pb2.RunEvent | None] = asyncio.Queue()
        self._space = asyncio.Event()
        self._seq = 0
        self._partial_index = 0
        self._closed = False
        self._task: asyncio.Task[None] | None = None

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
        payload: dict[str, Any] = {"reasoning": reasoning}
        if step is not None:
            payload["step"] = step
        if progress is not None:
            if not 0.0 <= progress <= 1.0:
                raise ValueError("progress must be between 0 and 1")
            payload["progress"] = progress
        await self.emit_reserved(names.AGENT_THINKING, payload)

    async def partial(self, content: str) -> None:
        index = self._partial_index
        await self.emit_reserved(names.PARTIAL_RESULT, {"content": content, "index": index})
        self._partial_index = index + 1

    async def emit(self, event_type: str, payload: Mapping[str, Any]) -> None:
        if event_type in RESERVED_EVENT_TYPES:
            raise ValueError(f"{event_type} events are emitted by Runwire itself")
        if not event_type or not event_type.replace("_", "").replace(".", "").isalnum():
            raise ValueError(f"invalid event type {event_type!r}")
        await self.emit_reserved(event_type, payload)

    # --- Runwire's own API ---

    async def emit_reserved(self, event_type: str, payload: Mapping[str, Any]) -> int:
        """Queue an event of any type; returns its ``seq``."""
        if self._closed:
            raise EmitterClosed(f"run {self._run_id} has finished")
        encoded = fit_payload(payload, max_bytes=self._max_payload_bytes)
        # Back-pressure before the seq is taken, so a cancelled wait never leaves a gap.
        while self._queue.qsize() >= self._max_pending:
            self._space.clear()
            await self._space.wait()
        if self._closed:
            raise EmitterClosed(f"run {self._run_id} has finished")
        self._seq += 1
        timestamp = Timestamp()
        timestamp.GetCurrentTime()
        event = event_pb2.RunEvent(
            seq=self._seq,
            type=event_type,
            run_id=self._run_id,
            thread_id=self._thread_id,
            user_id=self._user_id,
            tenant_id=self._tenant_id,
            agent=self._agent,
            timestamp=timestamp,
            payload_json=encoded,
        )
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
        """Stop publishing at once (process shutdown); pending events are dropped."""
        self._closed = True
        if self._task is not None:
            self._task.cancel()

    async def _drain(self) -> None:
        while True:
            first = await self._queue.get()
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
        for attempt in range(1, PUBLISH_ATTEMPTS + 1):
            try:
                await self._publish(batch)
                return
            except Unavailable as exc:
                if attempt == PUBLISH_ATTEMPTS:
                    self._log.error(
                        "events lost: the bridge is unavailable",
                        extra={"seq_from": batch[0].seq, "seq_to": batch[-1].seq, "error": exc.message},
                    )
                    return
                await asyncio.sleep(RETRY_BACKOFF_S * attempt)
            except RunwireError as exc:
                if len(batch) > 1:
                    # Send one by one, so one refused event does not take its neighbours along.
                    for event in batch:
                        await self._send([event])
                    return
                self._log.error(
                    "event refused by the bridge",
                    extra={"seq_from": batch[0].seq, "seq_to": batch[-1].seq, "error": exc.message},
                )
                return
            except Exception:  # noqa: BLE001 - the publisher must outlive any failure
                self._log.exception(
                    "events lost: publishing failed",
                    extra={"seq_from": batch[0].seq, "seq_to": batch[-1].seq},
                )
                return
