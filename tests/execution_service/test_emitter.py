from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Sequence

import pytest

from execution_service.emitter import EmitterClosed, RunEmitter, fit_payload
from runwire.common.v1 import context_pb2, event_pb2
from runwire_common.errors import InvalidArgument, Unavailable

LOG = logging.LoggerAdapter(logging.getLogger("test.emitter"), {})
USER = context_pb2.UserContext(user_id="user_emitter_000000001", tenant_id="tenant_a")


def emitter_for(publish, **options) -> RunEmitter:  # type: ignore[no-untyped-def]
    return RunEmitter(
        user=USER, run_id="run_e", thread_id="thread_e", agent="scripted", publish=publish, log=LOG, **options
    )


async def test_events_carry_the_envelope_and_consecutive_seqs() -> None:
    sent: list[event_pb2.RunEvent] = []

    async def publish(events: Sequence[event_pb2.RunEvent]) -> None:
        sent.extend(events)

    emitter = emitter_for(publish)
    await emitter.thinking("a", progress=0.5)
    await emitter.partial("x")
    await emitter.partial("y")
    await emitter.emit("custom_progress", {"done": 1})
    await emitter.aclose()
    assert [e.seq for e in sent] == [1, 2, 3, 4]
    assert [json.loads(e.payload_json).get("index") for e in sent[1:3]] == [0, 1]
    first = sent[0]
    assert (first.event_id, first.user_id, first.tenant_id, first.run_id, first.thread_id, first.agent) == (
        "",
        USER.user_id,
        "tenant_a",
        "run_e",
        "thread_e",
        "scripted",
    )
    assert first.timestamp.seconds > 0


@pytest.mark.parametrize(
    "event_type", ["agent_started", "tool_executing", "agent_completed", "agent_error", ""]
)
async def test_agents_cannot_emit_reserved_event_types(event_type: str) -> None:
    async def publish(events: Sequence[event_pb2.RunEvent]) -> None:
        pass

    emitter = emitter_for(publish)
    with pytest.raises(ValueError):
        await emitter.emit(event_type, {})
    await emitter.aclose()


async def test_progress_outside_zero_to_one_is_refused() -> None:
    async def publish(events: Sequence[event_pb2.RunEvent]) -> None:
        pass

    emitter = emitter_for(publish)
    with pytest.raises(ValueError):
        await emitter.thinking("x", progress=1.5)
    await emitter.aclose()
    with pytest.raises(EmitterClosed):
        await emitter.partial("late")


async def test_one_refused_event_does_not_take_its_batch_along() -> None:
    sent: list[int] = []

    async def publish(events: Sequence[event_pb2.RunEvent]) -> None:
        if any(e.type == "custom_bad" for e in events):
            raise InvalidArgument("bad event")
        sent.extend(e.seq for e in events)

    emitter = emitter_for(publish)
    await emitter.partial("a")
    await emitter.emit("custom_bad", {})
    await emitter.partial("b")
    await emitter.aclose()
    assert sent == [1, 3]


async def test_an_unavailable_bridge_is_retried() -> None:
    attempts: list[int] = []

    async def publish(events: Sequence[event_pb2.RunEvent]) -> None:
        attempts.append(len(events))
        if len(attempts) == 1:
            raise Unavailable("bridge restarting")

    emitter = emitter_for(publish)
    await emitter.partial("a")
    await emitter.aclose()
    assert attempts == [1, 1]


def test_oversized_payloads_are_shortened_at_the_source() -> None:
    payload = {"tool_name": "echo", "call_id": "c", "result": {"blob": "x" * 100_000}, "note": "y" * 100_000}
    encoded = fit_payload(payload, max_bytes=16 * 1024)
    decoded = json.loads(encoded)
    assert len(encoded) <= 16 * 1024
    assert decoded["truncated"] is True and decoded["tool_name"] == "echo" and decoded["call_id"] == "c"
    assert decoded["result"].startswith("[TRUNCATED]") and decoded["note"].endswith("[TRUNCATED]")


def test_small_payloads_are_left_alone() -> None:
    assert json.loads(fit_payload({"a": 1}, max_bytes=1024)) == {"a": 1}


async def test_what_is_emitted_in_one_turn_of_the_loop_leaves_as_one_batch() -> None:
    batches: list[list[int]] = []

    async def publish(events: Sequence[event_pb2.RunEvent]) -> None:
        batches.append([e.seq for e in events])

    emitter = emitter_for(publish)

    async def burst() -> None:  # another task's events, due in the same turn (an agent's burst)
        for text in "bcde":
            await emitter.partial(text)

    await emitter.partial("a")  # the engine's agent_started, then the agent's task runs
    await asyncio.create_task(burst())
    await asyncio.sleep(0.05)
    await emitter.partial("f")
    await emitter.aclose()
    assert batches == [[1, 2, 3, 4, 5], [6]]


async def test_a_lone_event_leaves_without_waiting_for_a_timer() -> None:
    # "No added delay when idle": the publisher waits one turn of the loop for company, never
    # a timer, so the event is published within a couple of turns.
    published = asyncio.Event()

    async def publish(events: Sequence[event_pb2.RunEvent]) -> None:
        published.set()

    emitter = emitter_for(publish)
    await emitter.partial("alone")
    turns = 0
    while not published.is_set() and turns < 10:
        await asyncio.sleep(0)
        turns += 1
    assert published.is_set() and turns <= 3
    await emitter.aclose()
