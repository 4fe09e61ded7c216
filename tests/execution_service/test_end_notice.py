"""The terminal event handed to the registry with the terminal transition is the one published."""

from __future__ import annotations

from execution_service.engine import EngineConfig
from tests.execution_service.fakes import Harness


async def test_the_registry_gets_exactly_the_terminal_event_the_bridge_gets() -> None:
    h = Harness()
    run_id = await h.run("scripted", {"steps": [{"think": "quick"}], "result": "done"})
    (end,) = h.registry.end_events[run_id]
    terminal = h.bridge.of(run_id)[-1]
    assert end.type == terminal.type == "agent_completed"
    assert end.payload_json == terminal.payload_json
    assert '"final_response":"done"' in end.payload_json


async def test_a_failed_run_hands_its_agent_error_to_the_registry() -> None:
    h = Harness()
    run_id = await h.run("scripted", {"steps": [{"fail": "nope"}], "result": "never"})
    (end,) = h.registry.end_events[run_id]
    terminal = h.bridge.of(run_id)[-1]
    assert end.type == terminal.type == "agent_error"
    assert end.payload_json == terminal.payload_json


async def test_a_terminal_event_the_bridge_never_took_is_still_held_by_the_registry() -> None:
    config = EngineConfig(
        executor_id="exec_unit_tests_000000", heartbeat_interval_s=0.05, publish_retry_s=0.2
    )
    h = Harness(config=config)
    engine = await h.engine("scripted", {"steps": [{"think": "quick"}], "result": "done"})
    h.bridge.unavailable_calls = 1_000_000
    await engine.execute()
    assert h.bridge.of(engine.run_id) == []
    (end,) = h.registry.end_events[engine.run_id]
    assert end.type == "agent_completed" and '"final_response":"done"' in end.payload_json
    assert h.state(engine.run_id) == "completed"
