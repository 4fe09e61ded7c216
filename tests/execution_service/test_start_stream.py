"""``StartRuns`` against the real execution service, registry and bridge on loopback.

A start on the stream must do exactly what a ``StartRun`` call does (the
run, its owner, its events), refuse what the call refuses without ending the
stream, carry many starts of many users in one message without mixing them
up, and stop starting runs once the service drains.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from runwire.common.v1 import context_pb2
from runwire.execution.v1 import execution_pb2, execution_pb2_grpc
from runwire.registry.v1 import registry_pb2
from runwire_common import bundles
from tests.execution_service.system import CALL_TIMEOUT_S, System, running_system

Answer = execution_pb2.StartRunsResponse
SCRIPT = json.dumps({"steps": [{"partial": "one"}, {"partial": "two"}], "result": "done"})
OK = grpc.StatusCode.OK.value[0]


@pytest.fixture
async def system(tmp_path: Path, attestation_key_spec: str, make_context: Any) -> AsyncIterator[System]:
    async with running_system(tmp_path, attestation_key_spec, make_context) as running:
        yield running


class Starts:
    """One ``StartRuns`` call: messages out as the test writes them, every answer unbundled."""

    def __init__(self, stub: execution_pb2_grpc.ExecutionServiceAsyncStub, *, announce: bool = True) -> None:
        self.call = stub.StartRuns(metadata=bundles.ANNOUNCEMENT if announce else None)
        self.answers: dict[int, Answer] = {}
        self.notices = 0
        self.messages = 0
        self._arrived = asyncio.Event()
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for message in self.call:
            self.messages += 1
            for answer in bundles.unbundled(message):
                if answer.drained and not answer.start_id:
                    self.notices += 1
                else:
                    self.answers[answer.start_id] = answer
            self._arrived.set()

    async def answered(self, *start_ids: int) -> list[Answer]:
        async with asyncio.timeout(CALL_TIMEOUT_S):
            while not all(start_id in self.answers for start_id in start_ids):
                self._arrived.clear()
                await self._arrived.wait()
        return [self.answers[start_id] for start_id in start_ids]

    async def notice(self) -> None:
        async with asyncio.timeout(CALL_TIMEOUT_S):
            while not self.notices:
                self._arrived.clear()
                await self._arrived.wait()

    async def end(self) -> grpc.StatusCode:
        await self.call.done_writing()
        await asyncio.wait_for(self._reader, CALL_TIMEOUT_S)
        return await self.call.code()


def start(
    ctx: context_pb2.UserContext, start_id: int, *, agent: str = "scripted", input_json: str = SCRIPT
) -> execution_pb2.StartRunsRequest:
    return execution_pb2.StartRunsRequest(
        user_context=ctx,
        start_id=start_id,
        start=execution_pb2.StartRunRequest(agent=agent, input_json=input_json),
    )


async def test_starts_of_many_users_in_one_message_each_run_for_their_own_user(system: System) -> None:
    users = [f"user_start_{n:02d}" for n in range(12)]
    contexts = {user: system.make_context(user) for user in users}
    items = [start(contexts[user], 100 + n) for n, user in enumerate(users)]
    async with system.watch(users[0]) as first, system.watch(users[-1]) as last:
        starts = Starts(system.execution)
        await starts.call.write(execution_pb2.StartRunsRequest(bundle=items))
        answers = await starts.answered(*(item.start_id for item in items))
        runs = {user: answer.started.run for user, answer in zip(users, answers, strict=True)}
        assert all(answer.code == OK for answer in answers)
        assert [run.user_id for run in runs.values()] == users
        assert len({run.run_id for run in runs.values()}) == len(users)
        # The runs ran: each owner got its own run's events and nothing of the others'.
        for watcher, user in ((first, users[0]), (last, users[-1])):
            events = await watcher.until_terminal(runs[user].run_id)
            assert {event.run_id for event in events} == {runs[user].run_id}
            assert {event.user_id for event in events} == {user}
            assert events[-1].type == "agent_completed"
        assert await starts.end() == grpc.StatusCode.OK
    for user in users:
        stored = await system.get(user, runs[user].run_id)
        assert stored.user_id == user and stored.agent == "scripted"


async def test_what_start_run_refuses_is_answered_with_its_code_and_the_stream_goes_on(
    system: System,
) -> None:
    alice = system.make_context("user_alice_start")
    forged = context_pb2.UserContext()
    forged.CopyFrom(alice)
    forged.user_id = "user_mallory_start"  # the attestation no longer matches
    embedded = start(alice, 4)
    embedded.start.user_context.CopyFrom(alice)
    refused = [
        (start(alice, 1, agent="no_such_agent"), grpc.StatusCode.NOT_FOUND),
        (start(alice, 2, input_json="[1, 2]"), grpc.StatusCode.INVALID_ARGUMENT),
        (start(forged, 3), grpc.StatusCode.UNAUTHENTICATED),
        (embedded, grpc.StatusCode.INVALID_ARGUMENT),
        (execution_pb2.StartRunsRequest(user_context=alice, start_id=5), grpc.StatusCode.INVALID_ARGUMENT),
    ]
    starts = Starts(system.execution)
    for item, _ in refused:
        await starts.call.write(item)
    answers = await starts.answered(*(item.start_id for item, _ in refused))
    for answer, (_, code) in zip(answers, refused, strict=True):
        assert answer.code == code.value[0], (answer, code)
        assert answer.message and not answer.HasField("started")
    # A start without an id cannot be told apart from the others: refused, it ends nothing either.
    await starts.call.write(start(alice, 0))
    await starts.call.write(start(alice, 6))
    zero, ok = await starts.answered(0, 6)
    assert zero.code == grpc.StatusCode.INVALID_ARGUMENT.value[0] and not zero.HasField("started")
    assert ok.code == OK and ok.started.run.user_id == "user_alice_start"
    assert await starts.end() == grpc.StatusCode.OK
    listed = await system.registry.ListRuns(
        registry_pb2.ListRunsRequest(user_context=system.make_context("user_mallory_start")),
        timeout=CALL_TIMEOUT_S,
    )
    assert list(listed.runs) == []


async def test_answers_are_bundled_only_for_a_sender_that_announced_it(system: System) -> None:
    ctx = system.make_context("user_plain_start")
    plain = Starts(system.execution, announce=False)
    await plain.call.write(execution_pb2.StartRunsRequest(bundle=[start(ctx, 1), start(ctx, 2)]))
    answers = await plain.answered(1, 2)
    assert [answer.code for answer in answers] == [OK, OK]
    assert plain.messages == 2  # one answer per message
    assert await plain.end() == grpc.StatusCode.OK


async def test_once_the_service_drains_a_start_is_answered_drained_and_starts_nothing(system: System) -> None:
    extra = await system.add_execution()
    alice = system.make_context("user_drain_start")
    starts = Starts(extra.stub)
    await starts.call.write(start(alice, 1))
    (before,) = await starts.answered(1)
    assert before.code == OK
    stopping = asyncio.create_task(extra.stop())
    await starts.notice()
    await starts.call.write(start(alice, 2))
    (after,) = await starts.answered(2)
    assert after.drained and after.code == grpc.StatusCode.UNAVAILABLE.value[0]
    assert await starts.end() == grpc.StatusCode.OK
    await asyncio.wait_for(stopping, 30)
    listed = await system.registry.ListRuns(
        registry_pb2.ListRunsRequest(user_context=system.make_context("user_drain_start")),
        timeout=CALL_TIMEOUT_S,
    )
    assert [run.run_id for run in listed.runs] == [before.started.run.run_id]
