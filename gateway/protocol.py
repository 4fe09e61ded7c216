"""Client frames: parsing and validation into typed commands.

Pure functions, no I/O. :func:`parse_frame` turns one WebSocket message into a
command dataclass or raises :class:`FrameError` carrying the error code of the
protocol (``invalid_message`` / ``unknown_type`` / ``invalid_argument``) and the
client's correlation id when it could be read. The commands themselves are
in :mod:`gateway.commands` (re-exported here).
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from gateway.commands import (
    AgentsListFrame,
    CallFrame,
    ClientId,
    Command,
    HeartbeatFrame,
    PingFrame,
    ResumeFrame,
    RunCancelFrame,
    RunGetFrame,
    RunRespondFrame,
    RunsListFrame,
    RunStartFrame,
    ThreadDeleteFrame,
    ThreadGetFrame,
    ThreadsListFrame,
    TypingFrame,
)
from runwire.common.v1 import run_pb2
from runwire_common.context import id_problem
from runwire_common.jsontext import may_hold_surrogates
from runwire_common.names import MULTITASK_STRATEGIES, STATES_BY_NAME

MAX_LIST_LIMIT = 200
MAX_CLIENT_ID_CHARS = 128
MAX_TOKEN_CHARS = 1024
MAX_AGENT_CHARS = 128
# Python refuses to convert longer integer literals (sys.get_int_max_str_digits); say so plainly.
MAX_INT_DIGITS = 4300
# Arrays and objects inside each other; far below where the parser could hit the recursion limit.
MAX_NESTING = 256
_SURROGATE = re.compile(r"[\ud800-\udfff]")

# Close codes (RFC 6455 §7.4.1) the gateway closes connections with.
CLOSE_POLICY_VIOLATION = 1008
CLOSE_INTERNAL_ERROR = 1011
CLOSE_SERVICE_RESTART = 1012
CLOSE_TRY_AGAIN_LATER = 1013

# Error codes of the protocol (§6).
INVALID_MESSAGE = "invalid_message"
UNKNOWN_TYPE = "unknown_type"
INVALID_ARGUMENT = "invalid_argument"
RATE_LIMITED = "rate_limited"
RESOURCE_EXHAUSTED = "resource_exhausted"
UNAVAILABLE = "unavailable"
INTERNAL = "internal"


class FrameError(Exception):
    """A client frame that cannot be served; becomes an ``error`` frame."""

    def __init__(self, code: str, message: str, client_id: ClientId | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.client_id = client_id


# The previous platform's messages (§6, compatibility): chat messages start a run of the
# default agent; typing notices are acknowledged with a ``system_message``.
CHAT_TYPES = frozenset({"user_message", "chat", "chat_message"})
TYPING_TYPES = frozenset({"user_typing", "typing_started", "typing_stopped"})
EMPTY_MESSAGE = "Please enter a message"

KNOWN_TYPES = frozenset(
    CHAT_TYPES
    | TYPING_TYPES
    | {"run.start", "run.cancel", "run.get", "runs.list", "resume", "ping", "start_agent"}
    | {"chat", "heartbeat", "run.respond", "threads.list", "thread.get", "thread.delete", "agents.list"}
)


def parse_frame(message: str | bytes, *, max_frame_bytes: int, default_agent: str) -> Command:
    """Validate one client message and return its command."""
    if isinstance(message, bytes):
        raise FrameError(INVALID_MESSAGE, "binary frames are not supported; send JSON text frames")
    if len(message) > max_frame_bytes or len(message.encode("utf-8", "surrogatepass")) > max_frame_bytes:
        raise FrameError(INVALID_MESSAGE, f"frame larger than the {max_frame_bytes}-byte limit")
    if _nesting_exceeds(message, MAX_NESTING):
        raise FrameError(INVALID_MESSAGE, f"frame is nested more than {MAX_NESTING} levels deep")
    try:
        frame = json.loads(
            message, parse_constant=_reject_constant, parse_float=_finite_float, parse_int=_bounded_int
        )
    except (ValueError, RecursionError) as exc:
        raise FrameError(INVALID_MESSAGE, "frame is not valid JSON") from exc
    if not isinstance(frame, dict):
        raise FrameError(INVALID_MESSAGE, "frame must be a JSON object")
    if may_hold_surrogates(message) and _has_lone_surrogate(frame):
        # Valid JSON syntax, but not Unicode text (RFC 8259 §8.2): it cannot be encoded
        # again, neither into a reply nor into a request to the services.
        raise FrameError(
            INVALID_MESSAGE, "frame contains an unpaired UTF-16 surrogate escape (\\ud800-\\udfff)"
        )
    kind = frame.get("type")
    if not isinstance(kind, str):
        raise FrameError(INVALID_MESSAGE, "frame needs a string 'type'")
    if kind not in KNOWN_TYPES:
        raise FrameError(UNKNOWN_TYPE, f"unknown frame type {kind[:64]!r}", _lenient_id(frame))
    client_id = _client_id(frame)
    try:
        return _build(kind, frame, client_id, default_agent)
    except FrameError as exc:
        exc.client_id = client_id
        raise


def _nesting_exceeds(message: str, limit: int) -> bool:
    """Whether ``message`` opens more than ``limit`` arrays or objects inside each other.

    Checked before parsing so the answer does not depend on how deep the
    parser's own stack happens to be (``json`` raises ``RecursionError`` near
    the interpreter's recursion limit, which counts the caller's frames too).
    Counting brackets is C-fast; only a frame with that many of them is walked
    (brackets inside strings count too, which can only overestimate).
    """
    if message.count("[") + message.count("{") <= limit:
        return False
    depth = 0
    in_string = escaped = False
    for char in message:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            if depth > limit:
                return True
        elif char in "]}":
            depth -= 1
    return False


def _reject_constant(name: str) -> Any:
    # NaN and Infinity are not JSON (RFC 8259); Python's parser would accept them.
    raise ValueError(f"{name} is not valid JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        # 1e400 is valid JSON syntax but overflows a double; echoing it would produce Infinity.
        raise FrameError(INVALID_MESSAGE, f"number {text[:32]} is out of range")
    return value


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise FrameError(INVALID_MESSAGE, f"integer with more than {MAX_INT_DIGITS} digits")
    return int(text)


def _has_lone_surrogate(value: Any) -> bool:
    """Whether any string (key or value) of a parsed document holds a lone surrogate."""
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, str):
            if _SURROGATE.search(item):
                return True
        elif isinstance(item, dict):
            pending.extend(item.keys())
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)
    return False


def _build(kind: str, frame: dict[str, Any], client_id: ClientId | None, default_agent: str) -> Command:
    if kind == "ping":
        return PingFrame(client_id)
    if kind == "heartbeat":
        return HeartbeatFrame(client_id)
    if kind in TYPING_TYPES:
        return TypingFrame(client_id, kind)
    if kind == "start_agent" or kind in CHAT_TYPES:
        return _compat_start(kind, frame, client_id, default_agent)
    cid = _required_id(client_id)
    if kind == "run.start":
        return RunStartFrame(
            id=cid,
            agent=_agent(frame.get("agent")),
            input=_object(frame, "input"),
            thread_id=_optional_id(frame, "thread_id"),
            multitask_strategy=_strategy(frame.get("multitask_strategy")),
        )
    if kind == "run.cancel":
        return RunCancelFrame(cid, _required_id_field(frame, "run_id"))
    if kind == "run.get":
        return RunGetFrame(cid, _required_id_field(frame, "run_id"))
    if kind == "runs.list":
        return RunsListFrame(
            id=cid,
            thread_id=_optional_id(frame, "thread_id"),
            state=_state(frame.get("state")),
            limit=_limit(frame.get("limit")),
            page_token=_optional_str(frame, "page_token", MAX_TOKEN_CHARS),
        )
    if kind == "run.respond":
        return RunRespondFrame(
            id=cid,
            run_id=_required_id_field(frame, "run_id"),
            request_id=_required_id_field(frame, "request_id"),
            response=_object(frame, "response"),
        )
    if kind == "threads.list":
        return ThreadsListFrame(
            id=cid,
            limit=_limit(frame.get("limit")),
            page_token=_optional_str(frame, "page_token", MAX_TOKEN_CHARS),
        )
    if kind == "thread.get":
        return ThreadGetFrame(cid, _required_id_field(frame, "thread_id"))
    if kind == "thread.delete":
        return ThreadDeleteFrame(cid, _required_id_field(frame, "thread_id"))
    if kind == "agents.list":
        return AgentsListFrame(cid)
    if kind == "resume":
        after = frame.get("after")
        if not isinstance(after, str) or cursor_problem(after):
            raise FrameError(INVALID_ARGUMENT, "'after' must be a non-empty event_id string")
        return ResumeFrame(cid, after)
    raise AssertionError(kind)  # pragma: no cover - KNOWN_TYPES is exhaustive


def _compat_start(kind: str, frame: dict[str, Any], client_id: ClientId | None, agent: str) -> RunStartFrame:
    """A run of the default agent for the previous platform's ``start_agent`` or chat message.

    ``start_agent`` has its text in ``payload.user_request``; a chat message in
    ``content`` (preferred) or ``text``, at the top level or in ``payload`` (the
    top level first), and ``thread_id`` likewise. A blank text starts nothing.
    """
    payload = frame.get("payload")
    if kind == "start_agent" and not isinstance(payload, dict):
        raise FrameError(INVALID_ARGUMENT, "'payload' must be an object")
    if payload is not None and not isinstance(payload, dict):
        raise FrameError(INVALID_ARGUMENT, "'payload' must be an object")
    places = (frame, payload) if payload is not None else (frame,)
    names = ("user_request",) if kind == "start_agent" else ("content", "text")
    text = next((p[name] for name in names for p in places if p.get(name) is not None), None)
    holder = next((p for p in places if p.get("thread_id") is not None), frame)
    thread_id = _optional_id(holder, "thread_id")
    if text is not None and not isinstance(text, str):
        field = "'user_request'" if kind == "start_agent" else "'content' (or 'text')"
        raise FrameError(INVALID_ARGUMENT, f"{field} must be a string")
    if text is None or not text.strip():
        raise FrameError(INVALID_ARGUMENT, EMPTY_MESSAGE)
    return RunStartFrame(
        id=client_id,
        agent=agent,
        input={"message": text},
        thread_id=thread_id,
        multitask_strategy=run_pb2.MULTITASK_STRATEGY_REJECT,
    )


def _client_id(frame: dict[str, Any]) -> ClientId | None:
    if "id" not in frame or frame["id"] is None:
        return None
    value = frame["id"]
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise FrameError(INVALID_ARGUMENT, "'id' must be a string or a number")
    if isinstance(value, str) and len(value) > MAX_CLIENT_ID_CHARS:
        raise FrameError(INVALID_ARGUMENT, f"'id' must be at most {MAX_CLIENT_ID_CHARS} characters")
    return value


def _lenient_id(frame: dict[str, Any]) -> ClientId | None:
    try:
        return _client_id(frame)
    except FrameError:
        return None


def _required_id(client_id: ClientId | None) -> ClientId:
    if client_id is None:
        raise FrameError(INVALID_ARGUMENT, "'id' is required")
    return client_id


def _agent(value: Any) -> str:
    if not isinstance(value, str) or not value.strip() or len(value) > MAX_AGENT_CHARS:
        raise FrameError(INVALID_ARGUMENT, "'agent' must be a non-empty string")
    return value


def _object(frame: dict[str, Any], name: str) -> dict[str, Any]:
    value = frame.get(name)
    if not isinstance(value, dict):
        raise FrameError(INVALID_ARGUMENT, f"'{name}' must be an object")
    return value


def _required_id_field(frame: dict[str, Any], name: str) -> str:
    value = frame.get(name)
    if not isinstance(value, str):
        raise FrameError(INVALID_ARGUMENT, f"'{name}' must be a string")
    problem = id_problem(value)
    if problem is not None:
        raise FrameError(INVALID_ARGUMENT, f"'{name}' {problem}")
    return value


def _optional_id(frame: dict[str, Any], name: str) -> str | None:
    if frame.get(name) is None:
        return None
    return _required_id_field(frame, name)


def _optional_str(frame: dict[str, Any], name: str, max_chars: int) -> str | None:
    value = frame.get(name)
    if value is None or value == "":
        return None
    if not isinstance(value, str) or len(value) > max_chars:
        raise FrameError(INVALID_ARGUMENT, f"'{name}' must be a string of at most {max_chars} characters")
    return value


def _strategy(value: Any) -> int:
    if value is None:
        return run_pb2.MULTITASK_STRATEGY_REJECT
    if not isinstance(value, str) or value not in MULTITASK_STRATEGIES:
        raise FrameError(INVALID_ARGUMENT, "'multitask_strategy' must be one of reject, enqueue, interrupt")
    return MULTITASK_STRATEGIES[value]


def _state(value: Any) -> int | None:
    if value is None:
        return None
    if not isinstance(value, str) or value not in STATES_BY_NAME:
        raise FrameError(INVALID_ARGUMENT, f"'state' must be one of {', '.join(sorted(STATES_BY_NAME))}")
    return STATES_BY_NAME[value]


def _limit(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_LIST_LIMIT:
        raise FrameError(INVALID_ARGUMENT, f"'limit' must be an integer from 1 to {MAX_LIST_LIMIT}")
    return value


def cursor_problem(value: str) -> bool:
    return (
        not value.strip()
        or value != value.strip()
        or len(value) > MAX_TOKEN_CHARS
        or any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in value)
    )


__all__ = (
    "AgentsListFrame",
    "CallFrame",
    "ClientId",
    "Command",
    "FrameError",
    "HeartbeatFrame",
    "PingFrame",
    "ResumeFrame",
    "RunCancelFrame",
    "RunGetFrame",
    "RunRespondFrame",
    "RunStartFrame",
    "RunsListFrame",
    "ThreadDeleteFrame",
    "ThreadGetFrame",
    "ThreadsListFrame",
    "TypingFrame",
    "parse_frame",
)
