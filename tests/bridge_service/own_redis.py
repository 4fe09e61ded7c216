"""A ``redis-server`` of a test's own on a free loopback port, for tests that reconfigure Redis.

The shared Redis must never be reconfigured (``maxmemory``, the eviction
policy, renamed commands): such tests start their own server with this.
"""

from __future__ import annotations

import os
import shutil
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


@contextmanager
def own_redis_server(directory: Path, *args: str) -> Iterator[str]:
    """Run ``redis-server`` (no persistence, extra ``args``) until the block exits; yields its URL."""
    binary = shutil.which("redis-server")
    if binary is None:
        if os.environ.get("RUNWIRE_REQUIRE_SERVICES") == "1":
            pytest.fail("redis-server is needed, and RUNWIRE_REQUIRE_SERVICES=1 forbids skipping")
        pytest.skip("redis-server is needed to start a Redis of the test's own")
    port = _free_port()
    process = subprocess.Popen(
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(directory),
            *args,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                    break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("redis-server did not start") from None
                time.sleep(0.02)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
