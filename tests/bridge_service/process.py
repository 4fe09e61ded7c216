"""Starting ``python -m bridge_service`` as a real process for a test."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Mapping
from pathlib import Path


async def spawn_bridge(
    env: Mapping[str, str], ready: Path, *, stderr: int = asyncio.subprocess.DEVNULL
) -> tuple[asyncio.subprocess.Process, int]:
    """The bridge process and its gRPC port, once it wrote ``ready`` (``RUNWIRE_BRIDGE_READY_FILE``).

    A process that exits or is not ready within 20 s fails the test, and is killed.
    """
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bridge_service",
        env=dict(env),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=stderr,
    )
    try:
        async with asyncio.timeout(20):
            while not await asyncio.to_thread(ready.exists):
                assert process.returncode is None, "the bridge exited during start-up"
                await asyncio.sleep(0.05)
        return process, int(json.loads(await asyncio.to_thread(ready.read_text))["port"])
    except BaseException:
        if process.returncode is None:
            process.kill()
            await process.wait()
        raise
