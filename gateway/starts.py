"""``run.start`` over ``ExecutionService.StartRuns``: a stream per execution replica, not a call per run.

A unary ``StartRun`` costs the gateway and the execution service several
times the CPU of one message on an open stream, and every run begins with
one. :class:`RunStarts` keeps one ``StartRuns`` stream per execution replica
(``host:port``, ``ipv4:a:p,b:q`` or ``dns:///name:port``, see
:mod:`runwire_common.replicas`), each on a channel of its own, and sends each
start on the stream of the replica with the fewest starts in flight (in turn
among equals), so runs spread over replicas as the round-robin calls did.
Starts that queue up together travel in one message (bundles).

How a start ends, mirroring what the call and its retry policy did:

- answered: the run, or the refusal's status code and message
  (:class:`StartFailed`, mapped to the protocol's error codes like a failed
  call);
- answered ``UNAVAILABLE`` (the replica is shutting down), answered with
  ``drained`` (the replica's drain began: the start was not carried out), or
  the stream ended before the replica's response headers (it reads nothing
  before sending them: nothing was carried out): sent again, to another
  replica, at most :data:`MAX_SENDS` times in all;
- the stream broke after its headers with the start unanswered: ``UNAVAILABLE``,
  not sent again, because the replica may have started the run (its events
  still reach the user);
- no answer within the call timeout: ``DEADLINE_EXCEEDED``;
- the replica does not know ``StartRuns`` (an execution service older than the
  gateway, during a rolling upgrade): :class:`StartsUnsupported`, and the
  caller uses the unary call; so does every start for :data:`UNARY_FOR_S`
  seconds, after which the stream is tried again.

A stream is replaced every :data:`ROTATE_AFTER_S` seconds (the old one is
half-closed and ends once it has answered), for the same reason as the
execution service's registry write stream: the server closes a connection
``max_connection_age`` after it opened. A ``dns:///`` target is resolved again
as streams rotate and whenever a replica's stream broke; the stream and
channel of a replica it no longer resolves to are closed once they have
answered what they carry.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any

import grpc

from gateway.stats import GatewayStats
from runwire.common.v1 import context_pb2
from runwire.execution.v1 import execution_pb2, execution_pb2_grpc
from runwire_common.answered_stream import AnsweredStream
from runwire_common.errors import Unavailable, status_code
from runwire_common.replicas import resolve_replicas, static_replicas
from runwire_common.telemetry import Telemetry

log = logging.getLogger("runwire.gateway")

MAX_SENDS = 3
# Below the execution service's default max_connection_age_grace (30 s).
ROTATE_AFTER_S = 20.0
# After a replica answered UNIMPLEMENTED, starts use the unary call this long.
UNARY_FOR_S = 60.0
# On close, how long the streams get to answer what they carry.
CLOSE_WAIT_S = 1.0
OK = grpc.StatusCode.OK.value[0]
UNAVAILABLE = grpc.StatusCode.UNAVAILABLE.value[0]

Answer = execution_pb2.StartRunsResponse


class StartFailed(Exception):
    """A start that failed as a ``StartRun`` call would have: with this status code and details."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"{code.name}: {details}")
        self.code = code
        self.details = details


class StartsUnsupported(Exception):
    """The execution service has no ``StartRuns``: use the unary call."""


class _SendAgain(Exception):
    """The start was not carried out: send it again, to another replica."""


class _StartStream(AnsweredStream[execution_pb2.StartRunsRequest, Answer]):
    """One ``StartRuns`` call to one replica: starts in, answers by ``start_id``."""

    def __init__(
        self,
        address: str,
        channel: grpc.aio.Channel,
        *,
        opened_at: float,
        on_down: Callable[[str], None],
    ) -> None:
        self.address = address
        self.opened_at = opened_at
        self.retired = False  # takes no more starts (the replica is draining)
        self._on_down = on_down
        stub = execution_pb2_grpc.ExecutionServiceStub(channel)
        super().__init__(stub.StartRuns, peer="execution", described=f"the start stream to {address}")

    def _received(self, response: Answer) -> None:
        if response.drained:  # the notice, or a start answered without being carried out
            if not self.retired:
                self.retired = True
                self.half_close()
                self._on_down(self.address)
            self._refuse(response.start_id, _SendAgain())
        else:
            self._answer(response.start_id, response)

    def _failure(self, exc: grpc.aio.AioRpcError) -> Exception:
        if exc.code() == grpc.StatusCode.UNIMPLEMENTED:
            return StartsUnsupported()
        if not self.announced:
            # No response headers: the replica read nothing (it sends them first).
            self._on_down(self.address)
            return _SendAgain()
        return super()._failure(exc)


class RunStarts:
    """The ``StartRuns`` streams of one gateway process, one per execution replica."""

    def __init__(
        self,
        target: str,
        *,
        open_channel: Callable[[str], grpc.aio.Channel],
        timeout_s: float,
        stats: GatewayStats,
        rotate_after_s: float = ROTATE_AFTER_S,
        cooldown_s: float = 2.0,
        max_cooldown_s: float = 30.0,
        telemetry: Telemetry | None = None,
    ) -> None:
        self._target = target
        fixed = static_replicas(target)
        self._addresses: tuple[str, ...] = fixed or ()
        self._dynamic = fixed is None
        self._open_channel = open_channel
        self._timeout_s = timeout_s
        self._rotate_after_s = rotate_after_s
        self._cooldown_s = cooldown_s
        self._max_cooldown_s = max_cooldown_s
        self._telemetry = telemetry if telemetry is not None and telemetry.enabled else None
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._streams: dict[str, _StartStream] = {}
        # address → (monotonic time it counts as up again, consecutive failures)
        self._down: dict[str, tuple[float, int]] = {}
        self._background: set[asyncio.Task[None]] = set()
        self._resolved_at = float("-inf")
        self._start_ids = itertools.count(1)
        self._turn = itertools.count()
        self._unary_until = float("-inf")
        self._closed = False
        self._stats = stats

    @property
    def usable(self) -> bool:
        """False while starts go by the unary call (a replica had no ``StartRuns``)."""
        return not self._closed and time.monotonic() >= self._unary_until

    async def start(
        self, ctx: context_pb2.UserContext, request: execution_pb2.StartRunRequest
    ) -> execution_pb2.StartRunResponse:
        """``request`` (its own ``user_context`` left empty) as ``ctx``; raises :class:`StartFailed`."""
        item = execution_pb2.StartRunsRequest(user_context=ctx, start=request)
        if self._telemetry is not None:
            item.trace_context.update(self._telemetry.carrier())
        avoid: set[str] = set()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._timeout_s
        try:
            async with asyncio.timeout_at(deadline):
                if not self._addresses:
                    await self._resolve()
                for send in range(1, MAX_SENDS + 1):
                    # The replica gives up on a start nobody waits for any more, as on a call's deadline.
                    item.timeout_ms = max(1, int((deadline - loop.time()) * 1000))
                    answer = await self._send(item, avoid)
                    if answer is not None:
                        if answer.code == OK:
                            return answer.started
                        if answer.code != UNAVAILABLE or send == MAX_SENDS:
                            raise StartFailed(status_code(answer.code), answer.message)
                    if send < MAX_SENDS:
                        self._stats.starts_sent_again += 1
        except TimeoutError:
            raise StartFailed(grpc.StatusCode.DEADLINE_EXCEEDED, "no answer in time") from None
        raise StartFailed(grpc.StatusCode.UNAVAILABLE, "no execution replica started the run")

    async def _send(self, item: execution_pb2.StartRunsRequest, avoid: set[str]) -> Answer | None:
        """One send of ``item``: its answer, or None when it was not carried out (send it again)."""
        stream = self._choose(avoid)
        start_id = item.start_id = next(self._start_ids)
        try:
            answer = await stream.send(start_id, item)
        except _SendAgain:
            avoid.add(stream.address)
            return None
        except StartsUnsupported:
            if self.usable:
                log.warning(
                    "the execution service has no StartRuns: run starts use unary calls",
                    extra={"replica": stream.address, "for_s": UNARY_FOR_S},
                )
            self._unary_until = time.monotonic() + UNARY_FOR_S
            raise
        except Unavailable as exc:
            raise StartFailed(grpc.StatusCode.UNAVAILABLE, exc.message) from None
        finally:
            stream.forget(start_id)
        self._down.pop(stream.address, None)
        if answer.code == UNAVAILABLE:
            avoid.add(stream.address)
        return answer

    def _choose(self, avoid: set[str]) -> _StartStream:
        """The stream of the replica with the fewest starts in flight (in turn among equals)."""
        if self._closed:
            raise StartFailed(grpc.StatusCode.UNAVAILABLE, "the gateway is shutting down")
        if not self._addresses:
            raise StartFailed(grpc.StatusCode.UNAVAILABLE, "no execution replica known")
        now = time.monotonic()
        fresh = [a for a in self._addresses if a not in avoid] or list(self._addresses)
        up = [a for a in fresh if self._down.get(a, (0.0, 0))[0] <= now] or fresh
        first = next(self._turn) % len(up)
        turn = up[first:] + up[:first]
        address = min(turn, key=self._in_flight)
        return self._current(address, now)

    def _in_flight(self, address: str) -> int:
        stream = self._streams.get(address)
        return 0 if stream is None or stream.ended else stream.in_flight

    def _current(self, address: str, now: float) -> _StartStream:
        stream = self._streams.get(address)
        if (
            stream is not None
            and not (stream.ended or stream.retired)
            and now - stream.opened_at < self._rotate_after_s
        ):
            return stream
        if stream is not None and not stream.ended:
            self._in_background(stream.close(self._timeout_s + CLOSE_WAIT_S))
        channel = self._channels.get(address)
        if channel is None:
            channel = self._channels[address] = self._open_channel(address)
        stream = self._streams[address] = _StartStream(
            address, channel, opened_at=now, on_down=self._mark_down
        )
        self._stats.start_streams_opened += 1
        if self._dynamic and now - self._resolved_at >= self._rotate_after_s:
            self._resolved_at = now
            self._in_background(self._resolve())
        return stream

    def _mark_down(self, address: str) -> None:
        _, failures = self._down.get(address, (0.0, 0))
        cooldown = min(self._cooldown_s * 2**failures, self._max_cooldown_s)
        self._down[address] = (time.monotonic() + cooldown, failures + 1)
        if self._dynamic:
            self._resolved_at = time.monotonic()
            self._in_background(self._resolve())

    async def _resolve(self) -> None:
        """Look the replicas of a ``dns:///`` target up (again); keep the last list if that fails."""
        try:
            addresses = await resolve_replicas(self._target)
        except (OSError, ValueError) as exc:
            log.warning("execution replicas not resolved", extra={"target": self._target, "error": str(exc)})
            return
        if not addresses or self._closed:
            return
        self._addresses = addresses
        for gone in set(self._channels) - set(addresses):
            self._down.pop(gone, None)
            self._in_background(self._forget(gone, self._streams.pop(gone, None), self._channels.pop(gone)))

    async def _forget(self, address: str, stream: _StartStream | None, channel: grpc.aio.Channel) -> None:
        """Close the stream and channel of a replica the name no longer resolves to, once it has answered."""
        if stream is not None:
            await stream.close(self._timeout_s + CLOSE_WAIT_S)
        await channel.close()
        log.info("execution replica gone", extra={"replica": address})

    def _in_background(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def aclose(self) -> None:
        """Half-close the streams, give them :data:`CLOSE_WAIT_S` to answer, then close the channels."""
        self._closed = True
        streams, self._streams = list(self._streams.values()), {}
        await asyncio.gather(*(stream.close(CLOSE_WAIT_S) for stream in streams))
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        for channel in self._channels.values():
            await channel.close()
        self._channels.clear()
