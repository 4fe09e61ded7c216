"""Generated request sequences on the execution service's long-lived stream, StartRuns.

Each example opens one stream and sends a short sequence of generated starts
(any field values, nested bundles, the embedded request's own context
sometimes set, the start's context unattested, forged, expired or attested,
start ids that collide on purpose), then a well-formed witness start.
Whatever came before, the stream keeps serving: every start is answered once
with OK or a clear client-side status, the witness starts its run for its own
user, and the stream ends OK when the sender half-closes. The whole stack
runs here, so a generated start that is valid really starts a run.
"""

from __future__ import annotations

import asyncio

import grpc
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from runwire.common.v1 import context_pb2
from runwire.execution.v1 import execution_pb2
from runwire_common.attestation import ContextAttestor
from runwire_common.ids import new_id
from tests.hostile.harness import Stack
from tests.hostile.strategies import STREAM_IDS, carried, messages
from tests.hostile.test_bridge_streams import (
    CONTEXT_PLANS,
    STREAM_HINTS,
    STREAMS,
    WITNESS_ID,
    status_after_garbage,
)
from tests.hostile.test_rpc_fields import assert_clear_status

pytestmark = [
    pytest.mark.asyncio(loop_scope="module"),
    pytest.mark.timeout(300),
    pytest.mark.filterwarnings("ignore::hypothesis.errors.HypothesisWarning"),
]

CODES_BY_NUMBER = {code.value[0]: code for code in grpc.StatusCode}
SETTLE_S = 10.0
GENERATED_STARTS = messages(execution_pb2.StartRunsRequest.DESCRIPTOR, STREAM_HINTS)


@st.composite
def starts(draw: st.DrawFn, attestor: ContextAttestor) -> execution_pb2.StartRunsRequest:
    request = draw(GENERATED_STARTS)
    assert isinstance(request, execution_pb2.StartRunsRequest)
    request.start_id = draw(STREAM_IDS)
    request.user_context.CopyFrom(draw(CONTEXT_PLANS).apply(request.user_context, attestor))
    if request.HasField("start") and draw(st.booleans()):  # mostly without the forbidden embedded context
        request.start.ClearField("user_context")
    return request


@STREAMS
@given(data=st.data())
async def test_start_runs_answers_every_generated_start_and_serves_on(
    stack: Stack, attestor: ContextAttestor, data: st.DataObject
) -> None:
    sent = data.draw(st.lists(starts(attestor), min_size=1, max_size=8), label="starts")
    owner = attestor.mint(
        context_pb2.UserContext(user_id=new_id("user"), request_id=new_id("req")), ttl_s=600
    )
    witness = execution_pb2.StartRunsRequest(
        user_context=owner,
        start_id=WITNESS_ID,
        start=execution_pb2.StartRunRequest(agent="scripted", input_json='{"steps": []}'),
    )
    # Generated messages may carry starts in their bundle: each is answered on its own.
    expected = [start for request in [*sent, witness] for start in carried(request)]
    call = stack.execution.StartRuns()
    answers: list[execution_pb2.StartRunsResponse] = []
    try:
        for request in [*sent, witness]:
            await call.write(request)
        await call.done_writing()
        async with asyncio.timeout(SETTLE_S):
            async for answer in call:
                assert not answer.bundle, "answers are bundled only for a sender that announced it"
                answers.append(answer)
            code = await call.code()
    finally:
        call.cancel()
    assert code == grpc.StatusCode.OK, await call.details()
    assert sorted(a.start_id for a in answers) == sorted(s.start_id for s in expected)  # type: ignore[attr-defined]
    timed = any(start.timeout_ms for start in expected)  # type: ignore[attr-defined]
    for answer in answers:
        status = CODES_BY_NUMBER[answer.code]
        event(status.name)
        assert not answer.drained
        if status is grpc.StatusCode.DEADLINE_EXCEEDED:
            # Only a start that gave itself a timeout_ms may run out of it.
            assert timed and answer.message.isprintable() and "Traceback" not in answer.message
        else:
            assert_clear_status("StartRuns", answer, status, answer.message)
        assert answer.HasField("started") == (status is grpc.StatusCode.OK)
    [witnessed] = [a for a in answers if a.start_id == WITNESS_ID and a.HasField("started")]
    assert witnessed.started.run.user_id == owner.user_id


@settings(max_examples=40, suppress_health_check=[HealthCheck.function_scoped_fixture], deadline=None)
@given(garbage=st.binary(min_size=1, max_size=64))
async def test_bytes_that_are_no_start_end_the_stream_with_a_clear_status(
    stack: Stack, garbage: bytes
) -> None:
    code = await status_after_garbage(
        stack.channels["execution"], "/runwire.execution.v1.ExecutionService/StartRuns", garbage
    )
    event(code.name)
    assert code in (grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT)
