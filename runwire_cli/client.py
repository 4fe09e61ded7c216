"""``runwire chat``, ``runs`` and ``threads`` over :mod:`runwire_client` (the Python client)."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from runwire_client import TERMINAL_EVENTS, RunwireClient, RunwireError


@contextlib.asynccontextmanager
async def _connected(url: str, token: str) -> AsyncIterator[RunwireClient]:
    """A client of the gateway whose failures read as the CLI's errors (``code: message``)."""
    try:
        async with RunwireClient(url, token=token) as client:
            yield client
    except RunwireError as error:
        raise RuntimeError(str(error)) from None


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
    A gateway that restarts meanwhile is reconnected to, and the run's events
    resume where they stopped.
    """
    async with _connected(url, token) as client:
        run = await client.start_run(
            agent, run_input if run_input is not None else {"message": message}, thread_id=thread_id or None
        )
        run_id = run["run_id"]
        show(f"run {run_id} accepted on thread {run['thread_id']}")
        async for event in client.run_events(run_id):
            show(describe_event(event))
            if event["type"] == "input_required":
                await _answer(client, run_id, event["payload"], answer, show)
            if event["type"] in TERMINAL_EVENTS:
                return event
        raise RuntimeError(f"the events of run {run_id} ended without a terminal event")


async def _answer(
    client: RunwireClient,
    run_id: str,
    question: dict[str, Any],
    answer: Answerer | None,
    show: Callable[[str], None],
) -> None:
    """Answer until the gateway accepts an answer; no answer cancels the run.

    An answer that does not match the question's schema is asked again; so is
    one lost with the connection, if the run still waits for it (the client
    never resends a request by itself: the gateway may have recorded it).
    Any other refusal (answered elsewhere, the question expired) is shown and
    the run's own events tell what happens next.
    """
    while True:
        response = await answer(question) if answer is not None else None
        if response is None:
            await client.cancel_run(run_id)
            return
        try:
            await client.respond(run_id, question["request_id"], response)
            return
        except RunwireError as refused:
            show(f"answer refused: {refused.message}")
            if refused.code == "invalid_argument":
                continue
            if refused.code == "unavailable" and await _still_asked(client, run_id, question):
                continue
            return


async def _still_asked(client: RunwireClient, run_id: str, question: dict[str, Any]) -> bool:
    pending = (await client.get_run(run_id)).get("pending_input") or {}
    return bool(pending.get("request_id") == question["request_id"])


async def list_runs(url: str, token: str, *, limit: int = 20) -> list[dict[str, Any]]:
    async with _connected(url, token) as client:
        runs, _ = await client.list_runs(limit=limit)
        return runs


async def list_threads(url: str, token: str, *, limit: int = 20) -> list[dict[str, Any]]:
    async with _connected(url, token) as client:
        threads, _ = await client.list_threads(limit=limit)
        return threads


async def get_thread(url: str, token: str, thread_id: str) -> dict[str, Any]:
    """The ``thread`` reply: ``thread`` and its ``messages``, oldest first."""
    async with _connected(url, token) as client:
        thread, messages = await client.get_thread(thread_id)
        return {"type": "thread", "thread": thread, "messages": messages}
