"""The legacy projection of event frames: flat keys per type, made once per event, only when needed."""

from __future__ import annotations

import json
from typing import Any

import pytest

from gateway import legacy
from gateway.frames import event_frame
from gateway.outbox import EventFrame, MergedPartial, Outbox
from gateway.stats import GatewayStats
from runwire.common.v1 import event_pb2
from runwire_common.attestation import ContextAttestor
from runwire_common.deaths import death_payload
from tests.gateway import fakes

ALICE = "user_alice_0123456789"
RUN = "run_0123456789abcdef0123456789abcdef"
ENVELOPE = ("type", "event_id", "seq", "run_id", "thread_id", "user_id", "agent", "timestamp", "payload")


def event(kind: str, payload: dict[str, Any], *, seq: int = 1) -> event_pb2.RunEvent:
    message = event_pb2.RunEvent(
        event_id=f"100-{seq}",
        seq=seq,
        type=kind,
        run_id=RUN,
        thread_id="thread_0123456789abcdef",
        user_id=ALICE,
        agent="assistant",
        payload_json=json.dumps(payload),
    )
    message.timestamp.seconds = 1_800_000_000 + seq
    return message


def projected(kind: str, payload: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(Runwire's frame, the legacy frame) of one event."""
    text = event_frame(event(kind, payload))
    return json.loads(text), json.loads(legacy.event_text(text, kind))


CASES: list[tuple[str, dict[str, Any], dict[str, Any]]] = [
    ("agent_thinking", {"reasoning": "r", "step": "route", "progress": 0.25}, {"reasoning": "r"}),
    (
        "tool_executing",
        {"tool_name": "login", "parameters": {"user": "u", "password": "[REDACTED]"}, "call_id": "c1"},
        {"tool_name": "login", "parameters": {"user": "u", "password": "[REDACTED]"}},
    ),
    (
        "tool_completed",
        {
            "tool_name": "calculator",
            "call_id": "c1",
            "status": "success",
            "result": {"r": 5},
            "duration_ms": 12,
        },
        {"tool_name": "calculator", "results": {"r": 5}, "duration": 12},
    ),
    (
        "agent_completed",
        {"status": "completed", "result": {}, "final_response": "2 + 3 = 5", "duration_ms": 40},
        {"status": "completed", "final_response": "2 + 3 = 5"},
    ),
    (
        "agent_error",
        {"status": "timeout", "error_code": "timeout", "error_message": "took too long"},
        {"status": "timeout", "error_message": "took too long"},
    ),
    (
        "agent_death",
        death_payload(cause="no_heartbeat", message="the run stopped responding"),
        {
            "status": "dead",
            "death_cause": "no_heartbeat",
            "message": "the run stopped responding",
            "recovery_action": "refresh_required",
        },
    ),
]


@pytest.mark.parametrize(("kind", "payload", "flat"), CASES, ids=[c[0] for c in CASES])
def test_a_legacy_frame_is_runwires_frame_plus_the_flat_keys_of_its_type(
    kind: str, payload: dict[str, Any], flat: dict[str, Any]
) -> None:
    runwire, legacy_frame = projected(kind, payload)
    assert list(legacy_frame) == list(ENVELOPE) + list(flat)
    assert {key: legacy_frame[key] for key in ENVELOPE} == runwire  # the envelope is untouched
    assert {key: legacy_frame[key] for key in flat} == flat
    assert legacy_frame["payload"] == payload


def test_agent_death_keeps_its_payloads_recovery_action_and_says_refresh_required_at_the_top() -> None:
    _, frame = projected("agent_death", death_payload(cause="executor_lost", message="gone"))
    assert (frame["recovery_action"], frame["payload"]["recovery_action"]) == ("refresh_required", "retry")


def test_a_failed_tool_has_null_results_and_a_missing_duration_is_zero() -> None:
    _, frame = projected("tool_completed", {"tool_name": "t", "status": "error", "error": "boom"})
    assert (frame["results"], frame["duration"]) == (None, 0)


@pytest.mark.parametrize(
    ("kind", "payload"),
    [
        ("agent_started", {"message": "m", "input": {"message": "hi"}}),
        ("partial_result", {"content": "Hel", "index": 0}),
        ("input_required", {"request_id": "r", "kind": "input", "prompt": "?"}),
        ("agent_cancelled", {"reason": "cancelled by the user"}),
    ],
)
def test_types_without_flat_keys_are_runwires_frame_byte_for_byte(kind: str, payload: dict[str, Any]) -> None:
    text = event_frame(event(kind, payload))
    assert legacy.event_text(text, kind) is text


def test_agent_started_has_user_id_thread_id_and_timestamp_at_the_top_already() -> None:
    frame = json.loads(event_frame(event("agent_started", {"message": "m", "input": {}})))
    assert frame["user_id"] == ALICE and frame["thread_id"] and frame["timestamp"].endswith("Z")


def test_the_projection_of_a_shared_frame_is_made_once_and_only_when_read(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[str] = []
    real = legacy.event_text

    def counting(text: str, kind: str) -> str:
        calls.append(kind)
        return real(text, kind)

    monkeypatch.setattr(legacy, "event_text", counting)
    frame = EventFrame(event("agent_thinking", {"reasoning": "r"}))
    assert frame.text and calls == []  # Runwire's frame costs no projection
    first, second = frame.legacy_text, frame.legacy_text
    assert first is second and calls == ["agent_thinking"]


def test_merged_partial_results_project_to_the_merged_frame_itself() -> None:
    outbox = Outbox()
    for seq, content in ((3, "Hel"), (4, "lo, "), (5, "wörld")):
        outbox.push_event(
            EventFrame(event("partial_result", {"content": content, "index": seq}, seq=seq)), coalesce=True
        )
    [entry] = outbox.take(10)
    assert isinstance(entry, MergedPartial)
    frame = json.loads(entry.legacy_text)
    assert frame == json.loads(entry.text)
    assert (frame["merged_from"], frame["seq"], frame["payload"]["content"]) == (3, 5, "Hello, wörld")


async def test_legacy_and_runwire_sockets_of_one_user_share_each_frame_and_the_projection_is_made_once(
    attestor: ContextAttestor, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []
    real = legacy.event_text
    monkeypatch.setattr(legacy, "event_text", lambda text, kind: calls.append(kind) or real(text, kind))
    stats = GatewayStats()
    sockets = [fakes.RecordingSocket() for _ in range(3)]
    events = [
        event("agent_thinking", {"reasoning": "r"}, seq=1),
        event("tool_executing", {"tool_name": "t", "parameters": {}, "call_id": "c"}, seq=2),
        *(event("partial_result", {"content": f"<{n}>", "index": n}, seq=n) for n in range(3, 9)),
        event("agent_completed", {"status": "completed", "final_response": "done"}, seq=9),
    ]
    async with (
        fakes.detached_sink(sockets[0], stats, attestor, user_id=ALICE, coalesce_after=0) as first,
        fakes.detached_sink(sockets[1], stats, attestor, user_id=ALICE, coalesce_after=0) as second,
        fakes.detached_sink(sockets[2], stats, attestor, user_id=ALICE, coalesce_after=0) as plain,
    ):
        first.legacy = second.legacy = True
        shared = [EventFrame(e) for e in events]
        for sink in (first, second, plain):
            sink.from_feed(shared, "")
        for sink in (first, second, plain):
            await fakes.written(sink)
    legacy_frames = [[json.loads(t) for t in s.frames] for s in sockets[:2]]
    runwire_frames = [json.loads(t) for t in sockets[2].frames]
    assert legacy_frames[0] == legacy_frames[1]
    assert [f["type"] for f in runwire_frames] == [
        "agent_thinking",
        "tool_executing",
        "partial_result",
        "agent_completed",
    ]
    merged = runwire_frames[2]
    assert (merged["merged_from"], merged["seq"], merged["payload"]["content"]) == (
        3,
        8,
        "<3><4><5><6><7><8>",
    )
    assert legacy_frames[0][2] == merged  # partial_result has no flat keys, merged or not
    assert legacy_frames[0][0]["reasoning"] == "r" and "reasoning" not in runwire_frames[0]
    assert legacy_frames[0][3]["final_response"] == "done" and "final_response" not in runwire_frames[3]
    # Once per event for both legacy sockets (the merged frame is rendered per socket; it has no keys).
    assert (
        calls.count("agent_thinking") == calls.count("tool_executing") == calls.count("agent_completed") == 1
    )
