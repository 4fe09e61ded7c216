"""Generated request sequences on the registry's long-lived stream, WriteRuns.

Each example opens one stream and sends a short sequence of generated writes
(any field values, the embedded request's own context sometimes set, the
write's context unattested, forged, expired or attested, write ids that
collide on purpose), then a well-formed witness write. Whatever came before,
the stream keeps serving: every write is answered once with OK or a clear
client-side status, the witness creates its run for its own user, and the
stream ends OK when the sender half-closes. Only a registry runs here.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
import pytest_asyncio
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from pydantic import SecretStr

from registry_service.app import running_service
from registry_service.settings import RegistrySettings
from runwire.common.v1 import context_pb2, run_pb2
from runwire.registry.v1 import registry_pb2, registry_pb2_grpc
from runwire_common.attestation import ContextAttestor
from runwire_common.ids import new_id
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
GENERATED_WRITES = messages(registry_pb2.WriteRunsRequest.DESCRIPTOR, STREAM_HINTS)


@st.composite
def writes(draw: st.DrawFn, attestor: ContextAttestor) -> registry_pb2.WriteRunsRequest:
    request = draw(GENERATED_WRITES)
    assert isinstance(request, registry_pb2.WriteRunsRequest)
    request.write_id = draw(STREAM_IDS)
    request.user_context.CopyFrom(draw(CONTEXT_PLANS).apply(request.user_context, attestor))
    kind = request.WhichOneof("write")
    if kind is not None and draw(st.booleans()):  # mostly without the forbidden embedded context
        getattr(request, kind).ClearField("user_context")
    return request


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def registry(
    tmp_path_factory: pytest.TempPathFactory, attestation_key_spec: str
) -> AsyncIterator[grpc.aio.Channel]:
    data: Path = tmp_path_factory.mktemp("hostile-registry")
    registry_settings = RegistrySettings(
        attestation_keys=SecretStr(attestation_key_spec),
        database_url=f"sqlite+aiosqlite:///{data / 'registry.db'}",
        host="127.0.0.1",
        port=0,
        grace_period_s=2,
        max_live_runs_per_user=1000,
    )
    async with (
        running_service(registry_settings) as server,
        grpc.aio.insecure_channel(server.address) as channel,
    ):
        yield channel


@STREAMS
@given(data=st.data())
async def test_write_runs_answers_every_generated_write_and_serves_on(
    registry: grpc.aio.Channel, attestor: ContextAttestor, data: st.DataObject
) -> None:
    sent = data.draw(st.lists(writes(attestor), min_size=1, max_size=8), label="writes")
    owner = attestor.mint(
        context_pb2.UserContext(user_id=new_id("user"), thread_id=new_id("thread"), request_id=new_id("req")),
        ttl_s=600,
    )
    witness = registry_pb2.WriteRunsRequest(
        user_context=owner,
        write_id=WITNESS_ID,
        create_run=registry_pb2.CreateRunRequest(agent="scripted", input_json='{"steps": []}'),
    )
    # Generated messages may carry writes in their bundle: each is answered on its own.
    expected = [write for request in [*sent, witness] for write in carried(request)]
    call = registry_pb2_grpc.RegistryServiceStub(registry).WriteRuns()
    answers: list[registry_pb2.WriteRunsResponse] = []
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
    assert sorted(a.write_id for a in answers) == sorted(w.write_id for w in expected)  # type: ignore[attr-defined]
    for answer in answers:
        status = CODES_BY_NUMBER[answer.code]
        event(status.name)
        assert not answer.drained
        assert_clear_status("WriteRuns", answer, status, answer.message)
        if status is grpc.StatusCode.OK:
            assert answer.WhichOneof("result") is not None
        else:
            assert answer.WhichOneof("result") is None
    [witnessed] = [a for a in answers if a.write_id == WITNESS_ID and a.HasField("create_run")]
    assert witnessed.create_run.run.user_id == owner.user_id
    assert witnessed.create_run.run.state == run_pb2.RUN_STATE_PENDING


@settings(max_examples=40, suppress_health_check=[HealthCheck.function_scoped_fixture], deadline=None)
@given(garbage=st.binary(min_size=1, max_size=64))
async def test_bytes_that_are_no_write_end_the_stream_with_a_clear_status(
    registry: grpc.aio.Channel, garbage: bytes
) -> None:
    code = await status_after_garbage(registry, "/runwire.registry.v1.RegistryService/WriteRuns", garbage)
    event(code.name)
    assert code in (grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT)
