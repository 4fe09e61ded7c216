"""A small WebSocket client of the gateway, behind ``runwire chat`` and ``runwire runs``."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from websockets.asyncio.client import ClientConnection, connect

TERMINAL = frozenset({"agent_completed", "agent_error", "agent_cancelled", "agent_death"})


async def open_connection(url: str, token: str) -> ClientConnection:
    connection = await connect(
        url,
        additional_headers={"Authorization": f"Bearer {token}"},
        compression=None,
        open_timeout=10,
    )
    hello = json.loads(await connection.recv())
    if hello.get("type") != "connected":
        await connection.close()
        raise RuntimeError(f"unexpected first frame from the gateway: {hello}")
    return connection


async def request(connection: ClientConnection, frame: dict[str, Any], reply_type: str) -> dict[str, Any]:
    """Send ``frame`` and return the reply with the same id (or raise on an error frame)."""
    await connection.send(json.dumps(frame))
    while True:
        reply: dict[str, Any] = json.loads(await connection.recv())
        if reply.get("id") != frame["id"]:
            continue
        if reply.get("type") == "error":
            raise RuntimeError(f"{reply.get('code')}: {reply.get('message')}")
        if reply.get("type") == reply_type:
            return reply


def describe_event(event: dict[str, Any]) -> str:
    """One human line per event, for the terminal."""
    kind = event["type"]
    payload = event.get("payload", {})
    match kind:
        case "agent_started":
            detail = payload.get("message", "")
        case "agent_thinking":
            detail = payload.get("reasoning", "")
        case "tool_executing":
            detail = f"{payload.get('tool_name')}({json.dumps(payload.get('parameters'))})"
        case "tool_completed":
            outcome = payload.get("result") if payload.get("status") == "success" else payload.get("error")
            detail = f"{payload.get('tool_name')} → {payload.get('status')}: {json.dumps(outcome)}"
        case "partial_result":
            detail = repr(payload.get("content", ""))
        case "agent_completed":
            detail = f"done in {payload.get('duration_ms')} ms"
        case "agent_error":
            detail = f"{payload.get('status')}: {payload.get('error_message')}"
        case "agent_cancelled":
            detail = payload.get("reason", "")
        case _:
            detail = payload.get("message", json.dumps(payload))
    return f"[{event.get('seq', '?'):>3}] {kind:<16} {detail}"


async def chat(
    url: str,
    token: str,
    message: str,
    *,
    agent: str = "assistant",
    thread_id: str | None = None,
    show: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Start a run, print its events as they arrive, return the terminal event."""
    async with await open_connection(url, token) as connection:
        frame: dict[str, Any] = {
            "type": "run.start",
            "id": "chat-1",
            "agent": agent,
            "input": {"message": message},
        }
        if thread_id:
            frame["thread_id"] = thread_id
        accepted = await request(connection, frame, "run.accepted")
        run_id = accepted["run"]["run_id"]
        show(f"run {run_id} accepted on thread {accepted['run']['thread_id']}")
        while True:
            event: dict[str, Any] = json.loads(await connection.recv())
            if event.get("run_id") != run_id:
                continue
            show(describe_event(event))
            if event["type"] in TERMINAL:
                return event


async def list_runs(url: str, token: str, *, limit: int = 20) -> list[dict[str, Any]]:
    async with await open_connection(url, token) as connection:
        reply = await request(connection, {"type": "runs.list", "id": "runs-1", "limit": limit}, "runs")
        runs: list[dict[str, Any]] = reply["runs"]
        return runs
