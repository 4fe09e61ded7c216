"""Answering a run's questions on the terminal (``runwire chat``).

A run that asks its user (``input_required``) waits until someone answers.
:class:`TerminalAnswerer` asks whoever runs ``runwire chat``: a line of text
for a plain question, JSON for a question with its own schema, y/n for a
tool call that needs approval (``--yes`` approves them all without asking).
When standard input is closed (a script, a pipe that ran dry) it returns
``None`` and the chat cancels the run instead of leaving it waiting.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any


class TerminalAnswerer:
    """Turns a question into an answer typed on the terminal."""

    def __init__(self, *, approve_all: bool = False, read: Callable[[str], str] = input) -> None:
        self._approve_all = approve_all
        self._read = read

    async def __call__(self, question: dict[str, Any]) -> dict[str, Any] | None:
        try:
            if question.get("kind") == "approval":
                return await self._approval(question)
            return await self._input(question)
        except EOFError:
            return None

    async def _approval(self, question: dict[str, Any]) -> dict[str, Any]:
        if self._approve_all:
            return {"approved": True}
        call = f"{question.get('tool_name')}({json.dumps(question.get('parameters', {}))})"
        reply = await self._ask(f"Allow {call}? [y/N] ")
        if reply.strip().lower() in ("y", "yes"):
            return {"approved": True}
        return {"approved": False, "reason": "refused on the terminal"}

    async def _input(self, question: dict[str, Any]) -> dict[str, Any]:
        schema = question.get("schema")
        text_only = {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]}
        if schema is None or schema == text_only:
            return {"text": await self._ask(f"{question.get('prompt')} > ")}
        while True:
            text = await self._ask(
                f"{question.get('prompt')}\n(answer as JSON matching {json.dumps(schema)}) > "
            )
            try:
                value = json.loads(text)
            except ValueError:
                continue
            if isinstance(value, dict):
                return value

    async def _ask(self, prompt: str) -> str:
        return await asyncio.to_thread(self._read, prompt)
