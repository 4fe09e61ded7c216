"""The server side of a bidirectional stream that answers every request once.

The bridge's ``PublishStream`` and the registry's ``WriteRuns`` both read
requests, start work for each, and send one answer per request as the work
finishes. :class:`AnsweringStream` is what they share: the bound on requests
read and not yet answered (beyond it the stream stops reading, and HTTP/2 flow
control pushes back on the sender), the answers leaving in completion order,
and the end once the sender has half-closed (or reading was stopped) and every
request read has been answered.

Bundles (:mod:`runwire_common.bundles`): every request a bundle carries is
dispatched and answered on its own, and counts against the bound on its own.
With ``bundle_answers`` (the sender announced that it reads them), the answers
that are ready together leave as one message.

:class:`CarryingStream` adds what the registry's ``WriteRuns`` and the
execution service's ``StartRuns`` share on top of that: a task per request,
refusals answered with their status, and the drain.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from contextlib import aclosing
from typing import Generic, TypeVar

import grpc

from runwire_common.bundles import Bundling, bundled, take, unbundled
from runwire_common.servicer import read_failure, status_of

Req = TypeVar("Req", bound=Bundling)
Resp = TypeVar("Resp", bound=Bundling)


class AnsweringStream(Generic[Req, Resp]):
    """One call's reading, its bound, and its answers; :meth:`serve` runs it.

    ``dispatch`` starts the work for a request read (it must not block); the
    work hands its answer to :meth:`answer`, exactly once per request. With
    ``stop``, reading stops when that event is set (a request the reader was
    waiting for is left unread); the requests already read are still answered.
    """

    def __init__(
        self,
        *,
        dispatch: Callable[[Req], None],
        max_in_flight: int,
        request_name: str,
        stop: asyncio.Event | None = None,
        bundle_answers: bool = False,
        on_read: Callable[[int], None] | None = None,
    ) -> None:
        """``on_read`` is told how many requests each message read carried (for metrics)."""
        self._dispatch = dispatch
        self._on_read = on_read
        self._request_name = request_name
        self._stop = stop
        self._bundle_answers = bundle_answers
        self._slots = asyncio.Semaphore(max(1, max_in_flight))
        # (message, whether it answers a request) to send; _ready is set when there is one, and
        # when reading has stopped (so that serve() looks again whether it is done).
        self._out: deque[tuple[Resp, bool]] = deque()
        self._ready = asyncio.Event()
        self._unanswered = 0
        self._reading = True
        self._read_error: BaseException | None = None

    def answer(self, response: Resp) -> None:
        """Send the answer to one request read."""
        self._out.append((response, True))
        self._ready.set()

    def notify(self, message: Resp) -> None:
        """Send a message that answers no request (it is dropped if the stream ends first)."""
        self._out.append((message, False))
        self._ready.set()

    async def serve(self, requests: AsyncIterator[Req]) -> AsyncGenerator[Resp, None]:
        """Answers, as they come, until reading has ended and every request read is answered.

        A request that could not be read ends the stream with its error
        (``INVALID_ARGUMENT`` for one that does not parse).
        """
        reader = asyncio.create_task(self._read(requests))
        watcher = asyncio.create_task(self._stop_reading(reader)) if self._stop is not None else None
        try:
            out = self._out
            while self._reading or self._unanswered:
                if not out:
                    self._ready.clear()
                    await self._ready.wait()
                    continue
                taken = take(out, _message) if self._bundle_answers else [out.popleft()]
                yield bundled([response for response, _ in taken])
                for _, answers in taken:
                    if answers:
                        self._unanswered -= 1
                        self._slots.release()
            if self._read_error is not None:
                raise self._read_error
        finally:
            tasks = [reader] if watcher is None else [reader, watcher]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _read(self, requests: AsyncIterator[Req]) -> None:
        try:
            while self._stop is None or not self._stop.is_set():
                await self._slots.acquire()
                try:
                    request = await anext(requests)
                except BaseException:
                    self._slots.release()
                    raise
                items = unbundled(request)
                if self._on_read is not None:
                    self._on_read(len(items))
                for index, item in enumerate(items):
                    if index:  # the first one has the slot taken before reading
                        await self._slots.acquire()
                    self._unanswered += 1
                    self._dispatch(item)
        except StopAsyncIteration:
            pass
        except Exception as exc:  # noqa: BLE001 - reported when the stream ends
            self._read_error = read_failure(exc, message=self._request_name)
        finally:
            self._reading = False
            self._ready.set()

    async def _stop_reading(self, reader: asyncio.Task[None]) -> None:
        assert self._stop is not None
        await self._stop.wait()
        reader.cancel()


def _message(entry: tuple[Resp, bool]) -> Resp:
    return entry[0]


UNAVAILABLE = grpc.StatusCode.UNAVAILABLE.value[0]


class CarryingStream(Generic[Req, Resp]):
    """An answering stream whose requests are each carried out in a task of their own, and drained.

    The registry's ``WriteRuns`` and the execution service's ``StartRuns``
    work this way. ``carry_out(request, read_at)`` does the work of one
    request (``read_at``: the event loop's time when it was read) and returns
    its answer; a refusal it raises is answered with its status code and
    message (:func:`~runwire_common.servicer.status_of`), and the stream goes
    on. Answers are built as ``answer_type(...)`` and carry the request's
    ``id_field``.

    Draining: once ``draining`` is set the stream sends a notice (an answer
    with ``drained`` set and nothing else), finishes the work already begun,
    and answers every request read after that at once, without carrying it
    out, with ``UNAVAILABLE``, ``drained_message`` and ``drained`` set, so its
    sender sends it again elsewhere. It reads on until the sender half-closes:
    a server that stopped reading and closed instead would lose its last
    answers to the TCP reset that unread data causes. The stream's end cancels
    the work still running.
    """

    def __init__(
        self,
        *,
        carry_out: Callable[[Req, float], Awaitable[Resp]],
        answer_type: Callable[..., Resp],
        id_field: str,
        draining: asyncio.Event,
        drained_message: str,
        max_in_flight: int,
        request_name: str,
        bundle_answers: bool = False,
        on_read: Callable[[int], None] | None = None,
    ) -> None:
        self._carry_out = carry_out
        self._answer_type = answer_type
        self._id_field = id_field
        self._draining = draining
        self._drained_message = drained_message
        self._workers: set[asyncio.Task[None]] = set()
        self._answers: AnsweringStream[Req, Resp] = AnsweringStream(
            dispatch=self._dispatch,
            max_in_flight=max_in_flight,
            request_name=request_name,
            bundle_answers=bundle_answers,
            on_read=on_read,
        )

    async def serve(self, requests: AsyncIterator[Req]) -> AsyncIterator[Resp]:
        """Answer every request read from ``requests``; end when the sender has half-closed."""
        notifier = asyncio.create_task(self._notify_drain())
        try:
            async with aclosing(self._answers.serve(requests)) as answers:
                async for response in answers:
                    yield response
        finally:
            workers = [notifier, *self._workers]
            for task in workers:
                task.cancel()
            await asyncio.gather(*workers, return_exceptions=True)

    async def _notify_drain(self) -> None:
        """Tell the sender the drain has begun, so that an idle stream is half-closed too."""
        await self._draining.wait()
        self._answers.notify(self._answer_type(drained=True))

    def _dispatch(self, request: Req) -> None:
        loop = asyncio.get_running_loop()
        worker = loop.create_task(self._answer(request, loop.time()))
        self._workers.add(worker)
        worker.add_done_callback(self._workers.discard)

    async def _answer(self, request: Req, read_at: float) -> None:
        if self._draining.is_set():
            response = self._answer_type(code=UNAVAILABLE, message=self._drained_message, drained=True)
        else:
            try:
                response = await self._carry_out(request, read_at)
            except Exception as exc:  # noqa: BLE001 - a refused request is answered, the stream goes on
                code, message = status_of(exc)
                response = self._answer_type(code=code.value[0], message=message)
        setattr(response, self._id_field, getattr(request, self._id_field))
        self._answers.answer(response)
