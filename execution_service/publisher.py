"""Publishing events to the bridge over one long-lived ``PublishStream`` per bridge replica.

:class:`StreamPublisher` implements :class:`~execution_service.peers.BridgePort`
for the whole process: every run's emitter and every announcement publish
through it. Each ``publish`` is one ``PublishStreamRequest`` (one owner's
events, the run's attested context, a ``batch_id`` unique in this process),
written to the stream of the replica that serves the owner —
:func:`~runwire_common.replicas.rendezvous` over the reachable replicas of
``bridge_target`` — and answered when its acknowledgement arrives:

- code 0: the events were stored (or fenced); their event ids are returned;
- another code: the matching domain error (``UNAVAILABLE`` → :class:`Unavailable`,
  which the caller retries within its budget; ``INVALID_ARGUMENT`` and the
  like are final);
- the stream breaks, or no acknowledgement comes within ``ack_timeout_s``:
  :class:`Unavailable`, and the caller resends the batch. The bridge fences
  per ``(run_id, seq)``, so a batch stored before the break is not stored
  twice.

Ordering is the caller's: a run's emitter sends its next batch only after the
previous one is acknowledged, so a resend can never overtake a later batch.
Batches of different runs are in flight together on the same stream.

A stream that breaks is dropped with its channel, and its replica counts as
unreachable for an exponential backoff (``reconnect``); the next publish for
it opens a fresh stream (a stream reconnect) once the backoff has passed, or
goes to the next replica rendezvous picks among the reachable ones.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Callable, Sequence

import grpc

from execution_service.retry import Backoff
from runwire.bridge.v1 import bridge_pb2, bridge_pb2_grpc
from runwire.common.v1 import context_pb2, event_pb2
from runwire_common.answered_stream import AnsweredStream
from runwire_common.errors import Unavailable, error_for_code
from runwire_common.owners import key_of
from runwire_common.replicas import ReplicaList, rendezvous
from runwire_common.telemetry import Telemetry

PEER = "bridge"
OK = grpc.StatusCode.OK.value[0]
# A replica whose stream ended is skipped for 0.2 s, doubling per failed stream up to 2 s.
RECONNECT_INITIAL_S = 0.2
RECONNECT_MAX_S = 2.0
# How long a dns:/// target's resolution is reused before it is looked up again.
RESOLVE_EVERY_S = 5.0
# On close, how long the streams get to end after their last batch.
CLOSE_WAIT_S = 1.0

OpenChannel = Callable[[str], grpc.aio.Channel]
Ack = bridge_pb2.PublishStreamResponse


class ReplicaStream(AnsweredStream[bridge_pb2.PublishStreamRequest, Ack]):
    """One ``PublishStream`` call to one bridge replica: batches in, acknowledgements by batch_id."""

    def __init__(
        self,
        replica: str,
        stub: bridge_pb2_grpc.BridgeServiceAsyncStub,
        *,
        on_end: Callable[[ReplicaStream, bool], None],
    ) -> None:
        self.replica = replica
        self._on_end = on_end
        self._acknowledged = False  # whether the bridge acknowledged anything on this stream
        super().__init__(stub.PublishStream, peer=PEER, described=f"the stream to bridge {replica}")

    def _received(self, response: Ack) -> None:
        self._acknowledged = True
        self._answer(response.batch_id, response)

    def _ended(self) -> None:
        self._on_end(self, self._acknowledged)


class StreamPublisher:
    """:class:`~execution_service.peers.BridgePort` over one ``PublishStream`` per bridge replica."""

    def __init__(
        self,
        target: str,
        *,
        open_channel: OpenChannel,
        ack_timeout_s: float,
        reconnect: Backoff | None = None,
        log: logging.Logger | None = None,
        telemetry: Telemetry | None = None,
    ) -> None:
        self._target = target
        # Each batch carries the trace of the run that emitted it (the stream outlives requests).
        self._telemetry = telemetry if telemetry is not None and telemetry.enabled else None
        self._replica_list = ReplicaList(target, every_s=RESOLVE_EVERY_S)
        self._open_channel = open_channel
        self._ack_timeout_s = ack_timeout_s
        self._reconnect = reconnect or Backoff(
            budget_s=float("inf"), initial_s=RECONNECT_INITIAL_S, max_s=RECONNECT_MAX_S
        )
        self._log = log or logging.getLogger("runwire.execution")
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._streams: dict[str, ReplicaStream] = {}
        self._opened: set[str] = set()  # replicas a stream was ever opened to
        self._failures: dict[str, int] = {}  # consecutive failed streams per replica
        self._down_until: dict[str, float] = {}
        self._batch_ids = itertools.count(1)
        self._closing: list[asyncio.Task[None]] = []
        self._closed = False
        # Metrics, read at scrape time.
        self.events_published = 0
        self.stream_reconnects = 0

    @property
    def batches_in_flight(self) -> int:
        return sum(stream.in_flight for stream in self._streams.values())

    async def publish(
        self, ctx: context_pb2.UserContext, events: Sequence[event_pb2.RunEvent]
    ) -> Sequence[str]:
        """Publish one owner's events as one batch; their event ids (``""`` where fenced)."""
        if self._closed:
            raise Unavailable("the bridge publisher is closed")
        stream = self._stream(await self._replica_for(key_of(ctx)))
        batch_id = next(self._batch_ids)
        request = bridge_pb2.PublishStreamRequest(user_context=ctx, batch_id=batch_id, events=events)
        if self._telemetry is not None:
            request.trace_context.update(self._telemetry.carrier())
        try:
            ack = await asyncio.wait_for(stream.send(batch_id, request), timeout=self._ack_timeout_s)
        except TimeoutError:
            raise Unavailable(f"bridge {stream.replica} did not acknowledge in time") from None
        finally:
            stream.forget(batch_id)
        if ack.code != OK:
            raise error_for_code(ack.code, ack.message, peer=PEER)
        self.events_published += len(events)
        return tuple(ack.event_ids)

    async def aclose(self) -> None:
        """End every stream (after what they carry is acknowledged) and close the channels."""
        self._closed = True
        streams = list(self._streams.values())
        await asyncio.gather(*(stream.close(CLOSE_WAIT_S) for stream in streams))
        await asyncio.gather(*self._closing)
        for channel in self._channels.values():
            await channel.close()
        self._channels.clear()

    async def _replica_for(self, owner_key: str) -> str:
        """The bridge replica of the owner (the gateway's choice too: its events are followed there)."""
        replicas = await self._replicas()
        now = asyncio.get_running_loop().time()
        reachable = [replica for replica in replicas if self._down_until.get(replica, 0.0) <= now]
        if not reachable:
            raise Unavailable("no bridge replica is reachable")
        return rendezvous(owner_key, reachable)

    async def _replicas(self) -> tuple[str, ...]:
        try:
            return await self._replica_list.current()
        except OSError as exc:
            raise Unavailable(f"cannot resolve {self._target}: {exc}") from None

    def _stream(self, replica: str) -> ReplicaStream:
        stream = self._streams.get(replica)
        if stream is not None and not stream.ended:
            return stream
        channel = self._channels.get(replica)
        if channel is None:
            channel = self._channels[replica] = self._open_channel(replica)
        if replica in self._opened:
            self.stream_reconnects += 1
            self._log.info("reopening the publish stream", extra={"replica": replica})
        self._opened.add(replica)
        stream = self._streams[replica] = ReplicaStream(
            replica, bridge_pb2_grpc.BridgeServiceStub(channel), on_end=self._stream_ended
        )
        return stream

    def _stream_ended(self, stream: ReplicaStream, acknowledged: bool) -> None:
        replica = stream.replica
        if self._streams.get(replica) is stream:
            del self._streams[replica]
        if self._closed:
            return
        failures = 1 if acknowledged else self._failures.get(replica, 0) + 1
        self._failures[replica] = failures
        pause = min(self._reconnect.initial_s * 2 ** (failures - 1), self._reconnect.max_s)
        self._down_until[replica] = asyncio.get_running_loop().time() + pause
        self._log.warning(
            "the publish stream to the bridge ended",
            extra={"replica": replica, "retry_in_s": round(pause, 3)},
        )
        # A channel that failed to connect backs off by itself (up to minutes): the next
        # stream gets a fresh channel, so reconnecting follows this backoff instead.
        channel = self._channels.pop(replica, None)
        if channel is not None:
            task = asyncio.get_running_loop().create_task(channel.close())
            self._closing.append(task)
            task.add_done_callback(self._closing.remove)
