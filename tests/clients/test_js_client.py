"""The JavaScript client (``clients/js``) under Node's test runner, against the services as processes.

A private cluster (its bridge keeps only ``LOG_CAPACITY`` events per user, so
a gap can be provoked) runs while ``node --test`` runs the client's whole
suite: the unit tests with a fake WebSocket, the type check of its
declarations and the integration tests, which get the gateway URL, the JWT
secret (they mint their own tokens) and the URL of a small HTTP control
endpoint served here: ``POST /gateway/kill`` (SIGKILL) or
``POST /gateway/terminate`` (SIGTERM, the gateway drains with 1012) stops the
gateway, starts it again on the same port and answers once it serves again,
so the client's reconnect and resume happen for real.

The client's devDependencies (``ws``, ``typescript``) are installed from its
lock file with ``npm ci`` when missing. Without node and npm the test is
skipped, except in CI (``RUNWIRE_REQUIRE_SERVICES=1``), where it fails.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.e2e.conftest import Launch, System, launch
from tests.support.node import npm_project

# The end-to-end cluster fixture, shared with tests/e2e.
__all__ = ["launch"]

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
JS_CLIENT = ROOT / "clients" / "js"
LOG_CAPACITY = 20  # below the gateway's coalescing threshold (32): a replay arrives event by event
TEST_FILES = ("test/units.test.js", "test/client.test.js", "test/types.test.js", "test/integration.test.js")
INTEGRATION_TESTS = (
    "a run: requests answer, its events arrive once each in seq order",
    "input_required is answered with respond(); cancelRun ends a run",
    "errors reject with RunwireError codes and leave the connection open",
    "the gateway killed mid-run: the client resumes, every event once, in seq order",
    "the gateway terminated mid-run: the client resumes, every event once, in seq order",
    "resuming from a cursor older than the retained log surfaces a gap",
    "a token that expires closes the connection with 1008, which is not retried",
    "with getToken a short-lived token is replaced before it expires, without losing the session",
)


@pytest.fixture(scope="session")
def js_client() -> Path:
    """``clients/js`` with its devDependencies installed from the lock file."""
    return npm_project(JS_CLIENT, needed_for="the JavaScript client's tests")


class _Control(ThreadingHTTPServer):
    """``POST /gateway/kill`` or ``/gateway/terminate``: stop the gateway, start it again, then answer."""

    daemon_threads = True

    def __init__(self, system: System) -> None:
        super().__init__(("127.0.0.1", 0), _ControlHandler)
        self.system = system
        self.lock = threading.Lock()
        self.restarts: list[str] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _ControlHandler(BaseHTTPRequestHandler):
    server: _Control
    SIGNALS = {"/gateway/kill": signal.SIGKILL, "/gateway/terminate": signal.SIGTERM}

    def do_POST(self) -> None:
        sig = self.SIGNALS.get(self.path)
        if sig is None:
            self._answer(404, {"error": "unknown path"})
            return
        try:
            with self.server.lock:
                cluster = self.server.system.cluster
                proc = cluster.processes["gateway"][0]
                proc.signal(sig)
                code = proc.wait(30)
                if code is None:
                    raise RuntimeError(f"the gateway did not exit: {proc.log_tail()}")
                cluster.restart(proc)
                self.server.restarts.append(f"{self.path}: exit {code}")
        except (OSError, RuntimeError) as exc:  # LaunchError too: reported to the node test, which fails
            self._answer(500, {"error": repr(exc)})
            return
        self._answer(200, {"exit_code": code})

    def _answer(self, status: int, body: dict[str, object]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def control(launch: Launch) -> Iterator[_Control]:
    system = launch(
        grace_period_s=2,
        service_env={"bridge": {"RUNWIRE_BRIDGE_LOG_CAPACITY": str(LOG_CAPACITY)}},
    )
    server = _Control(system)
    thread = threading.Thread(target=server.serve_forever, name="js-client-control", daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_the_js_client_passes_its_node_test_suite_against_the_services(
    js_client: Path, control: _Control
) -> None:
    system = control.system
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUNWIRE_")}
    env.update(
        {
            "RUNWIRE_JS_GATEWAY_URL": system.url,
            "RUNWIRE_JS_JWT_SECRET": system.jwt_secret,
            "RUNWIRE_JS_CONTROL_URL": control.url,
            "RUNWIRE_JS_LOG_CAPACITY": str(LOG_CAPACITY),
        }
    )
    done = subprocess.run(
        ["node", "--test", "--test-reporter=tap", *TEST_FILES],
        cwd=js_client,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    report = _failures(done.stdout) + done.stderr[-4000:]
    assert done.returncode == 0, report
    summary = dict(
        re.findall(r"^# (tests|pass|fail|cancelled|skipped|todo) (\d+)$", done.stdout, re.MULTILINE)
    )
    # Every test ran and passed: one that skipped itself (no services) must not pass silently.
    assert summary.get("fail") == "0" and summary.get("cancelled") == "0", report
    assert summary.get("skipped") == "0" and summary.get("todo") == "0", report
    report = done.stdout[-6000:] + done.stderr[-2000:]
    assert int(summary.get("pass", 0)) == int(summary.get("tests", -1)) >= 40, report
    for name in INTEGRATION_TESTS:  # present (a suite skipped as a whole would not count)
        assert re.search(rf"^\s*ok \d+ - {re.escape(name)}$", done.stdout, re.MULTILINE), (
            f"{name!r}:\n{report}"
        )
    assert control.restarts == ["/gateway/kill: exit -9", "/gateway/terminate: exit 0"], control.restarts


def _failures(tap: str) -> str:
    """The ``not ok`` entries of a TAP report with their diagnostics (the whole report when none)."""
    lines = tap.splitlines()
    picked: list[str] = []
    for index, line in enumerate(lines):
        if line.lstrip().startswith("not ok ") and "failureType: 'subtestsFailed'" not in "\n".join(
            lines[index : index + 8]
        ):
            picked += [*lines[index : index + 40], "…"]
    return "\n".join(picked) + "\n" if picked else tap[-8000:]
