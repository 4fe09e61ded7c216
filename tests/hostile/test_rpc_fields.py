"""Arbitrary protobuf field values at every RPC of the registry, bridge and execution services.

Requests are generated from the message descriptors (strings with control
characters and very long ones, integers at their edges, unknown enum numbers,
repeated fields, nested messages, maps). The ``UserContext`` is sometimes left
as generated (unattested or forged), sometimes attested as generated, and most
often given plausible ids and attested with the test key, so the calls get past
the boundary and into validation and domain code. Whatever arrives, each call
ends within its deadline with OK or a clear client-side status.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import grpc
import pytest
import pytest_asyncio
from google.protobuf.message import Message
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st

from runwire.bridge.v1 import bridge_pb2
from runwire.common.v1 import context_pb2
from runwire.execution.v1 import execution_pb2
from runwire.registry.v1 import registry_pb2
from runwire_common.attestation import ContextAttestor
from runwire_common.errors import InvalidArgument
from runwire_common.ids import new_id
from tests.hostile.harness import EVENT_TYPES, REPLY_TIMEOUT_S, Stack
from tests.hostile.strategies import (
    CONTROL_CHARS,
    PROTO_CURSORS,
    encode_json,
    json_values,
    messages,
    plausible_id,
)

pytestmark = [
    pytest.mark.asyncio(loop_scope="module"),
    pytest.mark.timeout(900),
    # Failing examples can be megabytes long; let Hypothesis print them instead of erroring.
    pytest.mark.filterwarnings("ignore::hypothesis.errors.HypothesisWarning"),
]

# A client's mistake, a conflict or a limit: never a server fault, never a hang.
CLIENT_SIDE_CODES = frozenset(
    {
        grpc.StatusCode.OK,
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.OUT_OF_RANGE,
        grpc.StatusCode.ALREADY_EXISTS,
    }
)
# Status details travel as HTTP/2 trailers; gRPC drops the call when they exceed its limit.
TRANSPORT_FAILURES = ("Stream removed", "Received RST_STREAM", "Failed to", "Exception ")
MAX_DETAILS_CHARS = 4096
KNOWN_USER = "user_" + "a1" * 16
RUNS_OF_KNOWN_USER = 6

HOSTILE = settings(
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    deadline=None,
)


@dataclass
class Known:
    """Runs that exist, so generated ids sometimes hit real records (filled by the fixture)."""

    run_ids: list[str] = field(default_factory=list)
    thread_ids: list[str] = field(default_factory=list)
    # Threads of the known user that a generated DeleteThread deleted (their runs are gone).
    deleted_thread_ids: set[str] = field(default_factory=set)

    def surviving_run_ids(self) -> set[str]:
        return {
            run_id
            for run_id, thread_id in zip(self.run_ids, self.thread_ids, strict=True)
            if thread_id not in self.deleted_thread_ids
        }


KNOWN = Known()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def known(stack: Stack, attestor: ContextAttestor) -> AsyncIterator[Known]:
    KNOWN.run_ids.clear()
    KNOWN.thread_ids.clear()
    KNOWN.deleted_thread_ids.clear()
    for _ in range(RUNS_OF_KNOWN_USER):
        ctx = attestor.mint(
            context_pb2.UserContext(user_id=KNOWN_USER, thread_id=new_id("thread"), request_id=new_id("req")),
            ttl_s=600,
        )
        reply = await stack.registry.CreateRun(
            registry_pb2.CreateRunRequest(user_context=ctx, agent="scripted", input_json='{"steps": []}'),
            timeout=REPLY_TIMEOUT_S,
        )
        KNOWN.run_ids.append(reply.run.run_id)
        KNOWN.thread_ids.append(reply.run.thread_id)
    yield KNOWN


def _known(kind: str) -> st.SearchStrategy[str]:
    return st.integers(0, RUNS_OF_KNOWN_USER - 1).map(lambda i: getattr(KNOWN, kind)[i])


USER_IDS = st.one_of(st.just(KNOWN_USER), plausible_id("user"))
THREAD_IDS = st.one_of(_known("thread_ids"), plausible_id("thread"))
RUN_IDS = st.one_of(_known("run_ids"), plausible_id("run"))
JSON_TEXT = st.builds(encode_json, json_values(max_leaves=8), ascii_only=st.just(True))
# Well-formed values for string fields, by field name.
HINTS: dict[str, st.SearchStrategy[str]] = {
    "user_id": USER_IDS,
    "tenant_id": st.one_of(st.just(""), plausible_id("tenant")),
    "thread_id": THREAD_IDS,
    "run_id": RUN_IDS,
    "request_id": plausible_id("req"),
    "connection_id": plausible_id("conn"),
    "parent_request_id": plausible_id("req"),
    "executor_id": plausible_id("exec"),
    "agent": st.sampled_from(["scripted", "assistant", "nope", ""]),
    "input_json": st.one_of(
        st.sampled_from(
            ['{"steps": []}', '{"steps": [{"think": "hm"}], "result": "ok"}', '{"message": "2+3"}']
        ),
        JSON_TEXT,
    ),
    "result_json": JSON_TEXT,
    "response_json": JSON_TEXT,
    "schema_json": JSON_TEXT,
    "parameters_json": JSON_TEXT,
    "tool_calls_json": JSON_TEXT,
    "payload_json": JSON_TEXT,
    "type": st.sampled_from(sorted(EVENT_TYPES)),
    "after": PROTO_CURSORS,
    "event_id": PROTO_CURSORS,
    "page_token": st.one_of(st.just(""), st.text(max_size=40)),
    "key_id": st.just("test"),
    "roles": st.sampled_from(["runs:write", "admin", "", " "]),
    "code": st.sampled_from(["agent_failed", "timeout", ""]),
    "reason": st.one_of(st.text(max_size=40), st.text(CONTROL_CHARS, max_size=5)),
}
RESERVED_ATTRIBUTES = ("user_id", "thread_id", "run_id", "request_id", "connection_id")


@dataclass(frozen=True)
class ContextPlan:
    """How the test turns the generated context into the one it sends."""

    mode: str  # "raw", "attested" (as generated) or "plausible" (plausible ids, attested)
    ttl_s: float
    user_id: str
    tenant_id: str
    thread_id: str
    run_id: str
    request_id: str
    connection_id: str
    operation_depth: int

    def apply(self, raw: context_pb2.UserContext, attestor: ContextAttestor) -> context_pb2.UserContext:
        if self.mode == "raw":
            return raw
        ctx = context_pb2.UserContext()
        ctx.CopyFrom(raw)
        if self.mode == "plausible":
            for name in ("user_id", "tenant_id", "thread_id", "run_id", "request_id", "connection_id"):
                setattr(ctx, name, getattr(self, name))
            ctx.parent_request_id = ""
            ctx.operation_depth = self.operation_depth
            for key in RESERVED_ATTRIBUTES:
                ctx.attributes.pop(key, None)
        try:
            return attestor.mint(ctx, ttl_s=self.ttl_s)
        except InvalidArgument:
            return ctx  # roles no attestor signs (empty, control characters): sent as they are


CONTEXT_PLANS = st.builds(
    ContextPlan,
    mode=st.sampled_from(["plausible"] * 6 + ["attested", "raw"]),
    ttl_s=st.sampled_from([600.0, 600.0, 600.0, -3600.0, 3e9]),
    user_id=USER_IDS,
    tenant_id=st.one_of(st.just(""), plausible_id("tenant")),
    thread_id=st.one_of(THREAD_IDS, THREAD_IDS, THREAD_IDS, st.just("")),
    run_id=st.one_of(RUN_IDS, RUN_IDS, RUN_IDS, st.just("")),
    request_id=plausible_id("req"),
    connection_id=st.one_of(st.just(""), plausible_id("conn")),
    operation_depth=st.integers(0, 10),
)


@st.composite
def requests(draw: st.DrawFn, generated: st.SearchStrategy[Message], attestor: ContextAttestor) -> Message:
    request = draw(generated)
    plan = draw(CONTEXT_PLANS)
    ctx = plan.apply(request.user_context, attestor)  # type: ignore[attr-defined]
    request.user_context.CopyFrom(ctx)  # type: ignore[attr-defined]
    if isinstance(request, bridge_pb2.PublishRequest) and draw(st.booleans()):
        for event in request.events:  # owned by the caller, so validation goes past the owner check
            event.user_id = ctx.user_id
    return request


UNARY_METHODS = [
    ("registry", "CreateRun", registry_pb2.CreateRunRequest),
    ("registry", "TransitionRun", registry_pb2.TransitionRunRequest),
    ("registry", "Heartbeat", registry_pb2.HeartbeatRequest),
    ("registry", "GetRun", registry_pb2.GetRunRequest),
    ("registry", "ListRuns", registry_pb2.ListRunsRequest),
    ("registry", "RequestInput", registry_pb2.RequestInputRequest),
    ("registry", "AnswerInput", registry_pb2.AnswerInputRequest),
    ("registry", "GetInput", registry_pb2.GetInputRequest),
    ("registry", "AppendMessages", registry_pb2.AppendMessagesRequest),
    ("registry", "ListThreads", registry_pb2.ListThreadsRequest),
    ("registry", "GetThread", registry_pb2.GetThreadRequest),
    ("registry", "DeleteThread", registry_pb2.DeleteThreadRequest),
    ("bridge", "Publish", bridge_pb2.PublishRequest),
    ("execution", "StartRun", execution_pb2.StartRunRequest),
    ("execution", "CancelRun", execution_pb2.CancelRunRequest),
    ("execution", "ListAgents", execution_pb2.ListAgentsRequest),
]
# Built once: the descriptor walk is the expensive part.
GENERATED = {
    cls: messages(cls.DESCRIPTOR, HINTS)
    for _, _, cls in [*UNARY_METHODS, ("bridge", "Subscribe", bridge_pb2.SubscribeRequest)]
}


# Known bugs outside the gateway would be pinned by an xfail test and left out of the
# generic property here, so that it keeps guarding everything else.


def known_bug(request: Message) -> bool:
    return False  # none left: the long unknown agent name is fixed (see the regression test below)


def status_problem(code: grpc.StatusCode, details: str | None) -> str | None:
    """Why a call's outcome is not a clear client-side answer, or ``None`` when it is."""
    if code not in CLIENT_SIDE_CODES:
        return f"{code.name} is not a client-side status"
    if code == grpc.StatusCode.OK:
        return None
    if not details or not details.strip():
        return "no details"
    if "Traceback" in details or 'File "' in details:
        return "a traceback in the details"
    if not details.isprintable():
        return "unprintable characters in the details"
    # A domain message, not the transport giving up on it (e.g. details over the metadata limit).
    if details.startswith(TRANSPORT_FAILURES):
        return "a transport failure instead of a domain error"
    if len(details) > MAX_DETAILS_CHARS:
        return f"{len(details)}-character details"
    return None


def assert_clear_status(method: str, request: Message, code: grpc.StatusCode, details: str | None) -> None:
    problem = status_problem(code, details)
    assert problem is None, f"{method} -> {code.name} {(details or '')[:300]!r}: {problem}\n{request!r:.3000}"


@pytest.mark.parametrize(
    ("service", "method", "request_cls"), UNARY_METHODS, ids=[m[1] for m in UNARY_METHODS]
)
@HOSTILE
@given(data=st.data())
async def test_every_unary_rpc_answers_any_field_values_with_ok_or_a_clear_client_error(
    stack: Stack,
    attestor: ContextAttestor,
    known: Known,
    service: str,
    method: str,
    request_cls: type[Message],
    data: st.DataObject,
) -> None:
    request = data.draw(requests(GENERATED[request_cls], attestor), label="request")
    assume(not known_bug(request))
    call = getattr(getattr(stack, service), method)
    try:
        await call(request, timeout=REPLY_TIMEOUT_S)
    except grpc.aio.AioRpcError as exc:
        event(exc.code().name)  # the spread of outcomes: --hypothesis-show-statistics
        assert_clear_status(method, request, exc.code(), exc.details())
    else:
        event("OK")
        if method == "DeleteThread":
            KNOWN.deleted_thread_ids.add(request.user_context.thread_id)  # type: ignore[attr-defined]


@HOSTILE
@given(data=st.data())
async def test_subscribe_answers_any_field_values_with_a_stream_or_a_clear_client_error(
    stack: Stack, attestor: ContextAttestor, known: Known, data: st.DataObject
) -> None:
    request = data.draw(requests(GENERATED[bridge_pb2.SubscribeRequest], attestor), label="request")
    call = stack.bridge.Subscribe(request, timeout=REPLY_TIMEOUT_S)
    items: list[bridge_pb2.SubscribeResponse] = []
    try:
        # A valid subscription starts with replayed events, a gap or replay_complete at once;
        # reading up to the end of the replay never waits for live events.
        async for item in call:
            items.append(item)
            if item.HasField("replay_complete") or len(items) >= 2:
                break
    except grpc.aio.AioRpcError as exc:
        event(exc.code().name)
        assert_clear_status("Subscribe", request, exc.code(), exc.details())
    else:
        event("OK")
    finally:
        call.cancel()
    for item in items:
        if item.HasField("event"):
            assert item.event.user_id == request.user_context.user_id  # only the caller's events


@pytest.mark.parametrize("length", [5_000, 20_000])
async def test_start_run_with_a_very_long_unknown_agent_name_is_a_clear_not_found(
    stack: Stack, attestor: ContextAttestor, length: int
) -> None:
    ctx = attestor.mint(
        context_pb2.UserContext(user_id=KNOWN_USER, thread_id=new_id("thread"), request_id=new_id("req")),
        ttl_s=600,
    )
    request = execution_pb2.StartRunRequest(user_context=ctx, agent="x" * length, input_json="{}")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stack.execution.StartRun(request, timeout=REPLY_TIMEOUT_S)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert status_problem(caught.value.code(), caught.value.details()) is None


async def test_the_services_still_serve_after_the_hostile_requests(
    stack: Stack, attestor: ContextAttestor, known: Known
) -> None:
    assert all((await stack.services_serving()).values())
    ctx = attestor.mint(context_pb2.UserContext(user_id=KNOWN_USER, request_id=new_id("req")), ttl_s=60)
    page = await stack.registry.ListRuns(
        registry_pb2.ListRunsRequest(user_context=ctx, page_size=200), timeout=REPLY_TIMEOUT_S
    )
    assert {r.run_id for r in page.runs} >= known.surviving_run_ids()
    agents = await stack.execution.ListAgents(
        execution_pb2.ListAgentsRequest(user_context=ctx), timeout=REPLY_TIMEOUT_S
    )
    assert {"scripted", "assistant"} <= {a.name for a in agents.agents}
    assert isinstance(json.loads(agents.agents[0].tools[0].parameters_schema_json), dict)
