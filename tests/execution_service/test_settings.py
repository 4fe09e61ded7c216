from __future__ import annotations

import os
import subprocess
import sys

import pytest
from pydantic import SecretStr, ValidationError

from execution_service.servicer import effective_timeout
from execution_service.settings import ExecutionSettings
from runwire_common.errors import InvalidArgument


def test_reads_its_settings_from_the_prefixed_environment(
    monkeypatch: pytest.MonkeyPatch, attestation_key_spec: str
) -> None:
    monkeypatch.setenv("RUNWIRE_ATTESTATION_KEYS", attestation_key_spec)
    monkeypatch.setenv("RUNWIRE_EXECUTION_REGISTRY_TARGET", "registry:50051")
    monkeypatch.setenv("RUNWIRE_EXECUTION_BRIDGE_TARGET", "dns:///bridge:50051")
    monkeypatch.setenv("RUNWIRE_EXECUTION_TOOL_TIMEOUT_S", "3")
    settings = ExecutionSettings()  # type: ignore[call-arg]
    assert (settings.registry_target, settings.bridge_target) == ("registry:50051", "dns:///bridge:50051")
    assert settings.tool_timeout_s == 3
    assert (settings.default_timeout_s, settings.heartbeat_interval_s, settings.cancel_grace_s) == (300, 2, 5)


def test_each_process_gets_its_own_executor_id(attestation_key_spec: str) -> None:
    first, second = (
        ExecutionSettings(
            attestation_keys=SecretStr(attestation_key_spec), registry_target="r:1", bridge_target="b:1"
        )
        for _ in range(2)
    )
    assert first.executor_id.startswith("exec_") and first.executor_id != second.executor_id


def test_the_peer_targets_are_required(monkeypatch: pytest.MonkeyPatch, attestation_key_spec: str) -> None:
    for name in ("RUNWIRE_EXECUTION_REGISTRY_TARGET", "RUNWIRE_EXECUTION_BRIDGE_TARGET"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ValidationError, match="registry_target"):
        ExecutionSettings(attestation_keys=SecretStr(attestation_key_spec))  # type: ignore[call-arg]


def test_the_module_exits_with_status_2_on_bad_configuration() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUNWIRE_")}
    done = subprocess.run(
        [sys.executable, "-m", "execution_service"], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2
    assert "invalid configuration" in done.stderr


def test_the_drain_must_fit_in_the_grace_period(attestation_key_spec: str) -> None:
    keys = SecretStr(attestation_key_spec)
    settings = ExecutionSettings(attestation_keys=keys, registry_target="r:1", bridge_target="b:1")
    assert (settings.drain_stop_s, settings.publish_retry_s) == (1.0, 20.0)
    assert (settings.queue_poll_initial_s, settings.queue_poll_max_s) == (0.2, 1.0)
    with pytest.raises(ValidationError, match="drain_stop_s"):
        ExecutionSettings(
            attestation_keys=keys,
            registry_target="r:1",
            bridge_target="b:1",
            grace_period_s=1,
            drain_stop_s=1,
        )


@pytest.mark.parametrize(
    ("agent_s", "requested", "expected"),
    [
        (None, 0, 300.0),
        (None, 2, 2.0),
        (60.0, 0, 60.0),
        (60.0, 120, 60.0),
        (60.0, 5, 5.0),
        (None, 900, 300.0),
    ],
)
def test_a_request_may_only_lower_the_execution_timeout(
    agent_s: float | None, requested: int, expected: float
) -> None:
    assert effective_timeout(agent_s, 300.0, requested) == expected


def test_a_negative_requested_timeout_is_invalid() -> None:
    with pytest.raises(InvalidArgument):
        effective_timeout(None, 300.0, -1)
