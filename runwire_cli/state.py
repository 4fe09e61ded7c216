"""``services.json``: what a running ``runwire up`` has started, for other commands to read.

The launcher rewrites the file in its data folder whenever a process starts,
restarts or is given up, and removes it when it stops. ``runwire status``,
``runwire chat`` and people calling the gRPC services directly read it to
learn every process's address, pid and log. Each write goes to a temporary
file that is then renamed over the old one, so a reader never sees half a file.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

STATE_FILE = "services.json"

# "starting": launched for the first time, not yet serving. "restarting": exited
# unexpectedly and waiting for its restart (no pid) or restarted and not yet serving.
ServiceState = Literal["starting", "running", "restarting", "given_up"]


@dataclass(frozen=True)
class ServiceRecord:
    """One process (one replica of one service) as the launcher last saw it."""

    name: str
    kind: str
    replica: int
    address: str | None  # None until a process on a free port has reported it
    pid: int | None  # None while no process runs (waiting to restart, given up)
    log: str
    restarts: int
    started_at: float  # unix time the current (or last) process was started
    state: ServiceState


@dataclass(frozen=True)
class ClusterState:
    """The whole file: when ``runwire up`` started, its pid, and every process."""

    started_at: float
    launcher_pid: int
    services: tuple[ServiceRecord, ...]


def path_in(folder: Path) -> Path:
    return folder / STATE_FILE


def write(folder: Path, state: ClusterState) -> None:
    """Replace the file atomically (temporary file, then rename)."""
    target = path_in(folder)
    temporary = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    document = {
        "started_at": state.started_at,
        "launcher_pid": state.launcher_pid,
        "services": [asdict(record) for record in state.services],
    }
    temporary.write_text(json.dumps(document, indent=2) + "\n")
    os.replace(temporary, target)


def read(folder: Path) -> ClusterState | None:
    """The file's contents, or None when no ``runwire up`` has written one."""
    try:
        document: dict[str, Any] = json.loads(path_in(folder).read_text())
    except FileNotFoundError:
        return None
    return ClusterState(
        started_at=float(document["started_at"]),
        launcher_pid=int(document["launcher_pid"]),
        services=tuple(ServiceRecord(**record) for record in document["services"]),
    )


def remove(folder: Path) -> None:
    path_in(folder).unlink(missing_ok=True)
