"""The sending side of a bidirectional stream whose every request is answered by its id.

The execution service's ``PublishStream`` to a bridge replica and its
``WriteRuns`` to the registry both work this way (the server side is
:class:`runwire_common.answering.AnsweringStream`): requests are written in order from a queue
(the call's request iterator), each sender waits on a future keyed by the id
its request carries, and when the call ends every request still unanswered
fails with what ended it. :class:`AnsweredStream` is that shared part; a
subclass says what an incoming message means (:meth:`_received`) and, where
it differs from the default, what a failed call means (:meth:`_failure`).

Bundles (:mod:`runwire_common.bundles`): the call announces that it reads
bundled answers, and once the peer's response headers say it unpacks bundled
requests, what queued up while the previous message was being written leaves
as one message. A request alone in the queue leaves at once, as it is.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import Generic, TypeVar

import grpc

from runwire_common.bundles import ANNOUNCEMENT, Bundling, announced, bundled, take, unbundled
from runwire_common.errors import Unavailable, map_rpc_error

Req = TypeVar("Req", bound=Bundling)
Resp = TypeVar("Resp", bound=Bundling)

# A stream-stream multi-callable of a stub: called with the request iterator and metadata.
OpenCall = Callable[..., grpc.aio.StreamStreamCall[Req, Resp]]


class AnsweredStream(Generic[Req, Resp]):
    """One call: requests in through :meth:`send`, answers out through the futures it returns."""

    def __init__(self, open_call: OpenCall[Req, Resp], *, peer: str, described: str) -> None:
        """``peer`` names the service for error mapping; ``described`` the stream in messages."""
        self.ended = False
        self._peer = peer
        self._described = described
        self._requests: deque[Req] = deque()
        self._queued = asyncio.Event()  # set when _requests has something or the stream half-closed
        self._pending: dict[int, asyncio.Future[Resp]] = {}
        self._half_closed = False
        self._bundles = False  # the peer's response headers said it unpacks bundles
        self._call = open_call(self._outgoing(), metadata=ANNOUNCEMENT)
        self._reader = asyncio.create_task(self._read(), name=described)

    @property
    def announced(self) -> bool:
        """Whether the peer's response headers arrived and said that it unpacks bundles.

        Servers that announce send their headers before they read any request:
        a call that ended without them carried nothing out.
        """
        return self._bundles

    @property
    def in_flight(self) -> int:
        """Requests sent on this stream and not answered yet."""
        return len(self._pending)

    def send(self, key: int, request: Req) -> asyncio.Future[Resp]:
        """Write ``request``, whose answer will carry ``key``; the future resolves to that answer."""
        if self.ended:
            raise Unavailable(f"{self._described} has ended")
        future: asyncio.Future[Resp] = asyncio.get_running_loop().create_future()
        self._pending[key] = future
        self._requests.append(request)
        self._queued.set()
        return future

    def forget(self, key: int) -> None:
        """The sender no longer waits for ``key`` (answered, timed out or cancelled)."""
        self._pending.pop(key, None)

    def half_close(self) -> None:
        """No more requests: the peer answers what it has, then ends the call."""
        self._half_closed = True
        self._queued.set()

    async def close(self, within_s: float) -> None:
        """Half-close, and cancel the call if it has not ended within ``within_s``."""
        self.half_close()
        done, _ = await asyncio.wait((self._reader,), timeout=within_s)
        if not done:
            self._call.cancel()
            await asyncio.wait((self._reader,))

    def _answer(self, key: int, response: Resp) -> None:
        future = self._pending.pop(key, None)
        if future is not None and not future.done():
            future.set_result(response)

    def _refuse(self, key: int, error: Exception) -> None:
        future = self._pending.pop(key, None)
        if future is not None and not future.done():
            future.set_exception(error)

    def _received(self, response: Resp) -> None:
        """One message from the peer: resolve the request it answers with :meth:`_answer` or :meth:`_refuse`."""
        raise NotImplementedError

    def _failure(self, exc: grpc.aio.AioRpcError) -> Exception:
        """What the unanswered requests fail with when the call failed with ``exc``."""
        error = map_rpc_error(exc, peer=self._peer)
        return error if isinstance(error, Unavailable) else Unavailable(error.message)

    def _ended(self) -> None:
        """Called once, after the call has ended and every unanswered request has failed."""

    async def _outgoing(self) -> AsyncIterator[Req]:
        """The call's requests: each next message is taken once gRPC has written the previous one."""
        requests = self._requests
        while True:
            if not requests:
                if self._half_closed:
                    return
                self._queued.clear()
                await self._queued.wait()
                continue
            if self._bundles:
                yield bundled(take(requests, _itself))
            else:
                yield requests.popleft()

    async def _read(self) -> None:
        failure: Exception = Unavailable(f"{self._described} ended")
        try:
            self._bundles = announced(await self._call.initial_metadata())
            async for response in self._call:
                for answer in unbundled(response):
                    self._received(answer)
        except grpc.aio.AioRpcError as exc:
            failure = self._failure(exc)
        except asyncio.CancelledError:
            failure = Unavailable(f"{self._described} was closed")
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise  # this task is cancelled, not only the call
        finally:
            self.ended = True
            pending, self._pending = self._pending, {}
            for future in pending.values():
                if not future.done():
                    future.set_exception(failure)
            self._ended()


def _itself(message: Req) -> Req:
    return message
