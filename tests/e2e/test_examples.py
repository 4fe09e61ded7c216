"""The internal-caller examples of ``examples/`` run against the services as processes.

Each example starts a run for a fresh user, follows its events through
``Subscribe`` to the terminal event and lists the user's runs. The Python one
runs as a script; the Node one runs its ``node --test`` suite, after installing
its dependencies from ``examples/node/package-lock.json`` when they are missing.
Without node and npm the Node test is skipped, except in CI
(``RUNWIRE_REQUIRE_SERVICES=1``), where it fails.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from runwire_common.ids import new_id
from tests.e2e.conftest import System
from tests.support.node import npm_project

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
PYTHON_EXAMPLE = ROOT / "examples" / "python" / "internal_caller.py"
NODE_EXAMPLE = ROOT / "examples" / "node"
EVENT_LINE = re.compile(r"\[\s*(\d+)\] (\w+)\s")


def _env(system: System, keys: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUNWIRE_")}
    env["RUNWIRE_ATTESTATION_KEYS"] = keys
    for kind in ("execution", "bridge", "registry"):
        env[f"RUNWIRE_{kind.upper()}_ADDRESS"] = system.address(kind)
    return env


def test_the_python_example_follows_a_new_run_to_its_end_and_lists_it(
    system: System, attestation_key_spec: str
) -> None:
    user = new_id("user")
    done = subprocess.run(
        [sys.executable, str(PYTHON_EXAMPLE), "--user", user, "--message", "what is 6 * 7?"],
        env=_env(system, attestation_key_spec),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    started = re.fullmatch(r"run (run_\w+) started on thread (thread_\w+)", lines[0])
    assert started is not None, lines[0]
    run_id, thread_id = started.groups()
    events = [m.groups() for m in map(EVENT_LINE.match, lines) if m]
    assert [int(seq) for seq, _ in events] == list(range(1, len(events) + 1))
    assert events[0][1] == "agent_started" and events[-1][1] == "agent_completed"
    assert '"final_response": "6 * 7 = 42"' in done.stdout or '"final_response":"6 * 7 = 42"' in done.stdout
    listing = lines[lines.index(f"{user}'s latest runs:") + 1 :]
    assert [line.split() for line in listing] == [[run_id, "assistant", "completed", thread_id]]


@pytest.fixture(scope="session")
def node_example() -> Path:
    """``examples/node`` with its dependencies installed from the lock file."""
    return npm_project(NODE_EXAMPLE, needed_for="the Node example")


def test_the_node_example_passes_its_node_test_suite_against_the_services(
    node_example: Path, system: System, attestation_key_spec: str
) -> None:
    env = _env(system, attestation_key_spec)
    minted = subprocess.run(
        [sys.executable, "-m", "runwire_cli", "context", "mint", "--user", new_id("user"), "--ttl", "120"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    env["RUNWIRE_MINTED_CONTEXT_JSON"] = minted.stdout
    done = subprocess.run(
        ["node", "--test", "--test-reporter=tap", "test/"],
        cwd=node_example,
        env=env,
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    report = done.stdout + done.stderr
    assert done.returncode == 0, report
    # Every test ran: a test that skipped itself (no addresses) must not pass silently.
    assert re.search(r"^# pass 4$", done.stdout, re.MULTILINE), report
    assert re.search(r"^# skipped 0$", done.stdout, re.MULTILINE), report
