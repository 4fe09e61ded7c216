"""Coalescing in a socket's outbox: pure functions, no socket."""

from __future__ import annotations

import json
from typing import Any

from gateway.outbox import Control, EventFrame, MergedPartial, Outbox, can_merge, partial_content
from runwire.bridge.v1 import bridge_pb2
from runwire.common.v1 import event_pb2

RUN = "run_0123456789abcdef0123456789abcdef"
OTHER_RUN = "run_fedcba9876543210fedcba9876543210"
ALICE = "user_alice_0123456789"


def event(
    seq: int, kind: str = "partial_result", *, run_id: str = RUN, content: str | None = None
) -> event_pb2.RunEvent:
    payload: dict[str, Any] = (
        {"content": content if content is not None else f"<{seq}>", "index": seq - 1}
        if kind == "partial_result"
        else {"reasoning": "r"}
    )
    message = event_pb2.RunEvent(
        event_id=f"100-{seq}",
        seq=seq,
        type=kind,
        run_id=run_id,
        thread_id="thread_0123456789abcdef",
        user_id=ALICE,
        agent="scripted",
        payload_json=json.dumps(payload),
    )
    message.timestamp.seconds = 1_800_000_000 + seq
    return message


def ev(
    seq: int, kind: str = "partial_result", *, run_id: str = RUN, content: str | None = None
) -> EventFrame:
    return EventFrame(event(seq, kind, run_id=run_id, content=content))


def texts(outbox: Outbox) -> list[dict[str, Any]]:
    return [json.loads(entry.text) for entry in outbox.take(1000) if entry.text is not None]


def test_consecutive_partials_of_one_run_merge_into_one_frame_covering_their_seqs() -> None:
    outbox = Outbox()
    merged = [
        outbox.push_event(ev(seq, content=text), coalesce=True)
        for seq, text in ((3, "Hel"), (4, "lo, "), (5, "wörld"))
    ]
    assert merged == [False, True, True]
    assert len(outbox) == 1
    [frame] = texts(outbox)
    assert frame["type"] == "partial_result"
    assert (frame["merged_from"], frame["seq"], frame["event_id"]) == (3, 5, "100-5")
    assert frame["payload"] == {"content": "Hello, wörld", "index": 2}
    assert frame["timestamp"] == "2027-01-15T08:00:05.000000Z"  # the last event's
    assert frame["user_id"] == ALICE and frame["run_id"] == RUN


def test_an_unmerged_frame_is_the_shared_frame_itself_without_merged_from() -> None:
    outbox = Outbox()
    frame = ev(1)
    outbox.push_event(frame, coalesce=True)
    [entry] = outbox.take(10)
    assert entry is frame
    assert "merged_from" not in json.loads(frame.text)


def test_lifecycle_and_tool_events_are_never_merged_and_break_a_run_of_partials() -> None:
    outbox = Outbox()
    for frame in (ev(1), ev(2, "tool_executing"), ev(3), ev(4), ev(5, "agent_completed")):
        outbox.push_event(frame, coalesce=True)
    got = texts(outbox)
    assert [(f["type"], f.get("merged_from"), f["seq"]) for f in got] == [
        ("partial_result", None, 1),
        ("tool_executing", None, 2),
        ("partial_result", 3, 4),
        ("agent_completed", None, 5),
    ]


def test_partials_of_different_runs_or_with_a_seq_hole_are_not_merged() -> None:
    assert not can_merge(event(1), event(1, run_id=OTHER_RUN))
    assert not can_merge(event(1), event(3))
    assert not can_merge(event(1, "agent_thinking"), event(2))
    assert not can_merge(event(1), event(2, "agent_thinking"))
    assert can_merge(event(1), event(2))


def test_nothing_merges_while_coalescing_is_off_or_into_a_control_frame() -> None:
    outbox = Outbox()
    outbox.push_event(ev(1), coalesce=False)
    assert not outbox.push_event(ev(2), coalesce=False)
    outbox.push_control(Control('{"type":"resumed"}'))
    assert not outbox.push_event(ev(3), coalesce=True)
    assert len(outbox) == 4


def test_a_partial_whose_content_is_not_text_is_kept_as_it_is() -> None:
    raw = event(2)
    raw.payload_json = '{"content": 5, "index": 1}'
    assert partial_content(raw) is None
    odd = EventFrame(raw)
    outbox = Outbox()
    outbox.push_event(ev(1), coalesce=True)
    assert not outbox.push_event(odd, coalesce=True)


def test_dropping_events_keeps_the_other_frames_and_forgets_their_positions() -> None:
    outbox = Outbox()
    outbox.push_event(ev(1), coalesce=True)
    outbox.push_event(ev(2), coalesce=True)
    outbox.push_control(Control('{"type":"resumed"}', position="100-2"))
    outbox.push_control(Control(None, position="100-2"))
    assert outbox.drop_events() == 2
    [kept] = outbox.take(10)
    assert isinstance(kept, Control) and kept.position is None
    assert outbox.bytes == 0


def test_the_outbox_counts_the_bytes_it_holds() -> None:
    outbox = Outbox()
    first = ev(1, content="a" * 100)
    outbox.push_event(first, coalesce=True)
    outbox.push_event(ev(2, content="b" * 50), coalesce=True)
    assert outbox.bytes == first.size + 50
    [entry] = outbox.take(10)
    assert isinstance(entry, MergedPartial)
    assert outbox.bytes == 0


def test_a_frame_keeps_no_reference_to_the_response_its_event_came_in() -> None:
    response = bridge_pb2.FabricResponse(
        items=[
            bridge_pb2.FabricItem(
                subscription_id=1, events=bridge_pb2.EventBatch(events=[event(1), event(2, "agent_thinking")])
            )
        ]
    )
    partial, thinking = (EventFrame(e) for e in response.items[0].events.events)
    assert partial.partial is not None and partial.partial == response.items[0].events.events[0]
    assert thinking.partial is None
    response.items[0].events.events[0].payload_json = "{}"  # a detached copy does not see this
    assert partial_content(partial.partial) == ({"content": "<1>", "index": 0}, "<1>")
    assert json.loads(partial.text)["seq"] == 1 and thinking.event_id == "100-2"
