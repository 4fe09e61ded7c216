"""``runwire up`` as a real process: its output, its state file, its services, ``runwire status``."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from runwire_cli import devsecrets, state
from runwire_cli.tokens import mint_token
from tests.e2e.test_faults import redis_prefix

# A fixture shared with the end-to-end fault tests: a Redis key prefix of one test, deleted after it.
__all__ = ["redis_prefix"]


def wait_until(predicate: Callable[[], Any], *, timeout: float, what: str) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail naming ``what`` otherwise."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {what}")
        time.sleep(0.1)


def processes_of(folder: Path) -> list[int]:
    """Pids of live processes launched for ``folder`` (their settings name files in it)."""
    marker = str(folder).encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes()
            status = (entry / "status").read_text()
        except OSError:
            continue
        if marker in environ and "State:\tZ" not in status and b"_READY_FILE=" in environ:
            found.append(int(entry.name))
    return found


class RunwireUp:
    """One ``runwire up`` subprocess on free ports, with its output collected as it comes."""

    def __init__(self, folder: Path, *args: str) -> None:
        self.folder = folder
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("RUNWIRE_")}
        self.env.update(RUNWIRE_DATA_DIR=str(folder), PYTHONUNBUFFERED="1")
        self.popen = subprocess.Popen(
            [sys.executable, "-m", "runwire_cli", "up", "--gateway-port", "0", "--grace-period", "2", *args],
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.popen.stdout is not None
        with self.popen.stdout:
            for line in self.popen.stdout:
                self.lines.append(line)

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def wait_for_output(self, pattern: str, *, timeout: float = 60) -> re.Match[str]:
        def found() -> re.Match[str] | None:
            return re.search(pattern, self.output)

        try:
            match: re.Match[str] = wait_until(found, timeout=timeout, what=f"output matching {pattern!r}")
        except AssertionError as exc:
            raise AssertionError(f"{exc}; output so far:\n{self.output}") from None
        return match

    def wait_ready(self) -> str:
        """Wait for the ``ws://`` line; return the gateway URL."""
        return self.wait_for_output(r"(?m)^(ws://127\.0\.0\.1:\d+/ws)$").group(1)

    def token(self, user: str) -> str:
        return mint_token(devsecrets.require(self.folder).jwt_secret, user, ttl_s=600)

    def services(self) -> dict[str, state.ServiceRecord]:
        found = state.read(self.folder)
        assert found is not None, "no services.json"
        return {record.name: record for record in found.services}

    def kill(self, name: str) -> int:
        pid = self.services()[name].pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        return pid

    def status(self) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "runwire_cli", "status"],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=30,
        )

    def wait_serving_after_restarts(self, name: str, restarts: int, *, timeout: float = 20) -> str:
        """Wait until ``runwire status`` exits 0 with ``name`` SERVING after ``restarts`` restarts."""
        row = re.compile(rf"(?m)^{re.escape(name)}\s+SERVING\s+\d+\s+\S+\s+\S+\s+{restarts}\s+running$")

        last: list[str] = [""]

        def serving() -> str | None:
            result = self.status()
            last[0] = result.stdout + result.stderr
            return result.stdout if result.returncode == 0 and row.search(result.stdout) else None

        what = f"{name} serving after {restarts} restart(s)"
        try:
            table: str = wait_until(serving, timeout=timeout, what=what)
        except AssertionError as exc:
            raise AssertionError(f"{exc}; last status:\n{last[0]}\noutput:\n{self.output}") from None
        return table

    def interrupt(self, *, timeout: float = 60) -> int:
        """Ctrl-C; return the exit status once it has stopped."""
        self.popen.send_signal(signal.SIGINT)
        return self.wait(timeout=timeout)

    def wait(self, *, timeout: float = 60) -> int:
        code = self.popen.wait(timeout)
        self._reader.join(10)
        return code

    def close(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
        self.wait()
        for pid in processes_of(self.folder):
            os.kill(pid, signal.SIGKILL)


@pytest.fixture
def runwire_up(tmp_path: Path) -> Iterator[Callable[..., RunwireUp]]:
    """Start ``runwire up`` with extra arguments, in a data folder of its own; killed at the end."""
    started: list[RunwireUp] = []

    def factory(*args: str) -> RunwireUp:
        up = RunwireUp(tmp_path / f"data-{len(started)}", *args)
        started.append(up)
        return up

    yield factory
    for up in started:
        up.close()


def assert_all_stopped(up: RunwireUp) -> None:
    """Every service process is gone, and so is the state file."""
    assert "stopped." in up.output
    assert processes_of(up.folder) == []
    assert not state.path_in(up.folder).exists()


def services_json(folder: Path) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(state.path_in(folder).read_text())
    return document
