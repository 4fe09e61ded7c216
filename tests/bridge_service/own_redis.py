"""A ``redis-server`` of a test's own on a free loopback port, for tests that reconfigure or kill Redis.

The shared Redis must never be reconfigured (``maxmemory``, the eviction
policy, renamed commands) nor restarted: such tests start their own server
with this.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

START_TIMEOUT_S = 10.0


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class RedisServer:
    """One ``redis-server`` without persistence on a fixed free port; it can be killed and started again."""

    def __init__(self, binary: str, directory: Path, *args: str) -> None:
        self.port = _free_port()
        self._command = [
            binary,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(directory),
            *args,
        ]
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        """Start the server (again, on the same port: its data is gone) and wait until it accepts."""
        process = subprocess.Popen(self._command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self._process = process
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("redis-server did not start") from None
                time.sleep(0.02)

    def kill(self) -> None:
        """SIGKILL, as a crash: no shutdown, every connection drops."""
        if self._process is not None and self._process.poll() is None:
            self._process.send_signal(signal.SIGKILL)
            self._process.wait()

    def stop(self) -> None:
        process = self._process
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextmanager
def own_redis(directory: Path, *args: str) -> Iterator[RedisServer]:
    """Run ``redis-server`` (no persistence, extra ``args``) until the block exits; yields the server."""
    binary = shutil.which("redis-server")
    if binary is None:
        if os.environ.get("RUNWIRE_REQUIRE_SERVICES") == "1":
            pytest.fail("redis-server is needed, and RUNWIRE_REQUIRE_SERVICES=1 forbids skipping")
        pytest.skip("redis-server is needed to start a Redis of the test's own")
    server = RedisServer(binary, directory, *args)
    try:
        server.start()
        yield server
    finally:
        server.stop()


@contextmanager
def own_redis_server(directory: Path, *args: str) -> Iterator[str]:
    """Run ``redis-server`` (no persistence, extra ``args``) until the block exits; yields its URL."""
    with own_redis(directory, *args) as server:
        yield server.url
