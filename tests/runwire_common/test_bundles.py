"""Reading and making bundles: several requests or answers of an answered stream in one message."""

from __future__ import annotations

from collections import deque

from runwire.bridge.v1 import bridge_pb2
from runwire.common.v1 import event_pb2
from runwire.registry.v1 import registry_pb2
from runwire_common.bundles import (
    ANNOUNCEMENT,
    MAX_BUNDLE_BYTES,
    MAX_BUNDLE_ITEMS,
    announced,
    bundled,
    take,
    unbundled,
)

Batch = bridge_pb2.PublishStreamRequest


def batch(batch_id: int, payload_bytes: int = 0) -> Batch:
    events = [event_pb2.RunEvent(run_id="run_1", payload_json=b"x" * payload_bytes)] if payload_bytes else []
    return Batch(batch_id=batch_id, events=events)


def ids(messages: object) -> list[int]:
    return [message.batch_id for message in messages]  # type: ignore[attr-defined]


def test_a_message_without_a_bundle_is_the_one_item_it_carries() -> None:
    plain = batch(7)
    assert list(unbundled(plain)) == [plain]
    empty = Batch()
    assert list(unbundled(empty)) == [empty]  # an empty message is a (refused) request, not nothing


def test_an_envelope_carries_its_bundle_in_order() -> None:
    envelope = Batch(bundle=[batch(3), batch(1), batch(2)])
    assert ids(unbundled(envelope)) == [3, 1, 2]


def test_a_message_that_sets_more_than_its_bundle_comes_before_it() -> None:
    message = Batch(batch_id=9, bundle=[batch(1), batch(2)])
    items = unbundled(message)
    assert ids(items) == [9, 1, 2]
    assert items[0] is message


def test_nested_bundles_are_read_depth_first_and_nothing_is_left_out() -> None:
    message = Batch(
        bundle=[
            Batch(batch_id=1, bundle=[batch(2), Batch(bundle=[batch(3), batch(4)])]),
            Batch(bundle=[batch(5)]),
            batch(6),
        ]
    )
    assert ids(unbundled(message)) == [1, 2, 3, 4, 5, 6]


def test_bundled_returns_a_lone_item_as_it_is_and_several_in_one_envelope() -> None:
    lone = batch(1)
    assert bundled([lone]) is lone
    items = [batch(1), batch(2), batch(3)]
    envelope = bundled(items)
    assert envelope.batch_id == 0 and len(envelope.ListFields()) == 1
    assert list(unbundled(Batch.FromString(envelope.SerializeToString()))) == items


def test_writes_and_answers_bundle_the_same_way() -> None:
    writes = [registry_pb2.WriteRunsRequest(write_id=n) for n in (4, 5)]
    assert [w.write_id for w in unbundled(bundled(writes))] == [4, 5]
    answers = [registry_pb2.WriteRunsResponse(write_id=n) for n in (6, 7)]
    assert [a.write_id for a in unbundled(bundled(answers))] == [6, 7]
    # A drain notice (write_id 0, drained) is an item of its own, even inside an envelope.
    notice = registry_pb2.WriteRunsResponse(drained=True)
    assert list(unbundled(bundled([notice, answers[0]]))) == [notice, answers[0]]


def test_take_pops_what_fits_one_bundle_and_leaves_the_rest() -> None:
    queue = deque(batch(n) for n in range(MAX_BUNDLE_ITEMS + 5))
    first = take(queue, lambda message: message)
    assert ids(first) == list(range(MAX_BUNDLE_ITEMS))
    assert ids(take(queue, lambda message: message)) == list(range(MAX_BUNDLE_ITEMS, MAX_BUNDLE_ITEMS + 5))
    assert not queue


def test_take_closes_a_bundle_before_it_passes_the_byte_limit() -> None:
    third = MAX_BUNDLE_BYTES // 3
    queue = deque([batch(1, third), batch(2, third), batch(3, third), batch(4, 10)])
    taken = take(queue, lambda message: message)
    assert ids(taken) == [1, 2]
    assert sum(message.ByteSize() for message in taken) <= MAX_BUNDLE_BYTES
    assert ids(queue) == [3, 4]


def test_an_item_larger_than_a_bundle_goes_alone() -> None:
    queue = deque([batch(1, MAX_BUNDLE_BYTES + 1), batch(2)])
    assert ids(take(queue, lambda message: message)) == [1]
    assert ids(take(queue, lambda message: message)) == [2]


def test_take_reads_the_message_of_each_queued_entry() -> None:
    queue = deque([(batch(1), True), (batch(2), False)])
    assert take(queue, lambda entry: entry[0]) == [(batch(1), True), (batch(2), False)]


def test_the_announcement_is_recognised_in_either_encoding() -> None:
    assert announced(ANNOUNCEMENT)
    assert announced((("other", "x"), ("runwire-bundles", b"1")))
    assert not announced((("runwire-bundles", "0"),))
    assert not announced(())
    assert not announced(None)
