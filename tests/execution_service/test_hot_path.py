"""The hot path done once: one attestation per run, one parse of the input, one terminal builder."""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

import execution_service
from execution_service import announcer as announcer_module
from execution_service import emitter as emitter_module
from execution_service.announcer import Announcer
from execution_service.emitter import encode_payload
from execution_service.identity import RunIdentity
from execution_service.outcomes import Outcome, terminal_event
from execution_service.redaction import redact
from execution_service.retry import Backoff
from runwire.common.v1 import context_pb2, run_pb2
from runwire_common.attestation import ContextAttestor, generate_key_spec, parse_keys
from runwire_common.ids import new_id
from tests.conftest import ContextFactory
from tests.execution_service.fakes import FakeBridge, FakeRegistry, Harness, servicer_over
from tests.execution_service.system import System, running_system

MARKER = "marker-7f3a9c"


@pytest.fixture
async def system(
    tmp_path: Path, attestation_key_spec: str, make_context: ContextFactory
) -> AsyncIterator[System]:
    async with running_system(tmp_path, attestation_key_spec, make_context) as running:
        yield running


# --- one attestation per run ---


async def test_a_run_is_attested_once_for_all_its_publishes_and_heartbeats(
    system: System, monkeypatch: pytest.MonkeyPatch
) -> None:
    user = new_id("user")
    contexts = [system.make_context(user, thread_id=new_id("thread")) for _ in range(3)]
    script = {"steps": [{"think": f"step {i}"} for i in range(10)] + [{"sleep_ms": 700}], "result": "ok"}
    mints: list[str] = []
    mint = ContextAttestor.mint

    def counting_mint(self: ContextAttestor, ctx: context_pb2.UserContext, **options: Any) -> Any:
        mints.append(ctx.user_id)
        return mint(self, ctx, **options)

    async with system.watch(user) as watcher:
        monkeypatch.setattr(ContextAttestor, "mint", counting_mint)
        runs = [await system.start(ctx, "scripted", script) for ctx in contexts]
        for run in runs:
            events = await watcher.until_terminal(run.run_id)
            assert events[-1].type == "agent_completed"
            assert len(events) == 12
        monkeypatch.undo()
    # 10+ publishes and 3+ heartbeats per run (heartbeat_interval_s=0.2, 0.7 s asleep), one mint.
    assert mints == [user] * len(runs)


class ClockedAttestor(ContextAttestor):
    """Counts mints; expiries follow a test clock."""

    def __init__(self, clock: Callable[[], float]) -> None:
        super().__init__(parse_keys(generate_key_spec()))
        self.clock = clock
        self.mints = 0

    def mint(self, ctx: context_pb2.UserContext, *, ttl_s: float | None = None) -> context_pb2.UserContext:
        self.mints += 1
        out = super().mint(ctx, ttl_s=ttl_s)
        out.expires_at.seconds = int(self.clock() + (ttl_s or 0))
        return out


def test_a_long_run_is_attested_again_only_near_its_expiry() -> None:
    now = [1_000_000.0]
    attestor = ClockedAttestor(lambda: now[0])
    identity = RunIdentity(
        context_pb2.UserContext(user_id=new_id("user")), attestor=attestor, ttl_s=100, clock=lambda: now[0]
    )
    first = identity.context()
    now[0] += 70  # 30 s of 100 left: more than a quarter
    assert identity.context() is first and attestor.mints == 1
    now[0] += 6  # 24 s left
    renewed = identity.context()
    assert attestor.mints == 2 and renewed.expires_at.seconds == int(now[0]) + 100
    identity.bind_run("run_0123456789abcdef")
    assert identity.context().run_id == "run_0123456789abcdef" and attestor.mints == 2


# --- the run input: parsed once, carried encoded ---


def holds(value: Any, document: Any) -> bool:
    """Whether ``value`` is ``document`` or has it nested inside."""
    if value == document:
        return True
    if isinstance(value, dict):
        return any(holds(item, document) for item in value.values())
    if isinstance(value, list | tuple):
        return any(holds(item, document) for item in value)
    return False


class Counter:
    """Counts JSON parses of texts holding ``MARKER`` and encodes of values holding ``document``."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, document: Any) -> None:
        self.parses = 0
        self.encodes = 0
        loads, dumps, encode = json.loads, json.dumps, json.JSONEncoder.encode

        def counting_loads(text: Any, *args: Any, **kwargs: Any) -> Any:
            if MARKER in (text if isinstance(text, str) else bytes(text).decode()):
                self.parses += 1
            return loads(text, *args, **kwargs)

        def counting_dumps(value: Any, *args: Any, **kwargs: Any) -> str:
            if holds(value, document):
                self.encodes += 1
            return dumps(value, *args, **kwargs)

        def counting_encode(encoder: json.JSONEncoder, value: Any) -> str:
            if holds(value, document):
                self.encodes += 1
            return encode(encoder, value)

        monkeypatch.setattr(json, "loads", counting_loads)
        monkeypatch.setattr(json, "dumps", counting_dumps)
        monkeypatch.setattr(json.JSONEncoder, "encode", counting_encode)


class CallContext:
    """The little of ``grpc.aio.ServicerContext`` that StartRun uses on its success path."""

    def time_remaining(self) -> None:
        return None

    async def abort(self, code: object, details: str) -> None:
        raise AssertionError(f"StartRun failed: {code} {details}")


async def start_run(
    input_json: str, monkeypatch: pytest.MonkeyPatch
) -> tuple[Counter, FakeRegistry, FakeBridge]:
    registry, bridge = FakeRegistry(), FakeBridge()
    under_test = servicer_over(registry, bridge)
    servicer, supervisor = under_test.servicer, under_test.supervisor
    request = under_test.start_request(input_json)
    counter = Counter(monkeypatch, redact(json.loads(input_json)))  # the input as it leaves
    response = await servicer.StartRun(request, CallContext())  # type: ignore[arg-type]
    await supervisor.drain(finish_within_s=5.0, stop_within_s=1.0)
    monkeypatch.undo()
    assert bridge.types(response.run.run_id)[-1] == "agent_completed"
    return counter, registry, bridge


async def test_the_run_input_is_parsed_once_and_never_encoded_again(monkeypatch: pytest.MonkeyPatch) -> None:
    script = {"steps": [{"think": "é", "progress": 0.5}, {"partial": "x"}], "result": MARKER}
    input_json = json.dumps(script, indent=1)
    counter, registry, bridge = await start_run(input_json, monkeypatch)
    assert (counter.parses, counter.encodes) == (1, 0)
    (run,) = registry.runs.values()
    assert run.input_json == input_json  # the caller's text, carried as it came
    (started,) = [e for e in bridge.of(run.run_id) if e.type == "agent_started"]
    assert json.loads(started.payload_json)["input"] == json.loads(input_json)
    assert input_json in started.payload_json


async def test_a_redacted_input_is_encoded_once_for_the_registry_and_the_started_event(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    input_json = json.dumps({"steps": [{"tool": "echo", "args": {"api_key": "sk-123"}}], "result": MARKER})
    counter, registry, bridge = await start_run(input_json, monkeypatch)
    assert (counter.parses, counter.encodes) == (1, 1)
    (run,) = registry.runs.values()
    assert json.loads(run.input_json)["steps"][0]["args"]["api_key"] == "[REDACTED]"
    (started,) = [e for e in bridge.of(run.run_id) if e.type == "agent_started"]
    assert run.input_json in started.payload_json and "sk-123" not in started.payload_json


# --- one terminal builder ---


def test_only_the_outcomes_module_names_terminal_event_types() -> None:
    root = Path(execution_service.__file__).parent
    constant = re.compile(r"\b(AGENT_COMPLETED|AGENT_ERROR|AGENT_CANCELLED|AGENT_DEATH)\b")
    literal = re.compile(r"[\"'](agent_completed|agent_error|agent_cancelled|agent_death)[\"']")
    builders = re.compile(r"\bterminal_event\(")
    found: dict[str, list[str]] = {}
    for path in sorted(root.rglob("*.py")):
        text = path.read_text()
        name = str(path.relative_to(root))
        hits = constant.findall(text) + literal.findall(text)
        if hits:
            found.setdefault("types", []).append(name)
        if builders.search(text):
            found.setdefault("builder calls", []).append(name)
    assert found == {
        "types": ["outcomes.py"],
        "builder calls": ["announcer.py", "emitter.py", "outcomes.py"],
    }


async def test_an_emitter_refuses_a_terminal_event_built_elsewhere() -> None:
    h = Harness()
    engine = await h.engine("scripted", {"steps": []})
    for event_type in ("agent_completed", "agent_error", "agent_cancelled", "agent_death"):
        with pytest.raises(ValueError, match="emit_terminal"):
            await engine.emitter.emit_reserved(event_type, {})


Spy = list[tuple[Outcome, str, dict[str, Any]]]


@pytest.fixture
def built(monkeypatch: pytest.MonkeyPatch) -> Spy:
    """Every call of the one builder, from wherever it is called."""
    calls: Spy = []

    def spy(outcome: Outcome, *, duration_ms: int = 0) -> tuple[str, dict[str, Any]]:
        event_type, payload = terminal_event(outcome, duration_ms=duration_ms)
        calls.append((outcome, event_type, payload))
        return event_type, payload

    monkeypatch.setattr(emitter_module, "terminal_event", spy)
    monkeypatch.setattr(announcer_module, "terminal_event", spy)
    return calls


@pytest.mark.parametrize(
    ("script", "expected_type"),
    [
        ({"steps": [], "result": "done"}, "agent_completed"),
        ({"steps": [{"fail": "no"}]}, "agent_error"),
        ({"steps": [{"sleep_ms": 5000}]}, "agent_error"),  # timeout
    ],
)
async def test_every_engine_end_is_built_by_the_one_builder(
    built: Spy, script: dict[str, Any], expected_type: str
) -> None:
    h = Harness()
    run_id = await h.run("scripted", script, timeout_s=0.3)
    (terminal,) = [e for e in h.bridge.of(run_id) if e.type == expected_type]
    ((_, event_type, payload),) = built
    assert event_type == expected_type and terminal.payload_json == encode_payload(payload)


async def test_cancel_and_shutdown_ends_are_built_by_the_one_builder(built: Spy) -> None:
    h = Harness()
    cancelled = await h.engine("scripted", {"steps": [{"sleep_ms": 5000}]})
    lost = await h.engine("scripted", {"steps": [{"sleep_ms": 5000}]})
    tasks = [asyncio.create_task(engine.execute()) for engine in (cancelled, lost)]
    await asyncio.sleep(0.05)
    cancelled.request_cancel("enough")
    lost.request_shutdown(1.0)
    await asyncio.gather(*tasks)
    ends = {e.run_id: e for e in h.bridge.events if e.type in ("agent_cancelled", "agent_death")}
    assert len(built) == 2 and len(ends) == 2
    for outcome, _, payload in built:
        run_id = cancelled.run_id if outcome.state == run_pb2.RUN_STATE_CANCELLED else lost.run_id
        assert ends[run_id].payload_json == encode_payload(payload)


async def test_an_announced_end_is_built_by_the_one_builder(built: Spy) -> None:
    h = Harness()
    tasks: set[asyncio.Task[None]] = set()
    announcer = Announcer(
        registry=h.registry,
        bridge=h.bridge,
        track=tasks.add,
        publish_retry=Backoff(budget_s=1.0),
        log=logging.getLogger("test"),
    )
    engine = await h.engine("scripted", {"steps": [{"sleep_ms": 5000}]})
    running = asyncio.create_task(engine.execute())
    await asyncio.sleep(0.05)
    ctx = context_pb2.UserContext(user_id=h.user, run_id=engine.run_id)
    await announcer.end_run(ctx, Outcome.cancelled("from another replica"), wait_s=1.0)
    await asyncio.wait_for(running, 2)
    ((_, _, payload),) = built
    (end,) = [e for e in h.bridge.of(engine.run_id) if e.type == "agent_cancelled"]
    assert end.seq > 0 and end.payload_json == encode_payload(payload)
