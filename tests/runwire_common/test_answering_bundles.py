"""The answering side of a stream with bundled requests: each is dispatched, bounded and answered on its own."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from runwire.bridge.v1 import bridge_pb2
from runwire_common.answering import AnsweringStream
from runwire_common.bundles import bundled, unbundled

pytestmark = pytest.mark.asyncio

Batch = bridge_pb2.PublishStreamRequest
Ack = bridge_pb2.PublishStreamResponse
WAIT_S = 5.0


async def requests_of(*messages: Batch) -> AsyncIterator[Batch]:
    for message in messages:
        yield message


def batches(*batch_ids: int) -> list[Batch]:
    return [Batch(batch_id=batch_id) for batch_id in batch_ids]


async def turns(count: int = 20) -> None:
    for _ in range(count):
        await asyncio.sleep(0)


async def test_each_request_of_a_bundle_counts_against_the_bound_on_its_own() -> None:
    dispatched: list[Batch] = []
    reads: list[int] = []
    stream: AnsweringStream[Batch, Ack] = AnsweringStream(
        dispatch=dispatched.append, max_in_flight=2, request_name="PublishStreamRequest", on_read=reads.append
    )
    answers: list[Ack] = []

    async def consume() -> None:
        async for answer in stream.serve(requests_of(bundled(batches(1, 2, 3, 4, 5)), Batch(batch_id=6))):
            answers.append(answer)

    serving = asyncio.create_task(consume())
    answered = 0
    async with asyncio.timeout(WAIT_S):
        while answered < 6:
            await turns()
            assert len(dispatched) - answered <= 2, "more requests in flight than the bound"
            assert len(dispatched) - answered == min(2, 6 - answered)
            stream.answer(Ack(batch_id=dispatched[answered].batch_id))
            answered += 1
        await serving
    assert [batch.batch_id for batch in dispatched] == [1, 2, 3, 4, 5, 6]
    assert reads == [5, 1]
    assert [answer.batch_id for answer in answers] == [1, 2, 3, 4, 5, 6]
    assert not any(answer.bundle for answer in answers), "not asked to bundle answers"


@pytest.mark.parametrize("bundle_answers", [True, False])
async def test_answers_ready_together_leave_bundled_only_when_asked(bundle_answers: bool) -> None:
    stream: AnsweringStream[Batch, Ack]

    def answer_at_once(batch: Batch) -> None:
        stream.answer(Ack(batch_id=batch.batch_id))

    stream = AnsweringStream(
        dispatch=answer_at_once,
        max_in_flight=64,
        request_name="PublishStreamRequest",
        bundle_answers=bundle_answers,
    )
    messages: list[Ack] = []
    async with asyncio.timeout(WAIT_S):
        async for message in stream.serve(requests_of(bundled(batches(*range(1, 11))), Batch(batch_id=11))):
            messages.append(message)
    assert [answer.batch_id for message in messages for answer in unbundled(message)] == list(range(1, 12))
    if bundle_answers:
        assert len(messages) < 11 and any(message.bundle for message in messages)
    else:
        assert len(messages) == 11 and not any(message.bundle for message in messages)


async def test_a_message_that_is_a_request_and_a_bundle_is_answered_for_both() -> None:
    dispatched: list[Batch] = []
    stream: AnsweringStream[Batch, Ack]

    def answer_at_once(batch: Batch) -> None:
        dispatched.append(batch)
        stream.answer(Ack(batch_id=batch.batch_id))

    stream = AnsweringStream(dispatch=answer_at_once, max_in_flight=4, request_name="PublishStreamRequest")
    message = Batch(batch_id=1, bundle=[Batch(batch_id=2), Batch(bundle=batches(3, 4))])
    async with asyncio.timeout(WAIT_S):
        answers = [answer async for answer in stream.serve(requests_of(message))]
    assert [batch.batch_id for batch in dispatched] == [1, 2, 3, 4]
    assert [answer.batch_id for answer in answers] == [1, 2, 3, 4]
