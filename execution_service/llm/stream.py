"""One model turn, assembled from its streamed chunks (no I/O here).

A chat-completions stream sends text in ``delta.content``, reasoning (on the
servers that expose it) in ``delta.reasoning_content`` or ``delta.reasoning``,
and tool calls in fragments: the first fragment of a call carries its
``index``, ``id`` and function ``name``, the following ones more of its
``arguments`` text. Several calls may interleave; ``index`` tells them apart.
With ``stream_options.include_usage`` the last chunk has no choices and the
token counts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

REASONING_FIELDS = ("reasoning_content", "reasoning")


@dataclass(frozen=True)
class ChunkText:
    """What one chunk adds that the user sees at once."""

    content: str = ""
    reasoning: str = ""


@dataclass
class ToolCallDraft:
    """A tool call as its fragments arrive."""

    index: int
    id: str = ""
    name: str = ""
    arguments: str = ""


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            self.prompt_tokens + other.prompt_tokens, self.completion_tokens + other.completion_tokens
        )

    def as_dict(self) -> dict[str, int]:
        """Token counts for the run's result, keyed ``prompt`` and ``completion``.

        Not ``prompt_tokens``: every key containing ``token`` is redacted
        before it leaves the execution service (ARCHITECTURE §5).
        """
        return {"prompt": self.prompt_tokens, "completion": self.completion_tokens}


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


@dataclass
class Turn:
    """The model's answer of one request: text, tool calls, why it stopped, tokens used."""

    content: list[str] = field(default_factory=list)
    drafts: dict[int, ToolCallDraft] = field(default_factory=dict)
    finish_reason: str | None = None
    usage: Usage = field(default_factory=Usage)
    model: str = ""

    @property
    def text(self) -> str:
        return "".join(self.content)

    def tool_calls(self) -> list[ToolCallDraft]:
        """The assembled calls in index order, each with an id (generated where the server sent none)."""
        calls = [self.drafts[index] for index in sorted(self.drafts)]
        for position, call in enumerate(calls):
            if not call.id:
                call.id = f"call_{position}"
        return calls

    def feed(self, chunk: Any) -> ChunkText:
        """Take one ``ChatCompletionChunk``; return the text to show the user now."""
        if not self.model and isinstance(getattr(chunk, "model", None), str):
            self.model = chunk.model
        usage = getattr(chunk, "usage", None)
        if usage is not None:
            self.usage = Usage(
                int(getattr(usage, "prompt_tokens", 0) or 0), int(getattr(usage, "completion_tokens", 0) or 0)
            )
        content: list[str] = []
        reasoning: list[str] = []
        for choice in getattr(chunk, "choices", None) or ():
            if getattr(choice, "index", 0) not in (0, None):
                continue  # one answer is asked for (n = 1)
            delta = getattr(choice, "delta", None)
            if delta is not None:
                text = _text(getattr(delta, "content", None))
                if text:
                    content.append(text)
                extra = getattr(delta, "model_extra", None) or {}
                for name in REASONING_FIELDS:
                    thought = _text(extra.get(name))
                    if thought:
                        reasoning.append(thought)
                        break
                for fragment in getattr(delta, "tool_calls", None) or ():
                    self._add_fragment(fragment)
            reason = getattr(choice, "finish_reason", None)
            if isinstance(reason, str) and reason:
                self.finish_reason = reason
        self.content.extend(content)
        return ChunkText(content="".join(content), reasoning="".join(reasoning))

    def _add_fragment(self, fragment: Any) -> None:
        index = getattr(fragment, "index", None)
        if not isinstance(index, int):
            index = len(self.drafts)  # servers that send each call whole, without an index
        draft = self.drafts.setdefault(index, ToolCallDraft(index=index))
        call_id = _text(getattr(fragment, "id", None))
        if call_id and not draft.id:
            draft.id = call_id
        function = getattr(fragment, "function", None)
        if function is None:
            return
        name = _text(getattr(function, "name", None))
        if name and name != draft.name:
            draft.name += name
        draft.arguments += _text(getattr(function, "arguments", None))
