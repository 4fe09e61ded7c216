"""Server frames: JSON rendering of runs, events and replies.

An event's ``payload_json`` was encoded once at the source; it is spliced into
the frame as-is, never parsed and re-encoded here.
"""

from __future__ import annotations

import json
import time
from json.encoder import encode_basestring
from typing import Any

from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from gateway.protocol import ClientId
from runwire.bridge.v1 import bridge_pb2
from runwire.common.v1 import event_pb2, run_pb2
from runwire.execution.v1 import execution_pb2
from runwire_common.names import INPUT_KIND_NAMES, MESSAGE_ROLE_NAMES, state_name
from runwire_common.timeutil import rfc3339, timestamp_rfc3339, utcnow


def dumps(frame: dict[str, Any]) -> str:
    return json.dumps(frame, ensure_ascii=False, separators=(",", ":"))


def server_time() -> str:
    return rfc3339(utcnow())


def _time_or_none(message: Message, field: str) -> str | None:
    if not message.HasField(field):
        return None
    value: Timestamp = getattr(message, field)
    if value.seconds == 0 and value.nanos == 0:
        return None
    return timestamp_rfc3339(value)


def _json_or(text: str, default: Any) -> Any:
    if not text:
        return default
    try:
        return json.loads(text)
    except ValueError:
        return default


def run_json(run: run_pb2.Run) -> dict[str, Any]:
    """The run object of replies (``run.accepted``, ``run``, ``runs`` …)."""
    error = None
    if run.HasField("error") and (run.error.code or run.error.message):
        error = {"code": run.error.code, "message": run.error.message}
    return {
        "run_id": run.run_id,
        "thread_id": run.thread_id,
        "agent": run.agent,
        "state": state_name(run.state),
        "created_at": _time_or_none(run, "created_at"),
        "updated_at": _time_or_none(run, "updated_at"),
        "started_at": _time_or_none(run, "started_at"),
        "finished_at": _time_or_none(run, "finished_at"),
        "error": error,
        "result": _json_or(run.result_json, None),
        "input": _json_or(run.input_json, {}),
        "cancel_requested": run.cancel_requested,
        "pending_input": input_json(run.pending_input) if run.HasField("pending_input") else None,
    }


def input_json(request: run_pb2.InputRequest) -> dict[str, Any]:
    """What a waiting run asked (``run.pending_input``), as its ``input_required`` event said it."""
    out: dict[str, Any] = {
        "request_id": request.request_id,
        "kind": INPUT_KIND_NAMES.get(request.kind, "input"),
        "prompt": request.prompt,
        "schema": _json_or(request.schema_json, None),
        "expires_at": _time_or_none(request, "expires_at"),
    }
    if request.kind == run_pb2.INPUT_KIND_APPROVAL:
        out.update(
            tool_name=request.tool_name,
            call_id=request.call_id,
            parameters=_json_or(request.parameters_json, {}),
        )
    return out


def thread_json(thread: run_pb2.Thread) -> dict[str, Any]:
    return {
        "thread_id": thread.thread_id,
        "created_at": _time_or_none(thread, "created_at"),
        "updated_at": _time_or_none(thread, "updated_at"),
        "last_run_state": state_name(thread.last_run_state) if thread.last_run_state else None,
        "title": thread.title,
    }


def message_json(message: run_pb2.ThreadMessage) -> dict[str, Any]:
    out: dict[str, Any] = {
        "role": MESSAGE_ROLE_NAMES.get(message.role, "user"),
        "content": message.content,
        "run_id": message.run_id,
        "created_at": _time_or_none(message, "created_at"),
    }
    if message.tool_calls_json:
        out["tool_calls"] = _json_or(message.tool_calls_json, [])
    if message.tool_call_id:
        out["tool_call_id"] = message.tool_call_id
    if message.name:
        out["name"] = message.name
    return out


def threads_reply(client_id: ClientId | None, threads: list[run_pb2.Thread], next_page_token: str) -> str:
    return dumps(
        {
            "type": "threads",
            "id": client_id,
            "threads": [thread_json(t) for t in threads],
            "next_page_token": next_page_token or None,
        }
    )


def thread_reply(
    client_id: ClientId | None, thread: run_pb2.Thread, messages: list[run_pb2.ThreadMessage]
) -> str:
    return dumps(
        {
            "type": "thread",
            "id": client_id,
            "thread": thread_json(thread),
            "messages": [message_json(m) for m in messages],
        }
    )


def agents_reply(client_id: ClientId | None, agents: list[execution_pb2.AgentInfo]) -> str:
    """``agents``: each agent's name, description and tools (name and description)."""
    return dumps(
        {
            "type": "agents",
            "id": client_id,
            "agents": [
                {
                    "name": agent.name,
                    "description": agent.description,
                    "tools": [{"name": t.name, "description": t.description} for t in agent.tools],
                }
                for agent in agents
            ],
        }
    )


def thread_deleted_reply(client_id: ClientId | None, thread_id: str) -> str:
    return dumps({"type": "thread.deleted", "id": client_id, "thread_id": thread_id})


def _payload_text(payload_json: str) -> str:
    # Spliced verbatim; only guard against something that is clearly not an object,
    # so one bad event can never produce an unparsable frame.
    text = payload_json.strip()
    if not (text.startswith("{") and text.endswith("}")):
        return "{}"
    return text


def event_time(seconds: int, nanos: int) -> str:
    """RFC 3339 with microseconds, as :func:`timestamp_rfc3339` but without a datetime."""
    return f"{time.strftime('%Y-%m-%dT%H:%M:%S', time.gmtime(seconds))}.{nanos // 1000:06d}Z"


def event_frame(event: event_pb2.RunEvent) -> str:
    """The WebSocket frame of one event: the envelope plus the spliced payload.

    Byte for byte what ``dumps`` of the envelope dict would give (same keys,
    order and string escaping: ``encode_basestring`` is the C escaper behind
    ``json.dumps(ensure_ascii=False)``), built without a dict or an encoder.
    """
    ts = event.timestamp
    return (
        f'{{"type":{encode_basestring(event.type)},"event_id":{encode_basestring(event.event_id)},'
        f'"seq":{event.seq},"run_id":{encode_basestring(event.run_id)},'
        f'"thread_id":{encode_basestring(event.thread_id)},"user_id":{encode_basestring(event.user_id)},'
        f'"agent":{encode_basestring(event.agent)},"timestamp":"{event_time(ts.seconds, ts.nanos)}",'
        f'"payload":{_payload_text(event.payload_json)}}}'
    )


def merged_event_frame(last: event_pb2.RunEvent, *, merged_from: int, payload: dict[str, Any]) -> str:
    """The frame of coalesced ``partial_result`` events: ``last``'s envelope plus ``merged_from``.

    It stands for the seqs ``merged_from``..``seq``; ``payload`` is re-encoded
    (the only frame that is: its ``content`` is the concatenation of theirs).
    """
    ts = last.timestamp
    return (
        f'{{"type":{encode_basestring(last.type)},"event_id":{encode_basestring(last.event_id)},'
        f'"seq":{last.seq},"merged_from":{merged_from},"run_id":{encode_basestring(last.run_id)},'
        f'"thread_id":{encode_basestring(last.thread_id)},"user_id":{encode_basestring(last.user_id)},'
        f'"agent":{encode_basestring(last.agent)},"timestamp":"{event_time(ts.seconds, ts.nanos)}",'
        f'"payload":{dumps(payload)}}}'
    )


def gap_frame(gap: bridge_pb2.Gap, client_id: ClientId | None) -> str:
    frame: dict[str, Any] = {
        "type": "gap",
        "requested_after": gap.requested_after,
        "oldest_event_id": gap.oldest_event_id or None,
    }
    if client_id is not None:
        frame["id"] = client_id
    return dumps(frame)


def resumed_frame(client_id: ClientId | None, replayed: int) -> str:
    return dumps({"type": "resumed", "id": client_id, "replayed": replayed})


def error_frame(client_id: ClientId | None, code: str, message: str) -> str:
    return dumps({"type": "error", "id": client_id, "code": code, "message": message})


def connected_frame(connection_id: str, user_id: str) -> str:
    return dumps(
        {
            "type": "connected",
            "connection_id": connection_id,
            "user_id": user_id,
            "server_time": server_time(),
        }
    )


def pong_frame(client_id: ClientId | None) -> str:
    return dumps({"type": "pong", "id": client_id, "server_time": server_time()})


def heartbeat_ack_frame(client_id: ClientId | None) -> str:
    """``heartbeat_ack``; ``timestamp`` and ``status`` are what the previous platform's clients read."""
    now = server_time()
    return dumps(
        {"type": "heartbeat_ack", "id": client_id, "server_time": now, "timestamp": now, "status": "healthy"}
    )


def typing_ack_frame(client_id: ClientId | None, kind: str) -> str:
    """The ``system_message`` that acknowledges a typing notice (``kind`` is its type)."""
    return dumps(
        {
            "type": "system_message",
            "id": client_id,
            "message": f"{kind} acknowledged",
            "acknowledged": kind,
            "timestamp": server_time(),
        }
    )


def run_reply(kind: str, client_id: ClientId | None, run: run_pb2.Run) -> str:
    return dumps({"type": kind, "id": client_id, "run": run_json(run)})


def runs_reply(client_id: ClientId, runs: list[run_pb2.Run], next_page_token: str) -> str:
    return dumps(
        {
            "type": "runs",
            "id": client_id,
            "runs": [run_json(run) for run in runs],
            "next_page_token": next_page_token or None,
        }
    )
