"""A run's registry writes over the registry's ``WriteRuns`` stream instead of a call each.

:class:`RunWrites` carries the writes every run makes — ``CreateRun``, the
``TransitionRun`` that ends it (and any other transition) and its
``Heartbeat`` every two seconds — as
``WriteRunsRequest`` messages on one long-lived stream of the process's
registry channel. A unary call costs both ends about four times the CPU of one
message on an open stream; the registry carries out and answers each write
exactly as it would the unary call.

How a write ends:

- answered: the unary call's response, or its refusal as the same domain error
  (:func:`~execution_service.peers.error_for_code`);
- no answer within the call timeout, or the stream breaks with the write
  unanswered: :class:`~runwire_common.errors.Unavailable`, exactly what a
  unary call that lost its connection raises. It is not resent, because the
  registry may have carried it out, except for a ``CreateRun`` with a
  ``create_key`` after a break: the registry answers such a repeated
  ``CreateRun`` with the run the key created, so it is sent again on a new
  stream;
- the registry drains (the answer has ``drained``): the write was not
  carried out, so it is sent again on a fresh stream, which the channel's
  round-robin puts on another replica; the drained stream takes no more
  writes and is half-closed;
- the registry does not know ``WriteRuns`` (``UNIMPLEMENTED``: a registry
  older than the execution service during a rolling upgrade): nothing was
  carried out; :class:`~execution_service.peers.WritesUnsupported` tells the caller to use the unary
  call, and this process does so from then on.

A stream is replaced every :data:`ROTATE_AFTER_S` seconds (new writes go to
a new stream; the old one is half-closed and ends once it has answered): the
registry's server closes a connection ``max_connection_age`` after it opened
and cuts what still runs on it ``max_connection_age_grace`` (30 s by default)
later, and a stream younger than that grace is never cut with writes on it.
"""

from __future__ import annotations

import asyncio
import itertools
import logging

import grpc

from execution_service.peers import WritesUnsupported
from runwire.common.v1 import context_pb2
from runwire.registry.v1 import registry_pb2, registry_pb2_grpc
from runwire_common.answered_stream import AnsweredStream
from runwire_common.errors import Unavailable, error_for_code
from runwire_common.telemetry import Telemetry

PEER = "registry"
OK = grpc.StatusCode.OK.value[0]
# Below the registry's default max_connection_age_grace (30 s): see the module docstring.
ROTATE_AFTER_S = 20.0
# How often a write is sent at most while registries answer that they drain.
MAX_SENDS = 3
# On close, how long the streams get to answer what they carry.
CLOSE_WAIT_S = 1.0

Answer = registry_pb2.WriteRunsResponse


class _NotCarriedOut(Exception):
    """The registry is draining and did not carry the write out: send it again."""


class _WriteStream(AnsweredStream[registry_pb2.WriteRunsRequest, Answer]):
    """One ``WriteRuns`` call: writes in, answers by ``write_id``."""

    def __init__(self, stub: registry_pb2_grpc.RegistryServiceAsyncStub, *, opened_at: float) -> None:
        self.opened_at = opened_at
        self.retired = False  # takes no more writes (the registry is draining)
        super().__init__(stub.WriteRuns, peer=PEER, described="the write stream to the registry")

    def _received(self, response: Answer) -> None:
        if response.drained:  # the notice, or a write answered without being carried out
            self.retired = True
            self.half_close()
            self._refuse(response.write_id, _NotCarriedOut())
        else:
            self._answer(response.write_id, response)

    def _failure(self, exc: grpc.aio.AioRpcError) -> Exception:
        if exc.code() == grpc.StatusCode.UNIMPLEMENTED:
            return WritesUnsupported()
        return super()._failure(exc)


class RunWrites:
    """``CreateRun``, ``TransitionRun`` and ``Heartbeat`` of every run of the process, over ``WriteRuns``."""

    def __init__(
        self,
        channel: grpc.aio.Channel,
        *,
        timeout_s: float,
        rotate_after_s: float = ROTATE_AFTER_S,
        log: logging.Logger | None = None,
        telemetry: Telemetry | None = None,
    ) -> None:
        # Each write carries the trace of the run that made it (the stream outlives requests).
        self._telemetry = telemetry if telemetry is not None and telemetry.enabled else None
        self._stub = registry_pb2_grpc.RegistryServiceStub(channel)
        self._timeout_s = timeout_s
        self._rotate_after_s = rotate_after_s
        self._log = log or logging.getLogger("runwire.execution")
        self._stream: _WriteStream | None = None
        self._retiring: set[asyncio.Task[None]] = set()
        self._write_ids = itertools.count(1)
        self._closed = False
        self.supported = True  # False once the registry answered UNIMPLEMENTED

    async def create_run(
        self, ctx: context_pb2.UserContext, request: registry_pb2.CreateRunRequest
    ) -> registry_pb2.CreateRunResponse:
        """``request`` (its own ``user_context`` left empty) as ``ctx``; raises like the unary call."""
        answer = await self._write(registry_pb2.WriteRunsRequest(user_context=ctx, create_run=request))
        return answer.create_run

    async def transition_run(
        self, ctx: context_pb2.UserContext, request: registry_pb2.TransitionRunRequest
    ) -> registry_pb2.TransitionRunResponse:
        """``request`` (its own ``user_context`` left empty) as ``ctx``; raises like the unary call."""
        answer = await self._write(registry_pb2.WriteRunsRequest(user_context=ctx, transition_run=request))
        return answer.transition_run

    async def heartbeat(
        self, ctx: context_pb2.UserContext, request: registry_pb2.HeartbeatRequest
    ) -> registry_pb2.HeartbeatResponse:
        """``request`` (its own ``user_context`` left empty) as ``ctx``; raises like the unary call."""
        answer = await self._write(registry_pb2.WriteRunsRequest(user_context=ctx, heartbeat=request))
        return answer.heartbeat

    async def aclose(self) -> None:
        """Half-close the streams and give them :data:`CLOSE_WAIT_S` to answer what they carry."""
        self._closed = True
        stream, self._stream = self._stream, None
        if stream is not None:
            await stream.close(CLOSE_WAIT_S)
        await asyncio.gather(*self._retiring)

    async def _write(self, request: registry_pb2.WriteRunsRequest) -> Answer:
        if not self.supported:
            raise WritesUnsupported()
        if self._telemetry is not None:
            request.trace_context.update(self._telemetry.carrier())
        for send in range(1, MAX_SENDS + 1):
            stream = self._current()
            write_id = request.write_id = next(self._write_ids)
            try:
                answer = await asyncio.wait_for(stream.send(write_id, request), timeout=self._timeout_s)
            except TimeoutError:
                raise Unavailable("registry is unavailable (deadline_exceeded)") from None
            except _NotCarriedOut:
                if send == MAX_SENDS:
                    raise Unavailable("registry is unavailable (draining)") from None
                continue
            except Unavailable:
                # The stream broke with the write unanswered. A CreateRun with a create_key may be
                # sent again: the registry answers the run it created, if it did, and creates no other.
                if send == MAX_SENDS or not request.create_run.create_key:
                    raise
                continue
            except WritesUnsupported:
                if self.supported:
                    self.supported = False
                    self._log.warning("the registry has no WriteRuns: run writes use unary calls")
                raise
            finally:
                stream.forget(write_id)
            if answer.code != OK:
                raise error_for_code(answer.code, answer.message, peer=PEER)
            return answer
        raise AssertionError("unreachable")  # pragma: no cover - the loop returns or raises

    def _current(self) -> _WriteStream:
        if self._closed:
            raise Unavailable("the registry write stream is closed")
        now = asyncio.get_running_loop().time()
        stream = self._stream
        if (
            stream is not None
            and not (stream.ended or stream.retired)
            and now - stream.opened_at < self._rotate_after_s
        ):
            return stream
        if stream is not None and not stream.ended:
            self._retire(stream)
        stream = self._stream = _WriteStream(self._stub, opened_at=now)
        return stream

    def _retire(self, stream: _WriteStream) -> None:
        task = asyncio.get_running_loop().create_task(stream.close(self._timeout_s + CLOSE_WAIT_S))
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)
