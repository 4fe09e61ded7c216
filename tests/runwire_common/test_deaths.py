"""Both services that announce a death send one payload shape."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from execution_service.outcomes import Outcome, terminal_event
from registry_service.death import DeathNotice
from registry_service.notifier import death_event
from runwire.common.v1 import run_pb2
from runwire_common.deaths import RECOVERY_ACTIONS


def test_the_registry_and_the_execution_service_announce_deaths_with_the_same_keys() -> None:
    now = datetime.now(UTC)
    notice = DeathNotice(
        run_id="run_a",
        user_id="user_a",
        tenant_id="",
        thread_id="thread_a",
        agent="scripted",
        died_at=now,
        claimed_at=now,
    )
    from_registry = json.loads(death_event(notice).payload_json)
    event_type, from_execution = terminal_event(
        Outcome(state=run_pb2.RUN_STATE_DEAD, error_code="executor_lost", error_message="the replica stopped")
    )
    assert event_type == "agent_death"
    assert set(from_registry) == set(from_execution)
    assert from_registry["death_cause"] == "no_heartbeat" and from_execution["death_cause"] == "executor_lost"
    for payload in (from_registry, from_execution):
        assert payload["status"] == "dead"
        assert payload["recovery_action"] in RECOVERY_ACTIONS
        assert payload["recovery_hint"]
