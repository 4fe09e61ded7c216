"""The commands a client frame becomes (:func:`gateway.protocol.parse_frame`).

Each call command names the RPC it is served by (``rpc``; traces are named
after it). Named apart from the RPCs' own request messages.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

ClientId = str | int | float


@dataclass(frozen=True)
class RunStartFrame:
    """``run.start`` (and the compatibility aliases that start a run) → ``ExecutionService.StartRun``."""

    rpc: ClassVar[str] = "StartRun"
    id: ClientId | None
    agent: str
    input: Mapping[str, Any]
    thread_id: str | None
    multitask_strategy: int


@dataclass(frozen=True)
class RunCancelFrame:
    """``run.cancel`` → ``ExecutionService.CancelRun``."""

    rpc: ClassVar[str] = "CancelRun"
    id: ClientId
    run_id: str


@dataclass(frozen=True)
class RunGetFrame:
    """``run.get`` → ``RegistryService.GetRun``."""

    rpc: ClassVar[str] = "GetRun"
    id: ClientId
    run_id: str


@dataclass(frozen=True)
class RunsListFrame:
    """``runs.list`` → ``RegistryService.ListRuns``."""

    rpc: ClassVar[str] = "ListRuns"
    id: ClientId
    thread_id: str | None
    state: int | None
    limit: int | None
    page_token: str | None


@dataclass(frozen=True)
class RunRespondFrame:
    """``run.respond`` → ``ExecutionService.RespondRun``."""

    rpc: ClassVar[str] = "RespondRun"
    id: ClientId
    run_id: str
    request_id: str
    response: Mapping[str, Any]


@dataclass(frozen=True)
class ThreadsListFrame:
    """``threads.list`` → ``RegistryService.ListThreads``."""

    rpc: ClassVar[str] = "ListThreads"
    id: ClientId
    limit: int | None
    page_token: str | None


@dataclass(frozen=True)
class ThreadGetFrame:
    """``thread.get`` → ``RegistryService.GetThread``."""

    rpc: ClassVar[str] = "GetThread"
    id: ClientId
    thread_id: str


@dataclass(frozen=True)
class ThreadDeleteFrame:
    """``thread.delete`` → ``RegistryService.DeleteThread``."""

    rpc: ClassVar[str] = "DeleteThread"
    id: ClientId
    thread_id: str


@dataclass(frozen=True)
class AgentsListFrame:
    """``agents.list`` → ``ExecutionService.ListAgents``."""

    rpc: ClassVar[str] = "ListAgents"
    id: ClientId


@dataclass(frozen=True)
class ResumeFrame:
    id: ClientId
    after: str


@dataclass(frozen=True)
class PingFrame:
    id: ClientId | None


@dataclass(frozen=True)
class HeartbeatFrame:
    id: ClientId | None


@dataclass(frozen=True)
class TypingFrame:
    """A typing notice of the previous platform's clients (``user_typing`` …); ``kind`` is its type."""

    id: ClientId | None
    kind: str


# The frames served by a gRPC call (``rpc`` names it; traces are named after it).
CallFrame = (
    RunStartFrame
    | RunCancelFrame
    | RunGetFrame
    | RunsListFrame
    | RunRespondFrame
    | ThreadsListFrame
    | ThreadGetFrame
    | ThreadDeleteFrame
    | AgentsListFrame
)
Command = CallFrame | ResumeFrame | PingFrame | HeartbeatFrame | TypingFrame
