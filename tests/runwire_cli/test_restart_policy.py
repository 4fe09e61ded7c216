"""How soon a process that exited is restarted, and when it is given up."""

from __future__ import annotations

import pytest

from runwire_cli.main import build_parser
from runwire_cli.supervisor import RestartPolicy, describe_exit


def test_the_first_restart_is_immediate_then_the_wait_doubles_up_to_the_cap() -> None:
    policy = RestartPolicy(backoff_s=0.5, max_backoff_s=3.0)
    assert [policy.delay_s(exits) for exits in range(1, 7)] == [0.0, 0.5, 1.0, 2.0, 3.0, 3.0]


@pytest.mark.parametrize(
    "options",
    [{"max_restarts": -1}, {"window_s": 0}, {"backoff_s": -1}, {"backoff_s": 20, "max_backoff_s": 10}],
)
def test_a_policy_that_cannot_work_is_refused(options: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        RestartPolicy(**options)


def test_an_exit_is_described_by_its_code_or_the_signal_that_ended_it() -> None:
    assert describe_exit(2) == "exit code 2"
    assert describe_exit(-9) == "killed by SIGKILL"


def test_a_setting_for_one_service_names_the_service_and_the_variable() -> None:
    parser = build_parser()
    args = parser.parse_args(["up", "--service-env", "gateway:RUNWIRE_GATEWAY_PING_INTERVAL_S=5"])
    assert args.service_env == [("gateway", "RUNWIRE_GATEWAY_PING_INTERVAL_S", "5")]
    for bad in ("RUNWIRE_X=1", "nosuch:RUNWIRE_X=1", "gateway:RUNWIRE_X"):
        with pytest.raises(SystemExit):
            parser.parse_args(["up", "--service-env", bad])
