"""A small WebSocket client of the gateway, behind ``runwire chat``, ``runs`` and ``threads``."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
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
        case "input_required":
            detail = f"{payload.get('kind')}: {payload.get('prompt')}"
        case _:
            detail = payload.get("message", json.dumps(payload))
    return f"[{event.get('seq', '?'):>3}] {kind:<16} {detail}"


# Answers an input_required payload: the response object, or None to cancel the run.
Answerer = Callable[[dict[str, Any]], Awaitable[dict[str, Any] | None]]


async def chat(
    url: str,
    token: str,
    message: str,
    *,
    agent: str = "assistant",
    run_input: dict[str, Any] | None = None,
    thread_id: str | None = None,
    show: Callable[[str], None] = print,
    answer: Answerer | None = None,
) -> dict[str, Any]:
    """Start a run, print its events as they arrive, answer its questions, return the terminal event.

    The run's input is ``{"message": message}`` unless ``run_input`` is given.
    Without ``answer`` a question cancels the run (there is nobody to ask).
    """
    async with await open_connection(url, token) as connection:
        frame: dict[str, Any] = {
            "type": "run.start",
            "id": "chat-1",
            "agent": agent,
            "input": run_input if run_input is not None else {"message": message},
        }
        if thread_id:
            frame["thread_id"] = thread_id
        accepted = await request(connection, frame, "run.accepted")
        run_id = accepted["run"]["run_id"]
        show(f"run {run_id} accepted on thread {accepted['run']['thread_id']}")
        questions: dict[str, dict[str, Any]] = {}  # correlation id → the question it answers
        while True:
            event: dict[str, Any] = json.loads(await connection.recv())
            if event.get("type") == "error" and event.get("id") in questions:
                # The answer was refused (say, it did not match the schema): ask again.
                show(f"answer refused: {event.get('message')}")
                await _answer(connection, run_id, questions.pop(event["id"]), answer, questions)
                continue
            if event.get("run_id") != run_id or "seq" not in event:
                continue
            show(describe_event(event))
            if event["type"] == "input_required":
                await _answer(connection, run_id, event["payload"], answer, questions)
            if event["type"] in TERMINAL:
                return event


async def _answer(
    connection: ClientConnection,
    run_id: str,
    question: dict[str, Any],
    answer: Answerer | None,
    pending: dict[str, dict[str, Any]],
) -> None:
    response = await answer(question) if answer is not None else None
    if response is None:
        await connection.send(json.dumps({"type": "run.cancel", "id": "chat-cancel", "run_id": run_id}))
        return
    correlation = f"respond-{len(pending)}-{question['request_id']}"
    pending[correlation] = question
    await connection.send(
        json.dumps(
            {
                "type": "run.respond",
                "id": correlation,
                "run_id": run_id,
                "request_id": question["request_id"],
                "response": response,
            }
        )
    )


async def list_runs(url: str, token: str, *, limit: int = 20) -> list[dict[str, Any]]:
    async with await open_connection(url, token) as connection:
        reply = await request(connection, {"type": "runs.list", "id": "runs-1", "limit": limit}, "runs")
        runs: list[dict[str, Any]] = reply["runs"]
        return runs


async def list_threads(url: str, token: str, *, limit: int = 20) -> list[dict[str, Any]]:
    async with await open_connection(url, token) as connection:
        reply = await request(
            connection, {"type": "threads.list", "id": "threads-1", "limit": limit}, "threads"
        )
        threads: list[dict[str, Any]] = reply["threads"]
        return threads


async def get_thread(url: str, token: str, thread_id: str) -> dict[str, Any]:
    """The ``thread`` reply: ``thread`` and its ``messages``, oldest first."""
    async with await open_connection(url, token) as connection:
        return await request(
            connection, {"type": "thread.get", "id": "thread-1", "thread_id": thread_id}, "thread"
        )
